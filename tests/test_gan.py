"""Tests of dgmlab.models.gan: shapes, the losses against their definitions, which player each step updates,
and a short training run."""

import math

import pytest
import torch

from dgmlab.models.gan import (
    Discriminator,
    GANConfig,
    GANSnapshots,
    GANTrainConfig,
    Generator,
    discriminator_loss,
    discriminator_step,
    generator_loss_nonsaturating,
    generator_loss_saturating,
    generator_step,
    train_gan,
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


def _params(m):
    return [p.detach().clone() for p in m.parameters()]


def test_each_step_updates_only_its_player_and_lowers_its_loss():
    torch.manual_seed(0)
    config = GANConfig(z_dim=8, g_hidden=(32,), d_hidden=(32,), batch_norm=False, dropout=0.0)
    G, D = Generator(config), Discriminator(config)
    opt_G, opt_D = torch.optim.Adam(G.parameters(), lr=1e-3), torch.optim.Adam(D.parameters(), lr=1e-3)
    x, z = torch.rand(16, 784), torch.randn(16, 8)
    g0, d0 = _params(G), _params(D)
    d_losses = [discriminator_step(G, D, opt_D, x, z) for _ in range(5)]
    assert all(torch.equal(a, b) for a, b in zip(g0, G.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(d0, D.parameters()))
    assert d_losses[-1] < d_losses[0]
    d1 = _params(D)
    g_losses = [generator_step(G, D, opt_G, z) for _ in range(5)]
    assert all(torch.equal(a, b) for a, b in zip(d1, D.parameters()))
    assert g_losses[-1] < g_losses[0]


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    G, D = Generator(SMALL), Discriminator(SMALL)
    x_fake = G(torch.randn(6, SMALL.z_dim))
    (discriminator_loss(D(torch.rand(6, 784)), D(x_fake)) + generator_loss_nonsaturating(D(x_fake))).backward()
    for name, p in [*G.named_parameters(), *D.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_train_gan_one_epoch_history_and_snapshots():
    torch.manual_seed(0)
    G, D = Generator(SMALL), Discriminator(SMALL)
    snaps = GANSnapshots(epochs=[0, 1], n=4)
    x = torch.rand(100, 784)
    history = train_gan(G, D, x, GANTrainConfig(epochs=1, batch_size=32, device="cpu"), [snaps], progress=False)
    assert len(history) == 1
    assert {"epoch", "d_loss", "g_loss", "d_real", "d_fake", "seconds"} <= set(history[0])
    assert all(math.isfinite(history[0][k]) for k in ("d_loss", "g_loss"))
    assert sorted(snaps.snapshots) == [0, 1] and snaps.snapshots[1].shape == (4, 784)
    assert not torch.equal(snaps.snapshots[0], snaps.snapshots[1])


def test_train_gan_is_reproducible_from_its_seed():
    def run():
        torch.manual_seed(0)  # same initial weights
        G, D = Generator(SMALL), Discriminator(SMALL)
        cfg = GANTrainConfig(epochs=1, batch_size=32, seed=3, device="cpu")
        return train_gan(G, D, torch.rand(64, 784, generator=torch.Generator().manual_seed(0)), cfg, progress=False)

    a, b = run(), run()
    assert a[0]["d_loss"] == b[0]["d_loss"] and a[0]["g_loss"] == b[0]["g_loss"]


def test_train_gan_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="x_train"):
        train_gan(
            Generator(SMALL), Discriminator(SMALL), torch.rand(10, 28, 28), GANTrainConfig(epochs=1), progress=False
        )
