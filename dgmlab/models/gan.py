"""A generative adversarial network with MLP generator and discriminator (Goodfellow et al., 2014).

Read top to bottom: the config, the generator ``G``, the discriminator ``D``, the losses as small pure functions
computed from logits, one discriminator step, one generator step, and a plain training loop.

Notation (as in the book): ``z`` ~ N(0, I) is the noise, ``G(z)`` a generated image in [0, 1]^784, ``D(x)`` the
discriminator's *logit* that ``x`` is real, so the probability is ``sigmoid(D(x))``.

References:
    Goodfellow et al., "Generative Adversarial Nets", NeurIPS 2014, https://arxiv.org/abs/1406.2661
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from dgmlab.models.mlp import mlp

__all__ = [
    "GANConfig",
    "GANTrainConfig",
    "Generator",
    "Discriminator",
    "discriminator_loss",
    "generator_loss_nonsaturating",
    "generator_loss_saturating",
    "discriminator_step",
    "generator_step",
    "GANSnapshots",
    "train_gan",
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


class Generator(nn.Module):
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

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` images in eval mode: ``z ~ N(0, I)``, ``x = G(z)``. Returns [n, x_dim] on the model's device."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.config.z_dim, generator=generator, device="cpu").to(device)
        was = self.training
        self.eval()
        x = self(z)
        self.train(was)
        return x


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


def discriminator_loss(d_real_logits: torch.Tensor, d_fake_logits: torch.Tensor) -> torch.Tensor:
    """The discriminator's loss, minus the GAN value function (Goodfellow et al. 2014, eq. 1).

    ``L_D = -E_x[log D(x)] - E_z[log(1 - D(G(z)))] = mean softplus(-l_real) + mean softplus(l_fake)``.

    Args:
        d_real_logits: D's logits on data, shape [B].
        d_fake_logits: D's logits on generated images, shape [B'].

    Returns:
        Scalar tensor. It equals ``2 log 2`` when D outputs 1/2 everywhere.
    """
    return F.softplus(-d_real_logits).mean() + F.softplus(d_fake_logits).mean()


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


def discriminator_step(
    G: Generator, D: Discriminator, opt_D: torch.optim.Optimizer, x: torch.Tensor, z: torch.Tensor
) -> float:
    """One gradient step on ``D`` with ``G`` fixed.

    Args:
        G, D: the two networks.
        opt_D: optimizer over ``D``'s parameters only.
        x: a batch of data [B, x_dim].
        z: a batch of noise [B', z_dim].

    Returns:
        The discriminator loss before the step, as a float.
    """
    with torch.no_grad():
        x_fake = G(z)  # G is fixed in this step: no graph through it
    loss = discriminator_loss(D(x), D(x_fake))
    opt_D.zero_grad(set_to_none=True)
    loss.backward()
    opt_D.step()
    return float(loss.detach())


def generator_step(G: Generator, D: Discriminator, opt_G: torch.optim.Optimizer, z: torch.Tensor) -> float:
    """One gradient step on ``G`` with the non-saturating loss; ``D``'s parameters are not updated.

    Args:
        G, D: the two networks.
        opt_G: optimizer over ``G``'s parameters only.
        z: a batch of noise [B, z_dim].

    Returns:
        The generator loss before the step, as a float.
    """
    loss = generator_loss_nonsaturating(D(G(z)))
    opt_G.zero_grad(set_to_none=True)
    loss.backward()  # also fills D's .grad; opt_D.zero_grad clears it before D's next step
    opt_G.step()
    return float(loss.detach())


# --- Training loop --------------------------------------------------------------------------------------------


@dataclass
class GANTrainConfig:
    """Settings of :func:`train_gan` (saved with checkpoints).

    Args:
        epochs: passes over the training images.
        batch_size: images per step.
        lr: Adam learning rate for both players.
        betas: Adam betas; (0.5, 0.999) as in DCGAN (Radford et al., 2016).
        seed: seeds the batch order, the noise and nothing else (no global RNG is touched).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """

    epochs: int = 30
    batch_size: int = 128
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size <= 0 or self.lr <= 0:
            raise ValueError(f"GANTrainConfig needs epochs >= 0, batch_size > 0 and lr > 0, got {self}")


@dataclass
class GANSnapshots:
    """Callback that keeps ``n`` samples from fixed noise at chosen epochs (epoch 0 = before training).

    After training, ``snapshots`` maps epoch -> images [n, x_dim] on the CPU.
    """

    epochs: Iterable[int]
    n: int = 25
    seed: int = 0
    snapshots: dict[int, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.epochs = set(int(e) for e in self.epochs)
        self._z: torch.Tensor | None = None

    def __call__(self, epoch: int, G: Generator, D: Discriminator, history: list[dict]) -> None:
        if epoch not in self.epochs:
            return
        if self._z is None:
            self._z = torch.randn(self.n, G.config.z_dim, generator=torch.Generator().manual_seed(self.seed))
        device = next(G.parameters()).device
        was_training = G.training
        G.eval()
        with torch.no_grad():
            self.snapshots[epoch] = G(self._z.to(device)).cpu()
        G.train(was_training)


def train_gan(
    G: Generator,
    D: Discriminator,
    x_train: torch.Tensor,
    config: GANTrainConfig | None = None,
    callbacks: Sequence[Callable[[int, Generator, Discriminator, list[dict]], None]] = (),
    progress: bool = True,
) -> list[dict]:
    """Train ``G`` and ``D`` by alternating one discriminator step and one generator step per batch.

    Args:
        G, D: the networks (moved to ``config.device``).
        x_train: training images [N, x_dim] in [0, 1].
        config: a :class:`GANTrainConfig`.
        callbacks: called as ``cb(epoch, G, D, history)`` before training (epoch 0) and after every epoch.
        progress: show a tqdm bar over epochs.

    Returns:
        History, one dict per epoch: ``epoch``, ``d_loss``, ``g_loss`` (means over the epoch's batches),
        ``d_real`` and ``d_fake`` (mean D probability on the last batch's real and fake images), ``seconds``.

    Raises:
        ValueError: on a wrongly shaped ``x_train``.
        FloatingPointError: when a loss becomes NaN or infinite.
    """
    from dgmlab.utils import get_device

    config = config or GANTrainConfig()
    if x_train.dim() != 2 or x_train.shape[1] != G.config.x_dim:
        raise ValueError(f"x_train must have shape [N, {G.config.x_dim}], got {tuple(x_train.shape)}")
    device = get_device(config.device)
    G.to(device)
    D.to(device)
    opt_G = torch.optim.Adam(G.parameters(), lr=config.lr, betas=config.betas)
    opt_D = torch.optim.Adam(D.parameters(), lr=config.lr, betas=config.betas)
    rng = torch.Generator().manual_seed(config.seed)  # batch order and noise, on the CPU for reproducibility
    history: list[dict] = []
    for cb in callbacks:
        cb(0, G, D, history)
    bar = tqdm(range(1, config.epochs + 1), desc="GAN", unit="epoch", disable=not progress)
    for epoch in bar:
        start = time.perf_counter()
        G.train()
        D.train()
        d_losses, g_losses = [], []
        perm = torch.randperm(x_train.shape[0], generator=rng)
        for i in range(0, x_train.shape[0], config.batch_size):
            x = x_train[perm[i : i + config.batch_size]].to(device)  # [B, x_dim]
            z = torch.randn(x.shape[0], G.config.z_dim, generator=rng).to(device)  # [B, z_dim]
            d_losses.append(discriminator_step(G, D, opt_D, x, z))
            z = torch.randn(x.shape[0], G.config.z_dim, generator=rng).to(device)
            g_losses.append(generator_step(G, D, opt_G, z))
            if not (torch.isfinite(torch.tensor(d_losses[-1])) and torch.isfinite(torch.tensor(g_losses[-1]))):
                raise FloatingPointError(
                    f"GAN loss became non-finite at epoch {epoch} (d_loss={d_losses[-1]}, g_loss={g_losses[-1]}); "
                    "try a smaller lr"
                )
        with torch.no_grad():
            d_real = torch.sigmoid(D(x)).mean().item()
            d_fake = torch.sigmoid(D(G(z))).mean().item()
        record = {
            "epoch": epoch,
            "d_loss": sum(d_losses) / len(d_losses),
            "g_loss": sum(g_losses) / len(g_losses),
            "d_real": d_real,
            "d_fake": d_fake,
            "seconds": time.perf_counter() - start,
        }
        history.append(record)
        bar.set_postfix(d_loss=f"{record['d_loss']:.3f}", g_loss=f"{record['g_loss']:.3f}")
        for cb in callbacks:
            cb(epoch, G, D, history)
    return history


def config_dict(config: GANConfig) -> dict:
    """The config as a plain dict (for checkpoints and JSON)."""
    return asdict(config)
