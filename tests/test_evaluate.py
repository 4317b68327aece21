"""Likelihood estimates: the IWAE bound grows with k and converges to the exact log p(x) of a linear-Gaussian model."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from dgmlab.distributions import log_normal_diag
from dgmlab.evaluate import evaluate_elbo, iwae_log_likelihood, naive_mc_log_likelihood
from dgmlab.models.vae import VAE, VAEConfig


class LinearGaussian(nn.Module):
    """z ~ N(0, I_d), x | z ~ N(W z + b, s^2 I): log p(x) = log N(x | b, W W^T + s^2 I) exactly.

    The encoder is a deliberately imperfect diagonal Gaussian (the true posterior has full covariance), so the
    ELBO is strictly below log p(x).
    """

    def __init__(self, x_dim=5, z_dim=2, s=0.5, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(x_dim, z_dim, generator=g, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(x_dim, generator=g, dtype=torch.float64))
        self.s = s
        self.config = SimpleNamespace(z_dim=z_dim)
        # exact posterior mean map, with a variance that is off on purpose
        cov = torch.linalg.inv(torch.eye(z_dim, dtype=torch.float64) + self.W.T @ self.W / s**2)
        self.A = (cov @ self.W.T / s**2).detach()
        self.post_logvar = torch.log(torch.diagonal(cov)).detach() + 1.5

    def encode(self, x):
        mu = 0.8 * (x - self.b) @ self.A.T
        return mu, self.post_logvar.expand_as(mu)

    def decode(self, z):
        return z @ self.W.T + self.b

    def log_px(self, x, mean):
        return log_normal_diag(x, mean, torch.tensor(2 * math.log(self.s), dtype=x.dtype))

    def exact_log_px(self, x):
        cov = self.W @ self.W.T + self.s**2 * torch.eye(len(self.b), dtype=torch.float64)
        diff = x - self.b
        _, logdet = torch.linalg.slogdet(cov)
        maha = (diff @ torch.linalg.inv(cov) * diff).sum(-1)
        return -0.5 * (len(self.b) * math.log(2 * math.pi) + logdet + maha)

    def sample(self, n, g):
        z = torch.randn(n, self.config.z_dim, generator=g, dtype=torch.float64)
        return self.decode(z) + self.s * torch.randn(n, len(self.b), generator=g, dtype=torch.float64)


@pytest.fixture(scope="module")
def lg():
    model = LinearGaussian().requires_grad_(False)
    x = model.sample(200, torch.Generator().manual_seed(1))
    return model, x, model.exact_log_px(x)


def test_iwae_k1_is_below_the_exact_log_likelihood(lg):
    model, x, exact = lg
    k1 = iwae_log_likelihood(model, x, k=1, generator=torch.Generator().manual_seed(0))
    gap = (exact - k1).mean().item()
    assert gap > 0.05, "the ELBO of an imperfect encoder is strictly below log p(x)"


def test_iwae_approaches_the_exact_value_as_k_grows(lg):
    model, x, exact = lg
    g = torch.Generator().manual_seed(0)
    gaps = [(exact - iwae_log_likelihood(model, x, k=k, generator=g)).mean().item() for k in (1, 10, 100, 3000)]
    assert gaps[0] > 1.0 and gaps[0] > gaps[1] > gaps[2] > abs(gaps[3])
    assert abs(gaps[-1]) < 0.01, f"IWAE with k=3000 should be within 0.01 nats of log p(x), gap {gaps[-1]:.4f}"


def test_naive_monte_carlo_is_consistent_on_a_small_model(lg):
    model, x, exact = lg
    est = naive_mc_log_likelihood(model, x, S=20_000, generator=torch.Generator().manual_seed(0))
    assert (est - exact).abs().mean().item() < 0.05


def test_iwae_increases_with_k_on_a_vae_and_k_fits_in_memory():
    torch.manual_seed(0)
    model = VAE(VAEConfig(hidden_dims=(64,), z_dim=10))
    x = torch.bernoulli(torch.full((20, 784), 0.2), generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    means = [iwae_log_likelihood(model, x, k=k, generator=g).mean().item() for k in (1, 50, 5000)]
    assert means[0] < means[1] < means[2]
    elbo = evaluate_elbo(model, x)
    assert means[0] == pytest.approx(elbo["elbo"], rel=0.02)
    with pytest.raises(ValueError, match="k must be"):
        iwae_log_likelihood(model, x, k=0)


def test_evaluate_elbo_is_deterministic():
    torch.manual_seed(0)
    model = VAE(VAEConfig(hidden_dims=(16,), z_dim=2))
    x = torch.rand(50, 784).round()
    assert evaluate_elbo(model, x) == evaluate_elbo(model, x)


@pytest.mark.parametrize("mode", [True, False], ids=["train", "eval"])
def test_estimators_restore_the_mode_they_found(mode):
    torch.manual_seed(0)
    model = VAE(VAEConfig(hidden_dims=(16,), z_dim=2)).train(mode)
    x = torch.rand(5, 784).round()
    iwae_log_likelihood(model, x, k=3)
    assert model.training is mode
    naive_mc_log_likelihood(model, x, S=3)
    assert model.training is mode
    evaluate_elbo(model, x)
    assert model.training is mode
