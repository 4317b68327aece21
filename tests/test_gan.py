"""Tests of dgmlab.models.gan: shapes, the losses against their definitions, gradients. The steps and training
runs are tested with the loop, in test_train.py."""

import math

import pytest
import torch

from dgmlab.models.gan import (
    Discriminator,
    GANConfig,
    GANTrainConfig,
    Generator,
    discriminator_loss,
    generator_loss_nonsaturating,
    generator_loss_saturating,
)

SMALL = GANConfig(z_dim=8, g_hidden=(32,), d_hidden=(32,))


@pytest.mark.parametrize("config", [SMALL, GANConfig(batch_norm=False, dropout=0.0), GANConfig()])
def test_shapes_and_ranges(config):
    torch.manual_seed(0)
    G, D = Generator(config), Discriminator(config)
    x = G(torch.randn(5, config.z_dim))
    assert x.shape == (5, config.x_dim)
    assert x.min() >= 0 and x.max() <= 1
    assert D(x).shape == (5,)
    s = G.sample(7, generator=torch.Generator().manual_seed(1))
    assert s.shape == (7, config.x_dim) and G.training  # sample() restores the mode


def test_config_rejects_bad_sizes():
    with pytest.raises(ValueError):
        GANConfig(z_dim=0)
    with pytest.raises(ValueError):
        GANTrainConfig(lr=0)


def _naive_d_loss(real, fake):
    return -(torch.log(torch.sigmoid(real)).mean() + torch.log(1 - torch.sigmoid(fake)).mean())


def test_losses_match_their_definitions_for_moderate_logits():
    g = torch.Generator().manual_seed(0)
    real, fake = (
        torch.randn(64, generator=g, dtype=torch.float64) * 3,
        torch.randn(32, generator=g, dtype=torch.float64) * 3,
    )
    assert torch.allclose(discriminator_loss(real, fake), _naive_d_loss(real, fake))
    assert torch.allclose(generator_loss_nonsaturating(fake), -torch.log(torch.sigmoid(fake)).mean())
    assert torch.allclose(generator_loss_saturating(fake), torch.log(1 - torch.sigmoid(fake)).mean())


def test_undecided_discriminator_costs_two_log_two():
    assert discriminator_loss(torch.zeros(4), torch.zeros(9)).item() == pytest.approx(2 * math.log(2))


def test_losses_are_exact_for_confident_logits():
    # the naive form gives inf here; the softplus form gives the exact values
    assert not torch.isfinite(_naive_d_loss(torch.tensor([-200.0]), torch.tensor([200.0])))
    assert discriminator_loss(torch.tensor([-200.0]), torch.tensor([200.0])).item() == pytest.approx(400.0)
    assert generator_loss_nonsaturating(torch.tensor([-150.0])).item() == pytest.approx(150.0)


def test_nonsaturating_gradient_survives_where_minimax_vanishes():
    fake = torch.full((10,), -30.0, requires_grad=True)
    generator_loss_nonsaturating(fake).backward()
    assert torch.allclose(fake.grad, torch.full((10,), -0.1), atol=1e-6)  # -sigmoid(30)/B
    fake2 = torch.full((10,), -30.0, requires_grad=True)
    generator_loss_saturating(fake2).backward()
    assert fake2.grad.abs().max() < 1e-12


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    G, D = Generator(SMALL), Discriminator(SMALL)
    x_fake = G(torch.randn(6, SMALL.z_dim))
    (discriminator_loss(D(torch.rand(6, 784)), D(x_fake)) + generator_loss_nonsaturating(D(x_fake))).backward()
    for name, p in [*G.named_parameters(), *D.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
