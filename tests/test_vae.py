"""VAE properties: shapes, finite loss, gradients reach every parameter through the reparameterisation, determinism."""

import math

import pytest
import torch

from dgmlab.models.vae import VAE, VAEConfig, elbo_terms, log_likelihood

CONFIGS = [
    VAEConfig(z_dim=2),
    VAEConfig(hidden_dims=(64, 32), z_dim=5, activation="tanh"),
    VAEConfig(hidden_dims=(32,), z_dim=3, likelihood="continuous_bernoulli"),
    VAEConfig(hidden_dims=(32,), z_dim=3, likelihood="gaussian", sigma=0.1),
]


@pytest.fixture
def x():
    return torch.bernoulli(torch.full((6, 784), 0.3), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.likelihood}-z{c.z_dim}")
def test_shapes_and_finite_loss(config, x):
    torch.manual_seed(0)
    model = VAE(config)
    x_logits, mu, logvar, z = model(x)
    assert x_logits.shape == x.shape and mu.shape == logvar.shape == z.shape == (6, config.z_dim)
    terms = model.loss(x)
    assert terms.loss.shape == () and torch.isfinite(terms.loss)
    assert terms.recon.shape == terms.kl.shape == terms.elbo.shape == (6,)
    torch.testing.assert_close(terms.elbo, -(terms.recon + terms.kl))
    assert (terms.kl >= 0).all()
    samples = model.sample(4)
    assert samples.shape == (4, 784) and samples.min() >= 0 and samples.max() <= 1
    assert model.reconstruct(x).shape == x.shape


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.likelihood}-z{c.z_dim}")
def test_gradients_reach_every_parameter(config, x):
    torch.manual_seed(0)
    model = VAE(config)
    model.loss(x).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reached {name}"


def test_the_encoder_gets_its_gradient_through_the_sample(x):
    """Without the KL term, the encoder's only gradient flows through z = mu + sigma * eps into the decoder."""
    torch.manual_seed(0)
    model = VAE(VAEConfig(hidden_dims=(16,), z_dim=2))
    x_logits, mu, logvar, z = model(x)
    recon = -log_likelihood(x, x_logits).mean()
    recon.backward()
    assert model.to_mu.weight.grad.abs().sum() > 0 and model.to_logvar.weight.grad.abs().sum() > 0
    # and the sample really is mu + exp(logvar/2) * eps for the eps drawn
    g = torch.Generator().manual_seed(5)
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(VAE.reparameterize(mu, logvar, g), mu + torch.exp(0.5 * logvar) * eps)


def test_same_seed_same_results_on_cpu(x):
    def run():
        torch.manual_seed(123)
        model = VAE(VAEConfig(hidden_dims=(32,), z_dim=4))
        opt = torch.optim.Adam(model.parameters())
        g = torch.Generator().manual_seed(7)
        for _ in range(3):
            loss = model.loss(x, generator=g).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        return loss.item(), [p.detach().clone() for p in model.parameters()]

    (l1, p1), (l2, p2) = run(), run()
    assert l1 == l2 and all(torch.equal(a, b) for a, b in zip(p1, p2))


def test_untrained_elbo_is_near_784_log2():
    """With logits near zero every pixel costs about log 2 nats: the sanity check the course asks for (Q1.13)."""
    x = torch.bernoulli(torch.full((64, 784), 0.5), generator=torch.Generator().manual_seed(0))
    zeros = torch.zeros(64, 784)
    terms = elbo_terms(x, zeros, torch.zeros(64, 2), torch.zeros(64, 2))
    assert terms.recon.mean().item() == pytest.approx(784 * math.log(2))
    assert terms.kl.abs().max().item() == 0


def test_beta_weights_only_the_kl():
    x, x_logits = torch.rand(5, 10).round(), torch.randn(5, 10)
    mu, logvar = torch.randn(5, 3), torch.randn(5, 3)
    t1, t4 = elbo_terms(x, x_logits, mu, logvar, beta=1), elbo_terms(x, x_logits, mu, logvar, beta=4)
    torch.testing.assert_close(t4.loss - t1.loss, 3 * t1.kl.mean())
    torch.testing.assert_close(t4.elbo, t1.elbo)


def test_gaussian_reconstruction_is_a_scaled_squared_error():
    x, x_logits, sigma = torch.rand(4, 784, dtype=torch.float64), torch.randn(4, 784, dtype=torch.float64), 0.1
    sq = ((x - torch.sigmoid(x_logits)) ** 2).sum(-1)
    expected = -sq / (2 * sigma**2) - 784 * math.log(sigma * math.sqrt(2 * math.pi))
    torch.testing.assert_close(log_likelihood(x, x_logits, "gaussian", sigma), expected)


@pytest.mark.parametrize(
    "kwargs,match",
    [({"likelihood": "poisson"}, "likelihood"), ({"z_dim": 0}, "positive"), ({"activation": "gelu"}, "activation"),
     ({"sigma": 0.0}, "sigma")],
)
def test_bad_configs_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VAEConfig(**kwargs)


def test_keyword_overrides_apply_to_the_given_config():
    model = VAE(VAEConfig(hidden_dims=(16,)), z_dim=5)
    assert model.config.z_dim == 5 and model.config.hidden_dims == (16,) and model.to_mu.out_features == 5
    assert VAE(z_dim=3).config.z_dim == 3
    with pytest.raises(TypeError, match="unknown config fields"):
        VAE(VAEConfig(), latent=5)
    with pytest.raises(ValueError, match="positive"):
        VAE(VAEConfig(), z_dim=0)
