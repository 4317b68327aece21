"""Toy distributions with known densities, in one and two dimensions, for the GAN chapters.

A GAN never evaluates a density, but the claims about it do: the optimal discriminator is
``p_data / (p_data + p_g)``, the value of the game is a Jensen-Shannon divergence, a collapsed generator covers few
modes. On a mixture of Gaussians all of these can be computed exactly (or by quadrature), so the book can check the
derivations against numbers. One class, :class:`GaussianMixture` (isotropic components, any dimension), and
constructors for the course's toys: :func:`mixture_1d` and :func:`ring`; and the mode counting of the GAN
literature on these toys: :meth:`GaussianMixture.mode_coverage` (modes covered, share of high-quality samples).

The 2-d toys live in the unit square, because :class:`dgmlab.models.gan.Generator` ends with a sigmoid (it
generates pixels in (0, 1)); the same networks then serve MNIST and the toys.

References:
    Metz et al., "Unrolled Generative Adversarial Networks", ICLR 2017 (the ring of 8 Gaussians),
    https://arxiv.org/abs/1611.02163
    Srivastava et al., "VEEGAN: Reducing Mode Collapse in GANs using Implicit Variational Learning", NeurIPS 2017
    (high-quality samples and modes covered), https://arxiv.org/abs/1705.07761
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dgmlab.data import Split

__all__ = ["GaussianMixture", "ModeCoverage", "HIGH_QUALITY_RADIUS", "mixture_1d", "ring"]

# A sample is "high quality" when it lies within this many standard deviations of some component's mean
# (Srivastava et al. 2017, section 5.1). For a d-dimensional isotropic Gaussian the share of its own samples that do
# is the chi-square probability P(chi2_d <= 9): 98.9% in two dimensions.
HIGH_QUALITY_RADIUS = 3.0


@dataclass(frozen=True)
class GaussianMixture:
    """``p(x) = sum_k w_k N(x | m_k, s_k^2 I)``: a mixture of isotropic Gaussians in ``dim`` dimensions.

    Attributes:
        means: component means ``m_k``, float64 ``[K, dim]``.
        stds: component standard deviations ``s_k``, float64 ``[K]``.
        weights: mixture weights ``w_k``, float64 ``[K]``, positive, summing to one.
        name: what :meth:`split` calls the data (``"toy/ring8"``, ...).
    """

    means: torch.Tensor
    stds: torch.Tensor
    weights: torch.Tensor
    name: str = "toy/mixture"

    def __post_init__(self) -> None:
        means = torch.as_tensor(self.means, dtype=torch.float64)
        means = means[:, None] if means.dim() == 1 else means  # [K] -> [K, 1] for a 1-d mixture
        k = means.shape[0]
        stds = torch.as_tensor(self.stds, dtype=torch.float64).expand(k).clone()
        weights = torch.as_tensor(self.weights, dtype=torch.float64).expand(k).clone()
        if means.dim() != 2 or k == 0:
            raise ValueError(f"means must be [K, dim] with K >= 1, got shape {tuple(means.shape)}")
        if not (stds > 0).all() or not (weights > 0).all():
            raise ValueError("the standard deviations and the weights must be positive")
        object.__setattr__(self, "means", means)
        object.__setattr__(self, "stds", stds)
        object.__setattr__(self, "weights", weights / weights.sum())

    @property
    def dim(self) -> int:
        """The dimension of ``x``."""
        return self.means.shape[1]

    def component_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """``log w_k + log N(x | m_k, s_k^2 I)`` for every point and component: ``[N, dim] -> [N, K]`` (float64)."""
        x = torch.as_tensor(x, dtype=torch.float64)
        x = x[:, None] if x.dim() == 1 and self.dim == 1 else x  # a 1-d grid [N] is read as [N, 1]
        sq = ((x[:, None, :] - self.means[None]) ** 2).sum(-1)  # [N, K] squared distances to the means
        log_norm = -0.5 * self.dim * torch.log(2 * math.pi * self.stds**2)  # [K]
        return self.weights.log() + log_norm - 0.5 * sq / self.stds**2

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x)``, ``[N, dim]`` (or ``[N]`` for a 1-d mixture) -> ``[N]``, float64, by log-sum-exp."""
        return torch.logsumexp(self.component_log_probs(x), dim=-1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """The gradient of the log-density, ``d log p(x) / dx = sum_k r_k(x) (m_k - x) / s_k^2`` with the
        responsibilities ``r_k(x) = p(k | x)``: ``[N, dim] -> [N, dim]``, float64."""
        x = torch.as_tensor(x, dtype=torch.float64)
        x = x[:, None] if x.dim() == 1 and self.dim == 1 else x
        r = torch.softmax(self.component_log_probs(x), dim=-1)  # [N, K]
        return (r[:, :, None] * (self.means[None] - x[:, None, :]) / self.stds[None, :, None] ** 2).sum(1)

    def sample_with_components(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` points and the component each came from: ``x`` float32 ``[n, dim]``, ``k`` int64 ``[n]``.

        Ancestral sampling: ``k ~ Categorical(w)``, then ``x = m_k + s_k eps`` with ``eps ~ N(0, I)``; both drawn
        from the CPU ``generator``.
        """
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)  # [n]
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)  # [n, dim]
        x = self.means[k] + self.stds[k, None] * eps
        return x.float(), k

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` points, float32 ``[n, dim]`` (see :meth:`sample_with_components`)."""
        return self.sample_with_components(n, generator)[0]

    def split(self, n: int, seed: int = 0) -> Split:
        """``n`` samples as a :class:`~dgmlab.data.Split` for :func:`dgmlab.train.fit`; ``y`` is the component."""
        x, k = self.sample_with_components(n, torch.Generator().manual_seed(seed))
        info = {"means": self.means.tolist(), "stds": self.stds.tolist(), "weights": self.weights.tolist()}
        return Split(x, k, f"{self.name}/seed{seed}", "toy", info=info)

    def nearest_component(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For each point, the component whose mean is nearest and the distance to it in units of that
        component's standard deviation: ``[N, dim] -> (k [N] int64, distance [N] float64)``."""
        x = torch.as_tensor(x, dtype=torch.float64)
        x = x[:, None] if x.dim() == 1 and self.dim == 1 else x
        dist = torch.cdist(x, self.means)  # [N, K]
        d, k = dist.min(dim=1)
        return k, d / self.stds[k]

    def standardized_distances(self, x: torch.Tensor) -> torch.Tensor:
        """``||x - m_k|| / s_k`` for every point and component: ``[N, dim] -> [N, K]``, float64."""
        x = torch.as_tensor(x, dtype=torch.float64)
        x = x[:, None] if x.dim() == 1 and self.dim == 1 else x
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must be [N, {self.dim}] points of this mixture's space, got shape {tuple(x.shape)}")
        return torch.cdist(x, self.means) / self.stds  # [N, K]

    def mode_coverage(
        self, x: torch.Tensor, radius: float = HIGH_QUALITY_RADIUS, min_share: float | None = None
    ) -> ModeCoverage:
        """Which modes (components) the samples ``x`` cover, and how many samples are of high quality.

        Rules (Srivastava et al. 2017; Metz et al. 2017):

        - a sample is **high quality** when its standardized distance ``||x - m_k|| / s_k`` to some component is at
          most ``radius`` (3 by default); it is then assigned to the component of smallest standardized distance;
        - component ``k`` is **covered** when the high-quality samples assigned to it are at least ``min_share`` of
          all samples, and at least one. The default ``min_share = 1 / (10 K)`` (a tenth of a mode's share under
          the mixture itself: 1.25% for 8 equal modes) keeps a few stray samples from counting as a mode;
          ``min_share=0`` is VEEGAN's rule (one high-quality sample is enough).

        Args:
            x: samples ``[N, dim]`` (``[N]`` for a 1-d mixture), e.g. from a generator.
            radius: the high-quality radius, in standard deviations of each component.
            min_share: the share of all samples a component needs, in [0, 1].

        Returns:
            A :class:`ModeCoverage` (counts per component, ``modes_covered``, ``high_quality_share``).
        """
        if min_share is None:
            min_share = 1 / (10 * len(self.weights))
        if not 0 <= min_share <= 1 or not radius > 0:
            raise ValueError(f"min_share must lie in [0, 1] and radius be positive, got {min_share} and {radius}")
        dist = self.standardized_distances(x)  # [N, K]
        if len(dist) == 0:
            raise ValueError("x holds no samples")
        d, k = dist.min(dim=1)  # [N], [N]
        counts = torch.bincount(k[d <= radius], minlength=len(self.weights))  # high-quality samples per component
        return ModeCoverage(counts, len(dist), radius, min_share)


@dataclass(frozen=True)
class ModeCoverage:
    """What :meth:`GaussianMixture.mode_coverage` counted.

    Attributes:
        counts: high-quality samples assigned to each component, int64 ``[K]``.
        n: all samples.
        radius: the high-quality radius used (standard deviations).
        min_share: the share of all samples a component needed to be covered.
    """

    counts: torch.Tensor
    n: int
    radius: float
    min_share: float

    @property
    def covered(self) -> torch.Tensor:
        """bool ``[K]``: component ``k`` holds at least one and at least ``min_share * n`` high-quality samples."""
        return (self.counts >= 1) & (self.counts >= self.min_share * self.n)

    @property
    def modes_covered(self) -> int:
        """The number of covered components."""
        return int(self.covered.sum())

    @property
    def high_quality_share(self) -> float:
        """The share of all samples that are of high quality, in [0, 1]."""
        return int(self.counts.sum()) / self.n


def mixture_1d(
    means: Sequence[float], stds: Sequence[float], weights: Sequence[float] | None = None, name: str = "toy/1d"
) -> GaussianMixture:
    """A 1-d mixture ``sum_k w_k N(m_k, s_k^2)`` (equal weights by default)."""
    weights = [1.0] * len(means) if weights is None else weights
    f64 = torch.float64  # float32 would round the parameters (0.1 is not a float32 number)
    return GaussianMixture(
        torch.tensor(means, dtype=f64)[:, None], torch.tensor(stds, dtype=f64), torch.tensor(weights, dtype=f64), name
    )


def ring(
    k: int = 8, radius: float = 0.35, std: float = 0.02, center: tuple[float, float] = (0.5, 0.5)
) -> GaussianMixture:
    """``k`` equally weighted Gaussians of standard deviation ``std`` on a circle (Metz et al. 2017), the first at
    angle 0; by default inside the unit square, where a sigmoid generator can reach every mode."""
    angles = 2 * math.pi * torch.arange(k, dtype=torch.float64) / k
    means = torch.tensor(center, dtype=torch.float64) + radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    return GaussianMixture(means, torch.tensor(std), torch.ones(k), f"toy/ring{k}")
