"""Toy distributions: densities against scipy, normalisation by quadrature, the score against autograd, samples
against the density's moments, splits for the training loop."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from dgmlab.toys import GaussianMixture, mixture_1d, ring

TOYS = {
    "1d": mixture_1d([-1.5, 1.0], [0.5, 0.8], [0.6, 0.4]),
    "ring8": ring(),
    "3d": GaussianMixture(torch.randn(3, 3, generator=torch.Generator().manual_seed(0)), [0.5, 1.0, 2.0], [1, 2, 3]),
}


def _scipy_density(p: GaussianMixture, x: np.ndarray) -> np.ndarray:
    return sum(
        w * stats.multivariate_normal(m, s**2 * np.eye(p.dim)).pdf(x)
        for w, m, s in zip(p.weights.numpy(), p.means.numpy(), p.stds.numpy())
    )


@pytest.mark.parametrize("name", TOYS)
def test_log_prob_matches_scipy(name):
    p = TOYS[name]
    x = p.sample(50, torch.Generator().manual_seed(1)).double()
    expected = np.log(_scipy_density(p, x.numpy()))
    assert np.allclose(p.log_prob(x).numpy(), expected, rtol=1e-12, atol=1e-12)


def test_1d_density_integrates_to_one_and_accepts_a_flat_grid():
    p = TOYS["1d"]
    total, err = integrate.quad(
        lambda t: math.exp(p.log_prob(torch.tensor([t], dtype=torch.float64)).item()),
        -12,
        12,
        points=[-1.5, 1.0],
        epsabs=1e-12,
    )
    assert abs(total - 1) < 1e-10 and err < 1e-9  # the tails beyond +-12 hold less than 1e-30
    grid = torch.linspace(-3, 3, 7, dtype=torch.float64)
    assert torch.equal(p.log_prob(grid), p.log_prob(grid[:, None]))


def test_ring_density_integrates_to_one_over_the_unit_square():
    # the trapezoid rule on a grid 10 points per standard deviation is exact to far below 1e-9 for a Gaussian
    # that vanishes at the edges (the modes sit 0.15 = 7.5 standard deviations inside the square)
    p = ring()
    t = torch.linspace(0, 1, 501, dtype=torch.float64)
    xx, yy = torch.meshgrid(t, t, indexing="ij")
    density = p.log_prob(torch.stack([xx.flatten(), yy.flatten()], 1)).exp().reshape(501, 501)
    total = torch.trapezoid(torch.trapezoid(density, t, dim=1), t).item()
    assert abs(total - 1) < 1e-9


@pytest.mark.parametrize("name", TOYS)
def test_score_is_the_gradient_of_log_prob(name):
    p = TOYS[name]
    x = p.sample(20, torch.Generator().manual_seed(2)).double().requires_grad_()
    (grad,) = torch.autograd.grad(p.log_prob(x).sum(), x)
    assert torch.allclose(p.score(x.detach()), grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", TOYS)
def test_samples_have_the_mixture_mean_covariance_and_weights(name):
    p, n = TOYS[name], 200_000
    x, k = p.sample_with_components(n, torch.Generator().manual_seed(3))
    assert x.shape == (n, p.dim) and x.dtype == torch.float32 and k.shape == (n,)
    w = p.weights
    mean = (w[:, None] * p.means).sum(0)
    second = (w[:, None, None] * (p.means[:, :, None] * p.means[:, None, :])).sum(0) + torch.diag(
        torch.full((p.dim,), float((w * p.stds**2).sum()))
    )
    cov = second - mean[:, None] * mean[None, :]
    scale = cov.diagonal().max().sqrt()
    assert torch.allclose(x.double().mean(0), mean, atol=5 * scale / math.sqrt(n))
    assert torch.allclose(torch.cov(x.double().T).reshape(p.dim, p.dim), cov, atol=0.02 * float(scale**2))
    freq = torch.bincount(k, minlength=len(w)).double() / n
    assert torch.allclose(freq, w, atol=5 * math.sqrt(0.25 / n))
    # each point is near the mean of the component it came from, for well-separated modes
    if name == "ring8":
        nearest, dist = p.nearest_component(x)
        assert torch.equal(nearest, k) and dist.max() < 7


def test_ring_geometry_and_split():
    p = ring(8, radius=0.35, std=0.02)
    assert p.means.shape == (8, 2) and torch.allclose(p.weights, torch.full((8,), 1 / 8, dtype=torch.float64))
    assert torch.allclose((p.means - 0.5).norm(dim=1), torch.full((8,), 0.35, dtype=torch.float64))
    assert torch.allclose(p.means[0], torch.tensor([0.85, 0.5], dtype=torch.float64))
    s = p.split(1000, seed=4)
    assert s.x.shape == (1000, 2) and s.image_shape == (2,) and s.name == "toy/ring8/seed4"
    assert torch.equal(s.x, p.split(1000, seed=4).x) and not torch.equal(s.x, p.split(1000, seed=5).x)
    assert s.signature()["n"] == 1000
    assert 0 < s.x.min() and s.x.max() < 1  # a sigmoid generator can reach all of it


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError):
        mixture_1d([0.0, 1.0], [1.0, 0.0])
    with pytest.raises(ValueError):
        mixture_1d([0.0], [1.0], [-1.0])


# --- mode counting ----------------------------------------------------------------------------------------------


def _points_at(p: GaussianMixture, k: int, radii: list[float], seed: int = 0) -> torch.Tensor:
    """Points at the given standardized distances from component k's mean, in random directions: [len(radii), dim]."""
    u = torch.randn(len(radii), p.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True)
    return p.means[k] + torch.tensor(radii, dtype=torch.float64)[:, None] * p.stds[k] * u


def test_mode_coverage_counts_constructed_points():
    p = ring()  # 8 modes, 13 standard deviations apart: a point within 3.5 of one is far from every other
    x = torch.cat(
        [
            _points_at(p, 0, [0.0, 1.0, 2.99] * 10),  # 30 high-quality points at mode 0
            _points_at(p, 3, [2.5]),  # one at mode 3
            _points_at(p, 5, [3.01] * 20),  # 20 just outside mode 5's radius
            torch.full((49, 2), 0.5, dtype=torch.float64),  # the ring's centre: 17.5 standard deviations from all
        ]
    )  # 100 points
    c = p.mode_coverage(x)
    expected = torch.zeros(8, dtype=torch.long)
    expected[0], expected[3] = 30, 1
    assert torch.equal(c.counts, expected) and c.n == 100
    assert c.high_quality_share == 31 / 100
    # default min_share = 1/80 of 100 samples: mode 0 (30) is covered, mode 3 (1 sample) is not
    assert c.min_share == 1 / 80 and c.covered.tolist() == [True] + [False] * 7 and c.modes_covered == 1
    assert p.mode_coverage(x, min_share=0).modes_covered == 2  # VEEGAN's rule: one sample is enough
    assert p.mode_coverage(x, min_share=0.31).modes_covered == 0  # 30 < 31 samples
    # a wider radius takes in the 20 points at 3.01 standard deviations, and mode 5 with them
    wide = p.mode_coverage(x, radius=3.02)
    assert wide.counts[5] == 20 and wide.modes_covered == 2 and wide.high_quality_share == 51 / 100


def test_mode_coverage_assigns_by_standardized_distance():
    # a narrow component beside a wide one: 4.0 is nearer to 5.0 in plain distance, but 4 and 10 standard
    # deviations from the two means, so it is of no quality; 2.5 belongs to the wide one, 4.75 to the narrow one
    p = mixture_1d([0.0, 5.0], [1.0, 0.1])
    c = p.mode_coverage(torch.tensor([4.0, 2.5, 4.75, 4.75]), min_share=0)
    assert c.counts.tolist() == [1, 2] and c.high_quality_share == 3 / 4
    assert torch.allclose(
        p.standardized_distances(torch.tensor([4.0])), torch.tensor([[4.0, 10.0]], dtype=torch.float64)
    )


def test_mode_coverage_of_the_mixtures_own_samples_follows_the_chi_square_law():
    # for separated isotropic modes, a sample of component k is high quality iff ||eps|| <= 3, eps ~ N(0, I_dim):
    # probability P(chi2_dim <= 9); and every mode is covered, with its weight's share
    p, n = ring(), 100_000
    x, k = p.sample_with_components(n, torch.Generator().manual_seed(5))
    c = p.mode_coverage(x)
    expected = stats.chi2.cdf(9, df=2)  # 1 - exp(-9/2) = 0.98889
    assert abs(c.high_quality_share - expected) < 5 * math.sqrt(expected * (1 - expected) / n)
    assert c.modes_covered == 8
    share = c.counts.double() / n  # [8], each mode's weight times the high-quality probability
    assert torch.allclose(share, p.weights * expected, atol=5 * math.sqrt(0.125 / n))
    # a collapsed "generator" that draws from one mode only covers one
    one = p.means[2] + p.stds[2] * torch.randn(2500, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    assert (
        p.mode_coverage(one).modes_covered == 1 and p.mode_coverage(one).counts[2] == p.mode_coverage(one).counts.sum()
    )


def test_mode_coverage_rejects_bad_input():
    p = ring()
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        p.mode_coverage(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="min_share"):
        p.mode_coverage(torch.zeros(5, 2), min_share=1.5)
    with pytest.raises(ValueError, match="no samples"):
        p.mode_coverage(torch.zeros(0, 2))
