"""CycleGAN (Zhu et al., 2017): two translators between unpaired domains, each trained adversarially against its
own discriminator, and tied together by a cycle-consistency loss.

Read top to bottom: the config, the translator (an MLP ``X -> Y``; ``G`` maps X to Y and ``F`` maps Y back), the
domain discriminators (the GAN's :class:`~dgmlab.models.gan.Discriminator`, one per domain), the cycle-consistency
loss, and :class:`CycleGANStep`, which does per batch

1. a translator step on ``G`` and ``F`` together: the GAN's non-saturating generator loss for ``G(x)`` against
   ``D_Y`` and for ``F(y)`` against ``D_X`` (both discriminators frozen), plus ``lambda`` times the cycle loss
   ``|F(G(x)) - x| + |G(F(y)) - y|``;
2. the GAN's :func:`~dgmlab.models.gan.discriminator_step` for ``D_Y`` (``y`` against ``G(x)``) and for ``D_X``
   (``x`` against ``F(y)``).

The two domains are never paired: ``fit`` feeds batches of X, and the step draws a batch of Y of its own, at
random, from the images it was given.

Differences from the paper, for a CPU budget: MLPs instead of convolutional ResNets, the GAN losses of part II
(cross-entropy) instead of least squares, no buffer of past fakes, no identity loss.

References:
    Zhu, Park, Isola and Efros, "Unpaired Image-to-Image Translation using Cycle-Consistent Adversarial Networks",
    ICCV 2017, https://arxiv.org/abs/1703.10593
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from dgmlab.models.gan import Discriminator, GANConfig, discriminator_step, generator_loss_nonsaturating
from dgmlab.models.mlp import mlp
from dgmlab.step import TrainConfig, adam, held_out_means
from dgmlab.utils import eval_mode, get_device, module_device

RESIDUAL_EPS = 1e-3  # a residual translator clamps its input to [eps, 1 - eps] before the logit

__all__ = [
    "CycleGANConfig",
    "Translator",
    "domain_discriminator",
    "cycle_loss",
    "CycleGANTrainConfig",
    "CycleGANStep",
]


@dataclass
class CycleGANConfig:
    """Sizes of the translators and the discriminators.

    Args:
        x_dim: the dimension of both domains (784 for MNIST, 2 for points).
        hidden: hidden widths of a translator.
        d_hidden: hidden widths of a discriminator.
        negative_slope: slope of the LeakyReLU activations.
        dropout: dropout in the discriminators.
        residual: the translator starts as the identity: its output logits are ``logit(x)`` plus the MLP's, whose
            last layer starts at zero, so it learns a change of its input rather than an image from scratch (the
            role of the skip connections of the paper's ResNet translators).
    """

    x_dim: int = 784
    hidden: tuple[int, ...] = (256, 256)
    d_hidden: tuple[int, ...] = (256,)
    negative_slope: float = 0.2
    dropout: float = 0.0
    residual: bool = False

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        self.d_hidden = tuple(int(h) for h in self.d_hidden)
        if self.x_dim <= 0 or any(h <= 0 for h in self.hidden + self.d_hidden):
            raise ValueError(f"CycleGANConfig sizes must be positive, got {self}")


class Translator(nn.Module):
    """A map between the domains: [B, x_dim] -> [B, x_dim] in (0, 1) (an MLP ending in a sigmoid: pixels, or points
    in the unit square). With ``config.residual`` it computes ``sigmoid(logit(x) + MLP(x))`` and starts as the
    identity."""

    config_class = CycleGANConfig

    def __init__(self, config: CycleGANConfig | None = None):
        super().__init__()
        self.config = config or CycleGANConfig()
        c = self.config
        self.net = mlp((c.x_dim, *c.hidden, c.x_dim), partial(nn.LeakyReLU, c.negative_slope))
        if c.residual:  # start at the identity: the MLP's contribution is zero until training moves it
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)  # [B, x_dim]
        if self.config.residual:
            logits = logits + torch.logit(x, eps=RESIDUAL_EPS)  # sigmoid(logit(x)) = x, up to the clamping
        return torch.sigmoid(logits)

    def translate(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """The translation of many inputs, in eval mode without gradients, on the CPU: [N, x_dim] -> [N, x_dim]."""
        device = module_device(self)
        with eval_mode(self):
            return torch.cat([self(b.to(device)).cpu() for b in x.split(batch_size)])


def domain_discriminator(config: CycleGANConfig) -> Discriminator:
    """A discriminator for one domain: the GAN's :class:`~dgmlab.models.gan.Discriminator` of part II on
    ``x_dim`` inputs, returning the logit that its input is a real member of the domain."""
    return Discriminator(
        GANConfig(
            x_dim=config.x_dim, d_hidden=config.d_hidden, negative_slope=config.negative_slope, dropout=config.dropout
        )
    )


def cycle_loss(x: torch.Tensor, x_cycle: torch.Tensor) -> torch.Tensor:
    """The cycle-consistency loss of one direction, ``E |x - F(G(x))|_1 / x_dim``: the mean absolute difference per
    coordinate between the inputs and their round trips (Zhu et al. 2017, eq. 2). Zero exactly when every round
    trip returns its input.

    Args:
        x: inputs [B, x_dim].
        x_cycle: their round trips, ``F(G(x))``, [B, x_dim].

    Returns:
        Scalar tensor.
    """
    return (x - x_cycle).abs().mean()


@dataclass
class CycleGANTrainConfig(TrainConfig):
    """:class:`~dgmlab.step.TrainConfig` with the GAN's Adam settings and the weight of the cycle loss.

    Args:
        lambda_cycle: the weight ``lambda`` of the cycle loss (10 in the paper; 0 trains two unrelated GANs).
        lr, betas: Adam's settings for all four networks (2e-4 and (0.5, 0.999), as for GANs).
    """

    epochs: int = 30
    batch_size: int = 100
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    lambda_cycle: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lambda_cycle < 0:
            raise ValueError(f"lambda_cycle >= 0 is required, got {self.lambda_cycle}")


class CycleGANStep:
    """One batch of CycleGAN training: a step on the translators ``G`` and ``F`` together, then one discriminator
    step for each domain (see the module docstring).

    Args:
        G: translator X -> Y; F: translator Y -> X.
        D_X, D_Y: the discriminators of X and of Y.
        y_data: the images of domain Y [M, x_dim]; each call draws a batch of them at random (a CPU generator
            seeded from ``config.seed``), so the two domains are never paired.
        config: the training settings.

    Returns per batch ``g_adv`` (the two translators' adversarial losses, summed), ``cycle`` (the two directions'
    cycle losses, summed), ``d_x_loss``, ``d_y_loss``, ``d_y_fake`` (``D_Y``'s mean probability on ``G(x)``) and
    ``d_x_fake``; ``evaluate(split)`` gives ``cycle_x``, the cycle loss of X on held-out images.
    """

    def __init__(self, G: Translator, F: Translator, D_X, D_Y, y_data: torch.Tensor, config=None):
        config = config or CycleGANTrainConfig()
        if not isinstance(config, CycleGANTrainConfig):
            config = CycleGANTrainConfig(**vars(config))
        self.config, self.device = config, get_device(config.device)
        self.G, self.F, self.D_X, self.D_Y = (m.to(self.device) for m in (G, F, D_X, D_Y))
        self.modules = {"G": self.G, "F": self.F, "D_X": self.D_X, "D_Y": self.D_Y}
        if y_data.dim() != 2 or y_data.shape[1] != G.config.x_dim:
            raise ValueError(f"y_data must be [M, {G.config.x_dim}] images of domain Y, got {tuple(y_data.shape)}")
        self.y_data = y_data.to(self.device)
        self.opt_GF = adam([*self.G.parameters(), *self.F.parameters()], config)
        self.opt_DX, self.opt_DY = adam(self.D_X.parameters(), config), adam(self.D_Y.parameters(), config)
        self.pick = torch.Generator().manual_seed(config.seed)

    def draw_y(self, n: int) -> torch.Tensor:
        """A batch of ``n`` images of Y, drawn at random without regard to the batch of X."""
        idx = torch.randint(len(self.y_data), (n,), generator=self.pick)
        return self.y_data[idx.to(self.device)]

    def translator_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """Step 1, on ``G`` and ``F``: adversarial losses through the frozen discriminators plus ``lambda`` times the
        cycle losses. Returns the terms and the translations ``G(x)``, ``F(y)`` (for the discriminator steps)."""
        for D in (self.D_X, self.D_Y):
            D.requires_grad_(False)
        try:
            y_fake, x_fake = self.G(x), self.F(y)  # [B, x_dim] each
            g_adv = generator_loss_nonsaturating(self.D_Y(y_fake)) + generator_loss_nonsaturating(self.D_X(x_fake))
            cycle = cycle_loss(x, self.F(y_fake)) + cycle_loss(y, self.G(x_fake))
            loss = g_adv + self.config.lambda_cycle * cycle
            self.opt_GF.zero_grad(set_to_none=True)
            loss.backward()
        finally:
            for D in (self.D_X, self.D_Y):
                D.requires_grad_(True)
        self.opt_GF.step()
        return {"g_adv": g_adv.detach(), "cycle": cycle.detach()}, y_fake, x_fake

    def __call__(self, x: torch.Tensor, y_unused: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        # y_unused: the labels fit passes along with x; CycleGAN never looks at them
        y = self.draw_y(len(x))
        terms, y_fake, x_fake = self.translator_step(x, y)
        d_y = discriminator_step(self.D_Y, self.opt_DY, y, y_fake)  # y_fake is detached there
        d_x = discriminator_step(self.D_X, self.opt_DX, x, x_fake)
        terms.update(d_y_loss=d_y["d_loss"], d_y_fake=d_y["d_fake"], d_x_loss=d_x["d_loss"], d_x_fake=d_x["d_fake"])
        return terms

    def evaluate(self, split, batch_size: int = 500) -> dict[str, float]:
        """``cycle_x``: the mean ``|F(G(x)) - x|`` per coordinate on ``split``'s images of X, in eval mode."""
        with eval_mode(self.G, self.F):
            return held_out_means(
                split, lambda x: {"cycle_x": cycle_loss(x, self.F(self.G(x)))}, batch_size, self.device, 0
            )
