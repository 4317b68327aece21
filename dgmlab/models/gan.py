"""A generative adversarial network with MLP generator and discriminator (Goodfellow et al., 2014).

Read top to bottom: the config, the sampling rule every generator shares (:class:`SamplesFromNoise`), the generator
``G``, the discriminator ``D``, the losses as small pure functions computed from logits, one discriminator step, one
generator step, and :class:`GANStep`, which does one of each per batch for :func:`dgmlab.train.fit`.

Notation (as in the book): ``z`` ~ N(0, I) is the noise, ``G(z)`` a generated image in [0, 1]^784, ``D(x)`` the
discriminator's *logit* that ``x`` is real, so the probability is ``sigmoid(D(x))``.

One-sided label smoothing (Salimans et al. 2016) is an option of the discriminator's loss: the real images get the
target ``alpha`` (``label_smoothing``, e.g. 0.9) instead of 1, the fakes keep 0.

References:
    Goodfellow et al., "Generative Adversarial Nets", NeurIPS 2014, https://arxiv.org/abs/1406.2661
    Salimans et al., "Improved Techniques for Training GANs", NeurIPS 2016, https://arxiv.org/abs/1606.03498
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from dgmlab.models.mlp import mlp
from dgmlab.step import TrainConfig, adam, compiled, held_out_means
from dgmlab.utils import eval_mode, get_device, module_device, randn

__all__ = [
    "GANConfig",
    "GANTrainConfig",
    "SamplesFromNoise",
    "Generator",
    "Discriminator",
    "discriminator_loss",
    "generator_loss_nonsaturating",
    "generator_loss_saturating",
    "discriminator_step",
    "generator_step",
    "GANStep",
]


@dataclass
class GANConfig:
    """Sizes of the two MLPs.

    Args:
        x_dim: flattened image size (784 for MNIST).
        z_dim: noise dimension.
        g_hidden: hidden widths of the generator, input side first.
        d_hidden: hidden widths of the discriminator, input side first.
        negative_slope: slope of the LeakyReLU activations (0.2 as in DCGAN).
        batch_norm: batch normalisation after each hidden layer of the generator (Radford et al., 2016): it
            keeps an MLP generator from collapsing onto a few images when data are scarce.
        dropout: dropout after each hidden layer of the discriminator, which slows it down on small data.
    """

    x_dim: int = 784
    z_dim: int = 64
    g_hidden: tuple[int, ...] = (256, 512)
    d_hidden: tuple[int, ...] = (512, 256)
    negative_slope: float = 0.2
    batch_norm: bool = True
    dropout: float = 0.3

    def __post_init__(self) -> None:
        self.g_hidden = tuple(int(h) for h in self.g_hidden)
        self.d_hidden = tuple(int(h) for h in self.d_hidden)
        if self.x_dim <= 0 or self.z_dim <= 0 or any(h <= 0 for h in self.g_hidden + self.d_hidden):
            raise ValueError(f"GANConfig sizes must be positive, got {self}")


class SamplesFromNoise:
    """The sampling rule of every generator ``G(z)`` in dgmlab (mixed into an ``nn.Module`` whose ``config`` has a
    ``z_dim`` and whose ``forward`` maps noise [B, z_dim] to flat images [B, x_dim]): :meth:`sample` and
    :meth:`generate`."""

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` images ``x = G(z)``, ``z ~ N(0, I)``: [n, x_dim] on the model's device.

        The noise comes from the CPU ``generator`` and moves to the model's device; G runs in eval mode (batch norm
        on its running statistics) without gradients, and its train/eval mode is restored afterwards.
        """
        return self.generate(randn(n, self.config.z_dim, generator=generator))

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """``G(z)`` for given noise [B, z_dim] (moved to the model's device), in eval mode without gradients; the
        train/eval mode is restored. For interpolations in latent space."""
        with eval_mode(self):
            return self(z.to(module_device(self)))


class Generator(SamplesFromNoise, nn.Module):
    """``G``: noise ``z`` [B, z_dim] -> image ``x`` [B, x_dim] with pixels in (0, 1)."""

    config_class = GANConfig

    def __init__(self, config: GANConfig | None = None):
        super().__init__()
        self.config = config or GANConfig()
        c = self.config
        leaky_relu = partial(nn.LeakyReLU, c.negative_slope)
        self.net = mlp((c.z_dim, *c.g_hidden, c.x_dim), leaky_relu, batch_norm=c.batch_norm)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(z))  # [B, x_dim]


class Discriminator(nn.Module):
    """``D``: image ``x`` [B, x_dim] -> logit [B] that ``x`` came from the data (``sigmoid`` gives D(x))."""

    config_class = GANConfig

    def __init__(self, config: GANConfig | None = None):
        super().__init__()
        self.config = config or GANConfig()
        c = self.config
        self.net = mlp((c.x_dim, *c.d_hidden, 1), partial(nn.LeakyReLU, c.negative_slope), dropout=c.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)  # [B, 1] -> [B]


# --- Losses ---------------------------------------------------------------------------------------------------
# With D(x) = sigmoid(l) for a logit l:  -log D(x) = softplus(-l)  and  -log(1 - D(x)) = softplus(l).
# softplus is computed stably by PyTorch for any l, where log(sigmoid(l)) would give -inf once sigmoid underflows.


def check_label_smoothing(label_smoothing: float) -> float:
    """``label_smoothing`` as a float, or a ``ValueError`` unless it is a target ``alpha`` in (0, 1]."""
    alpha = float(label_smoothing)
    if not 0 < alpha <= 1:
        raise ValueError(
            f"label_smoothing is the target for real images, a number in (0, 1] (1.0: no smoothing, 0.9 as in "
            f"Salimans et al. 2016), got {label_smoothing!r}"
        )
    return alpha


def discriminator_loss(
    d_real_logits: torch.Tensor, d_fake_logits: torch.Tensor, label_smoothing: float = 1.0
) -> torch.Tensor:
    """The discriminator's loss, minus the GAN value function (Goodfellow et al. 2014, eq. 1), optionally with
    one-sided label smoothing (Salimans et al. 2016, section 3.4).

    ``L_D = -E_x[alpha log D(x) + (1 - alpha) log(1 - D(x))] - E_z[log(1 - D(G(z)))]``
    ``    = mean [alpha softplus(-l_real) + (1 - alpha) softplus(l_real)] + mean softplus(l_fake)``,

    the binary cross-entropy with target ``alpha`` on real images and 0 on fakes. With ``alpha = 1`` (the default)
    it is ``-V(D, G)``. Its minimiser is ``D*(x) = alpha p_data(x) / (p_data(x) + p_g(x))``: D no longer pushes
    its probability on real images beyond ``alpha``. Only the real side is smoothed: a target above 0 for the fakes
    would reward D for giving fakes some probability where ``p_data`` is 0, and ``G`` would not be pushed away.

    Args:
        d_real_logits: D's logits on data, shape [B].
        d_fake_logits: D's logits on generated images, shape [B'].
        label_smoothing: the target ``alpha`` for real images, in (0, 1]; 1.0 is no smoothing.

    Returns:
        Scalar tensor. It equals ``2 log 2`` when D outputs 1/2 everywhere (for every ``alpha``).
    """
    alpha = check_label_smoothing(label_smoothing)
    real = F.softplus(-d_real_logits).mean()
    if alpha < 1:  # skipped at alpha = 1, so that the default is the unsmoothed loss to the last bit
        real = alpha * real + (1 - alpha) * F.softplus(d_real_logits).mean()
    return real + F.softplus(d_fake_logits).mean()


def generator_loss_nonsaturating(d_fake_logits: torch.Tensor) -> torch.Tensor:
    """The non-saturating generator loss ``-E_z[log D(G(z))] = mean softplus(-l_fake)`` (Goodfellow et al. 2014,
    section 3): same fixed point as the minimax loss, but strong gradients while D easily rejects the fakes.

    Args:
        d_fake_logits: D's logits on generated images, shape [B].

    Returns:
        Scalar tensor.
    """
    return F.softplus(-d_fake_logits).mean()


def generator_loss_saturating(d_fake_logits: torch.Tensor) -> torch.Tensor:
    """The minimax generator loss ``E_z[log(1 - D(G(z)))] = -mean softplus(l_fake)``; its gradient vanishes when
    D confidently rejects the fakes (``l_fake`` very negative), which is why it is not used in practice.

    Args:
        d_fake_logits: D's logits on generated images, shape [B].

    Returns:
        Scalar tensor.
    """
    return -F.softplus(d_fake_logits).mean()


# --- One step of each player ----------------------------------------------------------------------------------


def uses_batch_norm(module: nn.Module) -> bool:
    """Whether any submodule of ``module`` is a batch-norm layer (its outputs then depend on the whole batch)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def discriminator_step(
    D: Discriminator,
    opt_D: torch.optim.Optimizer,
    x: torch.Tensor,
    x_fake: torch.Tensor,
    label_smoothing: float = 1.0,
) -> dict[str, torch.Tensor]:
    """One gradient step on ``D`` with the generator fixed: minimise :func:`discriminator_loss`.

    Real and generated images go through ``D`` as one batch, or as two when ``D`` uses batch norm (DCGAN's
    discriminator), so that each is normalised by its own statistics.

    Args:
        D: the discriminator.
        opt_D: optimizer over ``D``'s parameters only.
        x: a batch of data [B, x_dim].
        x_fake: generated images [B', x_dim]; detached here, so no gradient reaches ``G``.
        label_smoothing: the target ``alpha`` for real images (see :func:`discriminator_loss`).

    Returns:
        ``d_loss`` (before the step), ``d_real`` and ``d_fake`` (mean D probability on real and fake images, as
        seen by this step, in D's current mode), each a detached 0-d tensor.
    """
    if uses_batch_norm(D):
        # separate batches, as in DCGAN: batch norm normalises each by its own statistics, as the generator step
        # will normalise its all-fake batch; one mixed batch would let D judge fakes against real statistics here
        # and against fake ones in the generator step
        l_real, l_fake = D(x), D(x_fake.detach())
    else:
        logits = D(torch.cat([x, x_fake.detach()]))  # one pass over real and fake: [B + B']
        l_real, l_fake = logits[: len(x)], logits[len(x) :]
    loss = discriminator_loss(l_real, l_fake, label_smoothing)
    opt_D.zero_grad(set_to_none=True)
    loss.backward()
    opt_D.step()
    return {
        "d_loss": loss.detach(),
        "d_real": torch.sigmoid(l_real.detach()).mean(),
        "d_fake": torch.sigmoid(l_fake.detach()).mean(),
    }


def generator_step(
    D: Discriminator,
    opt_G: torch.optim.Optimizer,
    x_fake: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], torch.Tensor] = None,
) -> dict[str, torch.Tensor]:
    """One gradient step on ``G`` through a fixed ``D``: minimise the generator loss of ``x_fake = G(z)``.

    ``D``'s parameters are frozen during the backward pass, so only ``G``'s gradients are computed (no work is
    wasted on gradients that the next discriminator step would throw away).

    Args:
        D: the discriminator.
        opt_G: optimizer over ``G``'s parameters only.
        x_fake: ``G(z)`` with its graph, [B, x_dim].
        loss_fn: the generator loss of D's logits (default: :func:`generator_loss_nonsaturating`).

    Returns:
        ``g_loss`` (before the step), a detached 0-d tensor.
    """
    loss_fn = loss_fn or generator_loss_nonsaturating
    D.requires_grad_(False)
    try:
        loss = loss_fn(D(x_fake))
        opt_G.zero_grad(set_to_none=True)
        loss.backward()
    finally:
        D.requires_grad_(True)
    opt_G.step()
    return {"g_loss": loss.detach()}


# --- Training: one batch = a discriminator step, then a generator step -------------------------------------------

GENERATOR_LOSSES = {"nonsaturating": generator_loss_nonsaturating, "saturating": generator_loss_saturating}


@dataclass
class GANTrainConfig(TrainConfig):
    """:class:`~dgmlab.step.TrainConfig` with the GAN's defaults and the choice of generator loss.

    Args:
        epochs, batch_size, seed, device, compile: as in :class:`~dgmlab.step.TrainConfig`.
        lr: Adam learning rate for both players (2e-4) and betas (0.5, 0.999), as in DCGAN (Radford et al., 2016).
        generator_loss: ``"nonsaturating"`` (maximise log D(G(z))) or ``"saturating"`` (minimise
            log(1 - D(G(z))), the minimax game as written).
        label_smoothing: the discriminator's target ``alpha`` for real images (one-sided label smoothing,
            Salimans et al. 2016): 1.0 is none, 0.9 is the usual choice. The fakes' target stays 0.
    """

    epochs: int = 30
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    generator_loss: str = "nonsaturating"
    label_smoothing: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.label_smoothing = check_label_smoothing(self.label_smoothing)
        if self.generator_loss not in GENERATOR_LOSSES:
            raise ValueError(f"generator_loss must be one of {tuple(GENERATOR_LOSSES)}, got {self.generator_loss!r}")


class GANStep:
    """One batch of GAN training: a discriminator step on real and generated images, then a generator step on the
    same generated images (Goodfellow et al. 2014, algorithm 1 with k = 1); ``config.label_smoothing`` sets the
    discriminator's target for real images.

    ``G`` and ``D`` are any generator and discriminator with the interfaces of :class:`Generator` and
    :class:`Discriminator` (flat images [B, x_dim]), e.g. the convolutional ones of :mod:`dgmlab.models.dcgan`.

    The noise is drawn on a CPU generator seeded from ``config.seed`` (the same run on any device). Returns
    ``d_loss``, ``g_loss``, ``d_real``, ``d_fake`` per batch; ``evaluate(split)`` measures D's probabilities on
    held-out images and on fresh samples in eval mode, without touching batch-norm statistics.
    """

    def __init__(self, G: Generator, D: Discriminator, config: GANTrainConfig | None = None):
        config = config or GANTrainConfig()
        self.config, self.device = config, get_device(config.device)
        self.G, self.D = G.to(self.device), D.to(self.device)
        self.modules = {"G": self.G, "D": self.D}
        self.opt_G, self.opt_D = adam(self.G.parameters(), config), adam(self.D.parameters(), config)
        self.generator_loss = GENERATOR_LOSSES[getattr(config, "generator_loss", "nonsaturating")]
        self.label_smoothing = getattr(config, "label_smoothing", 1.0)
        self.noise = torch.Generator().manual_seed(config.seed)
        self._G, self._D = compiled(self.G, config), compiled(self.D, config)  # the same networks, maybe compiled

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        # at least 2 noise vectors: batch norm in G cannot normalise a batch of one (a last batch of 1 image)
        z = randn(max(len(x), 2), self.G.config.z_dim, generator=self.noise, device=self.device)  # [B, z_dim]
        x_fake = self._G(z)  # [B, x_dim], with its graph for the generator step
        terms = discriminator_step(self._D, self.opt_D, x, x_fake, self.label_smoothing)
        terms.update(generator_step(self._D, self.opt_G, x_fake, self.generator_loss))
        return terms

    def evaluate(self, split, seed: int = 1234, batch_size: int = 500) -> dict[str, float]:
        """D's mean probability on ``split``'s images (``d_real``) and on as many samples of G (``d_fake``), and the
        two losses (``d_loss`` with the training's label smoothing), all in eval mode (no dropout, batch norm on
        running statistics, statistics not updated)."""
        g = torch.Generator().manual_seed(seed)

        def terms(x):
            l_real = self.D(x)
            l_fake = self.D(self.G(randn(len(x), self.G.config.z_dim, generator=g, device=self.device)))
            return {
                "d_loss": discriminator_loss(l_real, l_fake, self.label_smoothing),
                "g_loss": self.generator_loss(l_fake),
                "d_real": torch.sigmoid(l_real).mean(),
                "d_fake": torch.sigmoid(l_fake).mean(),
            }

        with eval_mode(self.G, self.D):
            return held_out_means(split, terms, batch_size, self.device, seed)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.G.sample(n, generator)
