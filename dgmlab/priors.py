"""Priors on a 2-d latent space that an adversarial autoencoder can impose: a swiss roll and a mixture of Gaussians.

A VAE needs a prior whose density enters a KL term in closed form; an adversarial autoencoder only needs to *sample*
its prior (the discriminator sees prior samples, never a density). So these priors are defined by how they sample,
``sample(n, generator)`` on a CPU generator as everywhere in dgmlab, and carry what the book needs to measure a code
against them: the noise-free curve of the roll, the mixture's components.

- :class:`SwissRoll`: a noisy Archimedean spiral, ``z = r(t) (cos a(t), sin a(t)) + s eps`` with the position
  ``t ~ U(0, 1)`` running from the centre outwards.
- :class:`MixturePrior`: ``K`` isotropic Gaussians on a circle (a :class:`dgmlab.toys.GaussianMixture`), with
  ``sample(n, generator, y)`` drawing row ``i`` from component ``y[i]`` when a label is given: the prior of the
  adversarial autoencoder that sees labels (one component per class).
- :class:`StandardNormal`: ``N(0, I)``, the VAE's prior, for comparison.

References:
    Makhzani et al., "Adversarial Autoencoders", ICLR workshop 2016, https://arxiv.org/abs/1511.05644 (figures 2-4)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dgmlab.toys import GaussianMixture, ring
from dgmlab.utils import randn

__all__ = ["SwissRoll", "MixturePrior", "StandardNormal", "PRIORS", "make_prior"]


def _as_labels(y, n: int) -> torch.Tensor:
    y = torch.as_tensor(y, dtype=torch.long).reshape(-1)
    if len(y) != n:
        raise ValueError(f"got {len(y)} labels for {n} samples; pass one label per sample (-1 for none)")
    return y


@dataclass(frozen=True)
class SwissRoll:
    """A 2-d swiss roll: ``t ~ U(0, 1)``, angle ``a(t) = sqrt(a0^2 + (a1^2 - a0^2) t)``, radius
    ``r(t) = radius * a(t) / a1``, and ``z = r(t) (cos a(t), sin a(t)) + noise * eps``, ``eps ~ N(0, I)``.

    The square root makes the points roughly uniform along the curve (the arc length of a spiral ``r = c a`` grows
    like ``a^2 / 2``), so equal steps in ``t`` are roughly equal steps along the roll; ``t = 0`` is its inner end.

    Attributes:
        radius: the radius of the outer end.
        angle_start, angle_end: ``a0`` and ``a1`` in radians (the default, pi to 4 pi, is one and a half turns).
        noise: the standard deviation of the isotropic Gaussian noise around the curve.
    """

    radius: float = 2.5
    angle_start: float = math.pi
    angle_end: float = 4 * math.pi
    noise: float = 0.1
    dim: int = 2

    def __post_init__(self) -> None:
        if not (self.radius > 0 and 0 <= self.angle_start < self.angle_end and self.noise >= 0):
            raise ValueError(f"SwissRoll needs radius > 0, 0 <= angle_start < angle_end and noise >= 0, got {self}")

    def angle(self, t: torch.Tensor) -> torch.Tensor:
        """``a(t)`` for positions ``t`` in [0, 1] (float64)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        return torch.sqrt(self.angle_start**2 + (self.angle_end**2 - self.angle_start**2) * t)

    def curve(self, t: torch.Tensor) -> torch.Tensor:
        """The noise-free roll at positions ``t`` in [0, 1]: ``[N] -> [N, 2]`` float32 (``t = 0``: the centre end)."""
        a = self.angle(t)
        r = self.radius * a / self.angle_end
        return torch.stack([r * torch.cos(a), r * torch.sin(a)], dim=-1).float()

    def sample_with_position(self, n: int, generator: torch.Generator | None = None):
        """``n`` points and their positions along the roll: ``z`` float32 ``[n, 2]``, ``t`` float64 ``[n]``."""
        eps = randn(n, 2, generator=generator)  # dgmlab's rule: noise from a CPU generator
        t = torch.rand(n, generator=generator, dtype=torch.float64)
        return self.curve(t) + self.noise * eps, t

    def sample(self, n: int, generator: torch.Generator | None = None, y=None) -> torch.Tensor:
        """``n`` points ``[n, 2]`` (float32, CPU). The roll has no classes: ``y`` must be ``None``."""
        if y is not None:
            raise ValueError("the swiss roll has no components to choose by label; use MixturePrior for labels")
        return self.sample_with_position(n, generator)[0]


@dataclass(frozen=True)
class MixturePrior:
    """``K`` equally weighted isotropic Gaussians of standard deviation ``std`` with means on a circle of radius
    ``radius`` around the origin, the first at angle 0 (:func:`dgmlab.toys.ring`): ``p(z) = (1/K) sum_k p(z | k)``.

    Attributes:
        n_components: ``K`` (10: one per digit).
        radius, std: the circle of means and the components' standard deviation.
    """

    n_components: int = 10
    radius: float = 2.0
    std: float = 0.25
    dim: int = 2

    def __post_init__(self) -> None:
        if self.n_components < 1 or not (self.radius >= 0 and self.std > 0):
            raise ValueError(f"MixturePrior needs n_components >= 1, radius >= 0 and std > 0, got {self}")

    @property
    def mixture(self) -> GaussianMixture:
        """The mixture as a :class:`dgmlab.toys.GaussianMixture` (densities, nearest components)."""
        return ring(self.n_components, self.radius, self.std, center=(0.0, 0.0))

    @property
    def means(self) -> torch.Tensor:
        """The component means ``[K, 2]`` (float64)."""
        return self.mixture.means

    def sample_with_components(self, n: int, generator: torch.Generator | None = None, y=None):
        """``n`` points and the component of each: ``z`` float32 ``[n, 2]``, ``k`` int64 ``[n]``.

        Without ``y`` the component is drawn uniformly. With ``y`` (``[n]`` labels), row ``i`` comes from component
        ``y[i]``, and rows with ``y[i] = -1`` (no label) from a uniformly drawn component.
        """
        eps = randn(n, 2, generator=generator)  # dgmlab's rule: noise from a CPU generator
        k = torch.randint(self.n_components, (n,), generator=generator)
        if y is not None:
            y = _as_labels(y, n)
            if ((y < -1) | (y >= self.n_components)).any():
                raise ValueError(f"labels must be in -1..{self.n_components - 1} (-1 for none), got {y.unique()}")
            k = torch.where(y >= 0, y, k)
        return self.means[k].float() + self.std * eps, k

    def sample(self, n: int, generator: torch.Generator | None = None, y=None) -> torch.Tensor:
        """``n`` points ``[n, 2]`` (float32, CPU); see :meth:`sample_with_components` for ``y``."""
        return self.sample_with_components(n, generator, y)[0]

    def component(self, z: torch.Tensor) -> torch.Tensor:
        """The most probable component of each point, ``argmax_k p(k | z)``: ``[N, 2] -> [N]`` int64. With equal
        weights and standard deviations this is the nearest mean."""
        return self.mixture.component_log_probs(z.detach().cpu()).argmax(dim=1)


@dataclass(frozen=True)
class StandardNormal:
    """``N(0, I)`` in ``dim`` dimensions, the VAE's prior."""

    dim: int = 2

    def sample(self, n: int, generator: torch.Generator | None = None, y=None) -> torch.Tensor:
        if y is not None:
            raise ValueError("N(0, I) has no components to choose by label; use MixturePrior for labels")
        return randn(n, self.dim, generator=generator)


PRIORS = {"swiss_roll": SwissRoll, "mixture": MixturePrior, "normal": StandardNormal}


def make_prior(name: str, dim: int = 2):
    """The prior called ``name`` (``"swiss_roll"``, ``"mixture"`` or ``"normal"``) with its default settings."""
    if name not in PRIORS:
        raise ValueError(f"unknown prior {name!r}; choose one of {', '.join(map(repr, PRIORS))}")
    if name != "normal" and dim != 2:
        raise ValueError(f"the {name} prior lives in 2 dimensions, but z_dim = {dim}; use z_dim=2 or prior='normal'")
    return StandardNormal(dim) if name == "normal" else PRIORS[name]()
