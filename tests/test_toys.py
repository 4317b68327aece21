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
