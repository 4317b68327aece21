"""RealNVP: a normalizing flow of affine coupling layers (Dinh, Sohl-Dickstein & Bengio, 2017).

Read top to bottom: the masks and the squeeze, the logit preprocessing, the affine coupling layer, the flow
:class:`RealNVP`, the pure functions of the objective (uniform dequantisation, the discrete-data bound, bits per
dimension), and :class:`FlowStep`, which minimises the bound in bits per dimension for :func:`dgmlab.train.fit`.

Notation (as in the book): ``x`` is an image with pixels in [0, 1] (dequantised: continuous), ``f`` the flow,
``z = f(x)`` its code with prior ``p(z) = N(0, I)``, so by the change of variables

    log p(x) = log N(f(x) | 0, I) + log |det df/dx|(x),

and ``log_det`` is the second term. A coupling layer with a binary mask ``b`` (1 = passed through) maps

    y = b * x + (1 - b) * (x * exp(s(b * x)) + t(b * x)),      log |det dy/dx| = sum over (1 - b) of s(b * x),

because its Jacobian is triangular (in an order that lists the masked entries first) with diagonal 1 on ``b`` and
``exp(s)`` elsewhere. ``s`` and ``t`` come from one small convolutional network that sees only ``b * x``.

References:
    Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", ICLR 2017, https://arxiv.org/abs/1605.08803
    Theis, van den Oord & Bethge, "A note on the evaluation of generative models", ICLR 2016 (dequantisation),
    https://arxiv.org/abs/1511.01844
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from dgmlab.distributions import log_standard_normal
from dgmlab.step import TrainConfig, adam, batch_mean, compiled, held_out_means
from dgmlab.utils import eval_mode, get_device, module_device, randn

__all__ = [
    "LAYER_KINDS",
    "RealNVPConfig",
    "checkerboard_mask",
    "channel_mask",
    "squeeze",
    "unsqueeze",
    "logit_transform",
    "logit_inverse",
    "CouplingNet",
    "AffineCoupling",
    "Squeeze",
    "LogitTransform",
    "RealNVP",
    "dequantize",
    "discrete_log_likelihood_bound",
    "bits_per_dim",
    "flow_bpd",
    "FlowTrainConfig",
    "FlowStep",
]

LAYER_KINDS = ("checkerboard", "channel", "squeeze")


@dataclass
class RealNVPConfig:
    """Architecture of a :class:`RealNVP`.

    Attributes:
        shape: ``(channels, height, width)`` of one image; ``x`` comes flat, ``[B, C * H * W]``.
        layers: the flow's layers, data side first: ``"checkerboard"`` and ``"channel"`` are affine couplings with
            that mask, ``"squeeze"`` turns each 2 x 2 block of pixels into 4 channels (what a channel mask needs).
            The masks of successive couplings of one kind alternate, so every entry gets transformed.
        hidden: channels of the hidden layers of each coupling's s/t network.
        n_hidden: hidden layers of each s/t network (at least 1): a 3 x 3 convolution, then 1 x 1 convolutions.
        alpha: the logit preprocessing maps x in [0, 1] to ``logit(alpha + (1 - 2 alpha) x)`` (RealNVP, section 4.1),
            which keeps x = 0 and x = 1 finite; its log-determinant is part of ``log_det``.
    """

    shape: tuple[int, int, int] = (1, 28, 28)
    layers: tuple[str, ...] = ("checkerboard",) * 3 + ("squeeze",) + ("channel",) * 3 + ("checkerboard",) * 3
    hidden: int = 32
    n_hidden: int = 1
    alpha: float = 0.05

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)
        self.layers = tuple(str(k) for k in self.layers)
        if len(self.shape) != 3 or any(s <= 0 for s in self.shape):
            raise ValueError(f"shape must be three positive sizes (channels, height, width), got {self.shape}")
        unknown = [k for k in self.layers if k not in LAYER_KINDS]
        if unknown:
            raise ValueError(f"unknown layer kinds {unknown}; use {LAYER_KINDS}")
        if self.hidden < 1 or self.n_hidden < 1:
            raise ValueError(f"hidden and n_hidden must be at least 1, got {self.hidden} and {self.n_hidden}")
        if not 0 < self.alpha < 0.5:
            raise ValueError(f"alpha must lie in (0, 0.5), got {self.alpha}")
        self.shapes()  # raises when a squeeze or a channel mask does not fit

    @property
    def x_dim(self) -> int:
        """D = C * H * W, the number of pixel values."""
        c, h, w = self.shape
        return c * h * w

    def shapes(self) -> list[tuple[int, int, int]]:
        """The ``(C, H, W)`` shape that enters each layer, and last the shape of ``z`` (before flattening)."""
        shape, shapes = self.shape, []
        for i, kind in enumerate(self.layers):
            shapes.append(shape)
            c, h, w = shape
            if kind == "squeeze":
                if h % 2 or w % 2:
                    raise ValueError(f"layer {i} squeezes a {h} x {w} image: both sides must be even")
                shape = (4 * c, h // 2, w // 2)
            elif kind == "channel" and c % 2:
                raise ValueError(f"layer {i} is a channel coupling on {c} channel(s): put a 'squeeze' before it")
        shapes.append(shape)
        return shapes


# --- Masks and the squeeze --------------------------------------------------------------------------------------


def checkerboard_mask(shape: tuple[int, int, int], parity: int = 0) -> torch.Tensor:
    """The checkerboard mask ``b`` [C, H, W]: 1 where ``(i + j + parity)`` is even (those entries pass through)."""
    c, h, w = shape
    i, j = torch.arange(h)[:, None], torch.arange(w)[None, :]
    return ((i + j + parity) % 2 == 0).float().expand(c, h, w).clone()


def channel_mask(shape: tuple[int, int, int], parity: int = 0) -> torch.Tensor:
    """The channel mask ``b`` [C, H, W]: 1 on the first half of the channels (``parity=0``) or on the second."""
    c, h, w = shape
    if c % 2:
        raise ValueError(f"a channel mask needs an even number of channels, got {c}")
    first = (torch.arange(c) < c // 2).float()
    b = first if parity % 2 == 0 else 1 - first
    return b[:, None, None].expand(c, h, w).clone()


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, 4C, H/2, W/2]: channel ``4c + 2u + v`` holds pixel ``(2i + u, 2j + v)`` of channel c."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // 2, 2, W // 2, 2)  # [B, C, i, u, j, v]
    return x.permute(0, 1, 3, 5, 2, 4).reshape(B, 4 * C, H // 2, W // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`squeeze`: [B, 4C, H, W] -> [B, C, 2H, 2W]."""
    B, C4, H, W = x.shape
    x = x.reshape(B, C4 // 4, 2, 2, H, W)  # [B, C, u, v, i, j]
    return x.permute(0, 1, 4, 2, 5, 3).reshape(B, C4 // 4, 2 * H, 2 * W)


# --- The logit preprocessing ------------------------------------------------------------------------------------


def logit_transform(x: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``l = logit(p)``, ``p = alpha + (1 - 2 alpha) x``, elementwise, and its log-determinant per example.

    ``dl/dx = (1 - 2 alpha) / (p (1 - p))``, so ``log_det = sum [log(1 - 2 alpha) - log p - log(1 - p)]`` over all
    but the first (batch) dimension.

    Args:
        x: pixels in [0, 1], any shape [B, ...].
        alpha: in (0, 0.5).

    Returns:
        ``l`` (the shape of ``x``) and ``log_det`` [B].
    """
    p = alpha + (1 - 2 * alpha) * x
    log_p, log_1mp = torch.log(p), torch.log1p(-p)
    log_det = (math.log(1 - 2 * alpha) - log_p - log_1mp).flatten(1).sum(1)
    return log_p - log_1mp, log_det


def logit_inverse(l: torch.Tensor, alpha: float) -> torch.Tensor:  # noqa: E741 (the book's letter)
    """The inverse of :func:`logit_transform`: ``x = (sigmoid(l) - alpha) / (1 - 2 alpha)``."""
    return (torch.sigmoid(l) - alpha) / (1 - 2 * alpha)


# --- Layers: every one maps x -> (y, log_det [B]) and has an inverse ---------------------------------------------


class CouplingNet(nn.Module):
    """The s/t network of a coupling: ``[b * x, b]`` [B, 2C, H, W] -> ``s, t`` [B, C, H, W] each.

    A 3 x 3 convolution, ``n_hidden - 1`` 1 x 1 convolutions and a last 3 x 3 convolution, with ReLUs between (the
    shape of Glow's coupling network, Kingma & Dhariwal 2018: the 1 x 1 layers add capacity at little cost). The last
    convolution starts at zero, so a fresh coupling is the identity (s = t = 0).
    ``s = scale * tanh(s_raw)`` with a learned per-channel ``scale``: bounded, so one layer cannot scale by more than
    ``exp(|scale|)``, which keeps early training stable (as in the RealNVP authors' code).
    """

    def __init__(self, channels: int, hidden: int, n_hidden: int = 1):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(2 * channels, hidden, 3, padding=1), nn.ReLU()]
        for _ in range(n_hidden - 1):
            layers += [nn.Conv2d(hidden, hidden, 1), nn.ReLU()]
        out = nn.Conv2d(hidden, 2 * channels, 3, padding=1)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.net = nn.Sequential(*layers, out)
        self.scale = nn.Parameter(torch.ones(channels, 1, 1))

    def forward(self, x_masked: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(torch.cat([x_masked, b.expand_as(x_masked)], dim=1))  # [B, 2C, H, W]
        s_raw, t = h.chunk(2, dim=1)  # [B, C, H, W] each
        return self.scale * torch.tanh(s_raw), t


class AffineCoupling(nn.Module):
    """``y = b * x + (1 - b) * (x * exp(s) + t)`` with ``s, t = net(b * x)`` (RealNVP, eq. 9); input [B, C, H, W].

    Args:
        mask: the binary mask ``b`` [C, H, W] (1 = passed through unchanged, and seen by the network).
        hidden, n_hidden: sizes of the :class:`CouplingNet`.
    """

    def __init__(self, mask: torch.Tensor, hidden: int, n_hidden: int = 1):
        super().__init__()
        self.register_buffer("b", mask.float()[None], persistent=False)  # [1, C, H, W]
        self.net = CouplingNet(mask.shape[0], hidden, n_hidden)

    def _s_t(self, x_masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self.net(x_masked, self.b)
        return s * (1 - self.b), t * (1 - self.b)  # zero on the entries that pass through

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self._s_t(self.b * x)
        y = self.b * x + (1 - self.b) * (x * torch.exp(s) + t)
        return y, s.flatten(1).sum(1)  # log |det dy/dx| = sum of s over the transformed entries

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        s, t = self._s_t(self.b * y)  # b * y = b * x: the network sees the same input
        return self.b * y + (1 - self.b) * (y - t) * torch.exp(-s)


class Squeeze(nn.Module):
    """:func:`squeeze` as a layer: a permutation of the entries, so ``log_det = 0``."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return squeeze(x), x.new_zeros(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return unsqueeze(y)


class LogitTransform(nn.Module):
    """:func:`logit_transform` as a layer (pixels in [0, 1] -> the real line), with its inverse."""

    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return logit_transform(x, self.alpha)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return logit_inverse(y, self.alpha)


# --- The flow ---------------------------------------------------------------------------------------------------


class RealNVP(nn.Module):
    """The flow ``f = f_K o ... o f_1 o logit``: images ``x`` [B, D] in [0, 1] <-> codes ``z`` [B, D].

    ``forward(x) -> (z, log_det)`` with ``log_det = log |det df/dx|`` [B] summed over the layers (the logit
    preprocessing included), ``inverse(z) -> x``, ``log_prob(x) = log N(z) + log_det`` (a density on [0, 1]^D),
    and ``sample(n, generator, temperature)``.
    """

    config_class = RealNVPConfig

    def __init__(self, config: RealNVPConfig | None = None):
        super().__init__()
        self.config = config or RealNVPConfig()
        c = self.config
        layers: list[nn.Module] = [LogitTransform(c.alpha)]
        parity = {"checkerboard": 0, "channel": 0}
        masks = {"checkerboard": checkerboard_mask, "channel": channel_mask}
        for kind, shape in zip(c.layers, c.shapes()):
            if kind == "squeeze":
                layers.append(Squeeze())
            else:  # successive couplings of one kind flip their mask
                layers.append(AffineCoupling(masks[kind](shape, parity[kind]), c.hidden, c.n_hidden))
                parity[kind] += 1
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z = f(x)`` [B, D] and ``log |det df/dx|`` [B], for images ``x`` [B, D] (flat) with pixels in [0, 1]."""
        h = x.reshape(len(x), *self.config.shape)  # [B, D] -> [B, C, H, W]
        log_det = x.new_zeros(len(x))
        for layer in self.layers:
            h, ld = layer(h)
            log_det = log_det + ld  # the log-determinants of a composition add up
        return h.flatten(1), log_det  # [B, 4^k C, H / 2^k, W / 2^k] -> [B, D]

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """``x = f^{-1}(z)``: codes [B, D] -> images [B, D] (in [0, 1] for any finite z, up to rounding)."""
        h = z.reshape(len(z), *self.config.shapes()[-1])  # [B, D] -> the shape of the last layer's output
        for layer in reversed(self.layers):
            h = layer.inverse(h)
        return h.flatten(1)  # [B, C, H, W] -> [B, D]

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x) = log N(f(x) | 0, I) + log |det df/dx|``, nats [B], for continuous x in [0, 1]^D.

        Its integral over [0, 1]^D is the prior mass of ``f([0, 1]^D)``, a little under 1: the logit preprocessing
        maps [0, 1] onto ``[logit(alpha), logit(1 - alpha)]``, not onto the whole line (codes outside it decode
        to pixels outside [0, 1], which :meth:`sample` clips). Likelihoods computed with it are therefore lower
        bounds on those of the normalised model."""
        z, log_det = self(x)
        return log_standard_normal(z) + log_det

    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """Draw ``n`` images ``x = f^{-1}(T * eps)``, ``eps ~ N(0, I)``: [n, D] in [0, 1] on the model's device.

        ``temperature`` T < 1 samples from the prior shrunk towards 0 (fewer, cleaner strokes; Kingma & Dhariwal
        2018). The noise comes from the CPU ``generator``; the flow runs in eval mode without gradients and its
        train/eval mode is restored afterwards.
        """
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        eps = randn(n, self.config.x_dim, generator=generator)
        with eval_mode(self):
            x = self.inverse(temperature * eps.to(module_device(self)))
        return x.clamp(0, 1)  # the logit's inverse lies in [-alpha / (1 - 2 alpha), ...]: clip to pixel values


# --- The objective: dequantised data, the bound on the discrete likelihood, bits per dimension -------------------


def dequantize(x: torch.Tensor, levels: int = 256, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantisation: pixels ``x = k / (levels - 1)`` -> ``(k + u) / levels``, ``u ~ U[0, 1)``.

    The k-th level becomes the interval ``[k / levels, (k + 1) / levels)``, so the dequantised images fill [0, 1]^D
    and the cells of different images do not overlap. The noise is drawn on the CPU ``generator`` and moved to
    ``x``'s device.

    Args:
        x: images [B, D] with pixels on the grid ``k / (levels - 1)`` (``dgmlab.data``'s MNIST: k / 255).
        levels: number of grey levels (256 for 8-bit images, 2 for binarised ones).

    Returns:
        Dequantised images, the shape of ``x``, in [0, 1).
    """
    k = torch.round(x * (levels - 1))
    u = torch.rand(x.shape, generator=generator).to(x.device, x.dtype)
    return (k + u) / levels


def discrete_log_likelihood_bound(log_p: torch.Tensor, x_dim: int, levels: int = 256) -> torch.Tensor:
    """``log p(x_tilde) - D log(levels)``: its mean over ``x_tilde = dequantize(x)`` bounds ``log P(k)`` from below,
    for the grey levels ``k`` of ``x``.

    ``P(k) = integral over the cell of k of p(x_tilde) dx_tilde = levels^-D E_u[p(x_tilde)]``, and by Jensen's
    inequality ``log P(k) >= E_u[log p(x_tilde)] - D log(levels)`` (Theis et al. 2016).

    Args:
        log_p: the continuous log-density ``log p(x_tilde)`` of dequantised images, nats [B].
        x_dim: D, pixels per image.
        levels: grey levels per pixel.
    """
    return log_p - x_dim * math.log(levels)


def bits_per_dim(log_p: torch.Tensor, x_dim: int) -> torch.Tensor:
    """``-log_p / (D log 2)``: a log-likelihood in nats per image as bits per pixel (lower is better)."""
    return -log_p / (x_dim * math.log(2))


def flow_bpd(model: RealNVP, x: torch.Tensor, generator: torch.Generator | None = None, levels: int = 256):
    """Bits per dimension of the bound on the discrete log-likelihood of ``x``, one dequantisation sample, [B].

    ``bpd = -(log p(x_tilde) - D log levels) / (D log 2)``, ``x_tilde = dequantize(x)``: for 8-bit images,
    ``-log p(x_tilde) / (D log 2) + 8``.
    """
    D = model.config.x_dim
    log_p = model.log_prob(dequantize(x, levels, generator))
    return bits_per_dim(discrete_log_likelihood_bound(log_p, D, levels), D)


# --- Training ---------------------------------------------------------------------------------------------------


@dataclass
class FlowTrainConfig(TrainConfig):
    """:class:`~dgmlab.step.TrainConfig` with the flow's settings.

    Args:
        epochs, batch_size, lr, betas, seed, device, compile: as in :class:`~dgmlab.step.TrainConfig`.
        levels: grey levels of the data (256: ``dgmlab.data`` stores MNIST as k / 255).
        max_grad_norm: gradients are clipped to this norm (a flow's loss has rare large gradients early on).
    """

    epochs: int = 20
    levels: int = 256
    max_grad_norm: float = 100.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.levels < 2 or not self.max_grad_norm > 0:
            raise ValueError(f"levels >= 2 and max_grad_norm > 0 are required, got {self.levels}, {self.max_grad_norm}")


class FlowStep:
    """One Adam step on the mean bits per dimension of a batch (:func:`flow_bpd`): maximum likelihood.

    The dequantisation noise is drawn on a CPU generator seeded from ``config.seed``. Returns ``bpd`` per batch;
    ``evaluate(split)`` gives the mean ``bpd`` over a split with a fixed dequantisation (seed 1234), in eval mode.
    """

    def __init__(self, model: RealNVP, config: TrainConfig | None = None):
        config = config or FlowTrainConfig()
        if not isinstance(config, FlowTrainConfig):
            config = FlowTrainConfig(**asdict(config))
        self.config, self.device = config, get_device(config.device)
        self.model = model.to(self.device)
        self.modules = {"model": self.model}
        self.optimizer = adam(self.model.parameters(), config)
        self.noise = torch.Generator().manual_seed(config.seed)
        self.log_prob = compiled(self.model.log_prob, config)

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        D, levels = self.model.config.x_dim, self.config.levels
        log_p = self.log_prob(dequantize(x, levels, self.noise))
        bpd = bits_per_dim(discrete_log_likelihood_bound(log_p, D, levels), D)  # [B]
        self.optimizer.zero_grad(set_to_none=True)
        bpd.mean().backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        return {"bpd": batch_mean(bpd)}

    def evaluate(self, split, seed: int = 1234, batch_size: int = 500) -> dict[str, float]:
        g = torch.Generator().manual_seed(seed)
        with eval_mode(self.model):
            return held_out_means(
                split,
                lambda x: {"bpd": flow_bpd(self.model, x, g, self.config.levels).mean()},
                batch_size,
                self.device,
                seed,
            )

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.model.sample(n, generator)
