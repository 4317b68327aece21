"""The adversarial autoencoder (Makhzani et al., 2016): an autoencoder whose codes are made to look like samples of
an imposed prior by a GAN played in the latent space.

Read top to bottom: the config, the autoencoder (a deterministic encoder ``q(z | x)``, ``z = E(x)``, and a Bernoulli
decoder), the latent discriminator (the GAN's :class:`~dgmlab.models.gan.Discriminator` on ``z``, or on ``z`` and a
one-hot label), the reconstruction loss, and :class:`AAEStep`, which does per batch

1. a reconstruction step on the encoder and the decoder: minimise ``-log p(x | z = E(x))``;
2. a discriminator step on prior samples ("real") against codes ``E(x)`` ("fake"): the GAN's
   :func:`~dgmlab.models.gan.discriminator_step`;
3. a generator step on the encoder alone: the GAN's :func:`~dgmlab.models.gan.generator_step` with the
   non-saturating loss, so the codes move towards what ``D`` takes for prior samples.

What the game matches is the *aggregated posterior* ``q(z) = E_{p_data(x)} q(z | x)``, the distribution of the codes
of all the data, to the prior ``p(z)``; the VAE's KL term acts on each ``q(z | x)`` separately (the book's chapter
"The adversarial autoencoder" derives both).

With labels (``AAEConfig(conditional=True)``, a mixture prior with one component per class), ``D`` sees every code
with a one-hot vector of ``K + 1`` slots: the label of a labelled image, whose prior sample then comes from that
label's component, or the extra slot ``K`` for an unlabelled one (``y = -1``), whose prior sample comes from the
whole mixture (Makhzani et al., section 5).

References:
    Makhzani et al., "Adversarial Autoencoders", ICLR workshop 2016, https://arxiv.org/abs/1511.05644
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dgmlab.distributions import log_bernoulli
from dgmlab.models.gan import Discriminator, GANConfig, discriminator_step, generator_step
from dgmlab.models.mlp import mlp
from dgmlab.priors import make_prior
from dgmlab.step import TrainConfig, adam, batch_mean, held_out_means
from dgmlab.utils import eval_mode, get_device, module_device

__all__ = [
    "AAEConfig",
    "AAE",
    "AAETrainConfig",
    "latent_discriminator",
    "reconstruction_loss",
    "label_code",
    "hide_labels",
    "energy_distance",
    "AAEStep",
]


@dataclass
class AAEConfig:
    """Sizes of the three networks and the imposed prior.

    Args:
        x_dim: flattened image size (784 for MNIST).
        z_dim: code dimension (2 for the swiss roll and the mixture priors).
        hidden: hidden widths of the encoder, input side first; the decoder mirrors them.
        d_hidden: hidden widths of the latent discriminator.
        prior: ``"swiss_roll"``, ``"mixture"`` (10 Gaussians on a circle) or ``"normal"`` (see :mod:`dgmlab.priors`).
        conditional: the discriminator also sees the label (one mixture component per class; needs
            ``prior="mixture"``).
        negative_slope: slope of the discriminator's LeakyReLU activations.
    """

    x_dim: int = 784
    z_dim: int = 2
    hidden: tuple[int, ...] = (512, 256)
    d_hidden: tuple[int, ...] = (128, 128)
    prior: str = "swiss_roll"
    conditional: bool = False
    negative_slope: float = 0.2

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        self.d_hidden = tuple(int(h) for h in self.d_hidden)
        if self.x_dim <= 0 or self.z_dim <= 0 or any(h <= 0 for h in self.hidden + self.d_hidden):
            raise ValueError(f"AAEConfig sizes must be positive, got {self}")
        make_prior(self.prior, self.z_dim)  # raises for an unknown prior or a wrong dimension
        if self.conditional and self.prior != "mixture":
            raise ValueError(f"conditional=True needs prior='mixture' (one component per class), got {self.prior!r}")

    @property
    def n_classes(self) -> int:
        """``K``, the number of classes the discriminator can be told (0 without labels)."""
        return make_prior(self.prior, self.z_dim).n_components if self.conditional else 0


class AAE(nn.Module):
    """The autoencoder: encoder ``E``: ``x`` [B, x_dim] -> ``z`` [B, z_dim] (a deterministic ``q(z | x)``, a point
    mass at ``E(x)``), decoder: ``z`` -> logits [B, x_dim] of a Bernoulli ``p(x | z)``, and the imposed prior
    ``self.prior`` (sampled by :meth:`sample`)."""

    config_class = AAEConfig

    def __init__(self, config: AAEConfig | None = None):
        super().__init__()
        self.config = config or AAEConfig()
        c = self.config
        self.encoder = mlp((c.x_dim, *c.hidden, c.z_dim), nn.ReLU)
        self.decoder = mlp((c.z_dim, *reversed(c.hidden), c.x_dim), nn.ReLU)
        self.prior = make_prior(c.prior, c.z_dim)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``z = E(x)``: [B, x_dim] -> [B, z_dim]."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder logits: [B, z_dim] -> [B, x_dim]."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return self.decode(z), z  # x_logits [B, x_dim], z [B, z_dim]

    def codes(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """``E(x)`` for many images, in eval mode without gradients, on the CPU: [N, x_dim] -> [N, z_dim]."""
        device = module_device(self)
        with eval_mode(self):
            return torch.cat([self.encode(b.to(device)).cpu() for b in x.split(batch_size)])

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder means ``sigmoid(logits)`` for given codes (moved to the model's device), in eval mode without
        gradients: [B, z_dim] -> [B, x_dim]. For decoding points of the prior chosen by hand."""
        with eval_mode(self):
            return torch.sigmoid(self.decode(z.to(module_device(self))))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder means at the codes, ``sigmoid(decode(E(x)))``, in eval mode without gradients."""
        with eval_mode(self):
            return torch.sigmoid(self(x.to(module_device(self)))[0])

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images: decoder means at ``z ~ p(z)``, the imposed prior: [n, x_dim] on the model's device.

        The prior samples come from the CPU ``generator`` and move to the model's device; the decoder runs in eval
        mode without gradients and the train/eval mode is restored.
        """
        return self.decode_mean(self.prior.sample(n, generator))


def latent_discriminator(config: AAEConfig) -> Discriminator:
    """The latent discriminator: the GAN's :class:`~dgmlab.models.gan.Discriminator` on ``z`` (``x_dim = z_dim``),
    or on ``[z, one-hot label]`` (``x_dim = z_dim + K + 1``) when ``config.conditional``; no dropout (a 2-d input
    gives it little to overfit)."""
    n_in = config.z_dim + (config.n_classes + 1 if config.conditional else 0)
    return Discriminator(
        GANConfig(
            x_dim=n_in,
            z_dim=config.z_dim,
            d_hidden=config.d_hidden,
            negative_slope=config.negative_slope,
            dropout=0.0,
        )
    )


def reconstruction_loss(x: torch.Tensor, x_logits: torch.Tensor) -> torch.Tensor:
    """``-log p(x | z)`` of a Bernoulli decoder per image (nats), summed over pixels: [B, x_dim] -> [B]. The AAE's
    reconstruction phase minimises its batch mean (the VAE's ``recon`` term, without sampling ``z``)."""
    return -log_bernoulli(x, x_logits)


def label_code(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """The one-hot vector the conditional discriminator sees beside a code: slot ``y`` for a label, slot
    ``n_classes`` for "no label" (``y = -1``): [B] -> [B, n_classes + 1] float32."""
    y = torch.where(y >= 0, y, torch.full_like(y, n_classes))
    return F.one_hot(y, n_classes + 1).float()


def hide_labels(split, n_labelled: int, seed: int = 0):
    """A copy of ``split`` in which only ``n_labelled`` images, chosen at random with ``seed`` (stratified: the same
    number per class, as far as it divides), keep their label; the others get ``y = -1``. Its name records the
    choice, so :func:`dgmlab.checkpoint.load_or_train` tells two choices apart."""
    import dataclasses

    classes = sorted(set(split.y.tolist()))
    g = torch.Generator().manual_seed(seed)
    keep = []
    for i, c in enumerate(classes):
        idx = (split.y == c).nonzero().squeeze(1)
        share = n_labelled // len(classes) + (1 if i < n_labelled % len(classes) else 0)
        if share > len(idx):
            raise ValueError(f"asked for {share} labelled images of class {c}, but the split has only {len(idx)}")
        keep.append(idx[torch.randperm(len(idx), generator=g)[:share]])
    keep = torch.cat(keep)
    y = torch.full_like(split.y, -1)
    y[keep] = split.y[keep]
    name = f"{split.name}/labelled{n_labelled}-seed{seed}"
    return dataclasses.replace(split, y=y, name=name, info={**split.info, "n_labelled": n_labelled})


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """The energy distance of two samples, ``2 E|A - B| - E|A - A'| - E|B - B'|`` (Euclidean norms; the V-statistic,
    diagonal included), zero when the two distributions are equal and positive otherwise (Szekely and Rizzo, 2013).
    ``scipy.stats.energy_distance`` returns the square root of this in one dimension.

    Args:
        a, b: samples ``[N, d]`` and ``[M, d]``.

    Returns:
        A float, in the units of the samples.

    References:
        Szekely and Rizzo, "Energy statistics: a class of statistics based on distances", J. Stat. Plan. Inference
        143 (2013).
    """
    a, b = a.double().reshape(len(a), -1), b.double().reshape(len(b), -1)
    mode = "donot_use_mm_for_euclid_dist"  # exact differences: the matrix-product shortcut loses digits near 0
    ab, aa, bb = (torch.cdist(u, v, compute_mode=mode).mean() for u, v in ((a, b), (a, a), (b, b)))
    return float(2 * ab - aa - bb)


@dataclass
class AAETrainConfig(TrainConfig):
    """:class:`~dgmlab.step.TrainConfig` for the three steps of :class:`AAEStep` (one Adam optimiser each).

    Args:
        lr: learning rate of the reconstruction step (1e-3); ``lr_adv`` that of the discriminator and generator
            steps (1e-3: the
            encoder's adversarial steps must not be smaller than its reconstruction steps, or the codes of a class
            take long to reach their component).
        betas: Adam's betas for all three (0.5 for the first moment, as for GANs).
    """

    epochs: int = 50
    batch_size: int = 100
    lr: float = 1e-3
    lr_adv: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.999)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.lr_adv > 0:
            raise ValueError(f"lr_adv > 0 is required, got {self.lr_adv}")


class AAEStep:
    """One batch of adversarial-autoencoder training: a reconstruction step (encoder and decoder), a discriminator
    step (prior samples against codes) and a generator step (encoder only), in that order (Makhzani et al.,
    section 2). Each has its own Adam optimiser over its own players' parameters.

    The prior samples are drawn on a CPU generator seeded from ``config.seed``. Returns ``recon`` (nats per image),
    ``d_loss``, ``g_loss``, ``d_real`` (D's mean probability on prior samples) and ``d_fake`` (on codes) per batch;
    ``evaluate(split)`` gives ``recon`` on held-out images.
    """

    def __init__(self, model: AAE, D: Discriminator, config: AAETrainConfig | None = None):
        config = config or AAETrainConfig()
        if not isinstance(config, AAETrainConfig):
            config = AAETrainConfig(**{**vars(config)})
        self.config, self.device = config, get_device(config.device)
        self.model, self.D = model.to(self.device), D.to(self.device)
        self.modules = {"model": self.model, "D": self.D}
        expected = latent_discriminator(model.config).config.x_dim
        if D.config.x_dim != expected:
            raise ValueError(
                f"the discriminator reads {D.config.x_dim} inputs, but this AAE's codes need {expected}; "
                "build it with latent_discriminator(model.config)"
            )
        adv = AAETrainConfig(**{**vars(config), "lr": config.lr_adv})
        self.opt_ae = adam(self.model.parameters(), config)  # encoder + decoder
        self.opt_D = adam(self.D.parameters(), adv)
        self.opt_E = adam(self.model.encoder.parameters(), adv)  # the encoder is the GAN's generator
        self.noise = torch.Generator().manual_seed(config.seed)

    def _with_label(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if not self.model.config.conditional:
            return z
        if y is None:
            raise ValueError("a conditional AAE needs labels: pass y (-1 for an unlabelled image)")
        return torch.cat([z, label_code(y.to(z.device), self.model.config.n_classes)], dim=1)

    def reconstruction_step(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Phase 1, on the encoder and the decoder: one Adam step on ``mean -log p(x | E(x))``."""
        x_logits, _ = self.model(x)
        recon = reconstruction_loss(x, x_logits)  # [B]
        self.opt_ae.zero_grad(set_to_none=True)
        recon.mean().backward()
        self.opt_ae.step()
        return {"recon": batch_mean(recon)}

    def latent_pair(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """What the discriminator compares: prior samples ("real") and the codes ``E(x)`` ("fake", with their
        graph), each followed by the one-hot label when the AAE is conditional: two tensors [B, D.x_dim].

        A labelled image (``y >= 0``) is paired with a prior sample from component ``y``; an unlabelled one
        (``y = -1``) with a sample from the whole mixture."""
        labels = y.cpu() if (self.model.config.conditional and y is not None) else None
        z_prior = self.model.prior.sample(len(x), self.noise, labels).to(self.device)  # [B, z_dim]
        z = self.model.encode(x)  # [B, z_dim]
        return self._with_label(z_prior, y), self._with_label(z, y)

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        terms = self.reconstruction_step(x)  # 1. reconstruction: encoder and decoder
        real, fake = self.latent_pair(x, y)  # the codes of the updated encoder
        terms.update(discriminator_step(self.D, self.opt_D, real, fake))  # 2. D alone (fake is detached there)
        terms.update(generator_step(self.D, self.opt_E, fake))  # 3. the encoder alone, through the updated D
        return terms

    def evaluate(self, split, batch_size: int = 500) -> dict[str, float]:
        """Mean reconstruction term ``-log p(x | E(x))`` on ``split`` (nats per image), in eval mode."""
        with eval_mode(self.model):
            return held_out_means(
                split, lambda x: {"recon": reconstruction_loss(x, self.model(x)[0]).mean()}, batch_size, self.device, 0
            )

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.model.sample(n, generator)
