"""Tests of dgmlab.models.dcgan: shapes and layouts (flat and image batches give the same logits), the paper's
architecture rules (batch norm where it belongs, none in D's input layer or with d_batch_norm=False), the
initialisation, gradients to every parameter, a short run through the unchanged GANStep, and a checkpoint round
trip."""

import copy
import math

import pytest
import torch
from torch import nn

from dgmlab.checkpoint import load_checkpoint, save_checkpoint
from dgmlab.data import Split
from dgmlab.models.dcgan import DCDiscriminator, DCGANConfig, DCGenerator
from dgmlab.models.gan import (
    GANStep,
    GANTrainConfig,
    discriminator_loss,
    discriminator_step,
    generator_loss_nonsaturating,
)
from dgmlab.train import fit, train_gan

SMALL = DCGANConfig(z_dim=8, g_features=4, d_features=4)


def small(config=SMALL, seed=0):
    torch.manual_seed(seed)
    return DCGenerator(config), DCDiscriminator(config)


@pytest.mark.parametrize("config", [SMALL, DCGANConfig(), DCGANConfig(channels=3, image_size=16, d_batch_norm=False)])
def test_shapes_and_ranges(config):
    G, D = small(config)
    x = G(torch.randn(5, config.z_dim))
    assert x.shape == (5, config.x_dim) and config.x_dim == config.channels * config.image_size**2
    assert x.min() >= 0 and x.max() <= 1
    assert D(x).shape == (5,)
    s = G.sample(7, generator=torch.Generator().manual_seed(1))
    assert s.shape == (7, config.x_dim) and G.training  # sample() restores the mode


def test_flat_and_image_batches_give_the_same_logits():
    G, D = small()
    D.eval()
    x = torch.rand(6, 784, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(D(x), D(x.view(6, 1, 28, 28)), rtol=0, atol=0)
        # the flat layout is the row-major image: D sees the digit upright, as Split.images() shows it
        torch.testing.assert_close(D.net[0](x.view(6, 1, 28, 28)), D.net[0](x.reshape(6, 28, 28)[:, None]))


def test_a_wrong_image_size_is_refused_clearly():
    _, D = small()
    with pytest.raises(ValueError, match=r"expects images \[B, 784\] or \[B, 1, 28, 28\], got shape \(3, 100\)"):
        D(torch.rand(3, 100))


@pytest.mark.parametrize("bad", [dict(image_size=30), dict(z_dim=0), dict(g_features=-1)])
def test_config_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match="DCGANConfig"):
        DCGANConfig(**bad)


def test_batch_norm_follows_the_papers_rules():
    G, D = small()
    convs_g = [m for m in G.net if isinstance(m, nn.ConvTranspose2d)]
    # G: batch norm after the projection and after every transposed convolution but the output layer
    assert sum(isinstance(m, nn.BatchNorm2d) for m in G.net) == 2
    assert isinstance(G.net[-2], nn.Sigmoid) and G.net[-3] is convs_g[-1]
    # D: none on the input layer (the first module after it is the activation), one in the second layer
    assert isinstance(D.net[0], nn.Conv2d) and isinstance(D.net[1], nn.LeakyReLU)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in D.net) == 1
    _, critic = small(DCGANConfig(z_dim=8, g_features=4, d_features=4, d_batch_norm=False))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in critic.modules())
    # without batch norm every output depends on its own input only: a WGAN-GP critic needs that
    x = torch.rand(4, 784)
    critic.train()
    torch.testing.assert_close(critic(x)[:2], critic(x[:2]), rtol=1e-6, atol=1e-6)


def test_the_initialisation_is_the_papers():
    torch.manual_seed(0)
    G = DCGenerator(DCGANConfig(g_features=32))
    conv = G.net[4].weight  # 64 x 32 x 4 x 4 weights
    assert conv.std().item() == pytest.approx(0.02, rel=0.03) and abs(conv.mean().item()) < 1e-3
    bn = G.net[2]
    assert (bn.weight - 1).abs().max() < 0.1 and torch.equal(bn.bias, torch.zeros_like(bn.bias))


def test_he_initialisation_gives_a_critic_unit_scale_gradients_on_digits():
    """What the config's docstring promises: the paper's init leaves a critic nearly flat, He's does not."""
    from dgmlab.data import load_mnist
    from dgmlab.models.wgan import gradient_norm

    x = load_mnist("val", source="embedded", verbose=False).x[:200]
    norms = {}
    for init in ("dcgan", "he"):
        torch.manual_seed(0)
        f = DCDiscriminator(DCGANConfig(d_batch_norm=False, d_init=init))
        norms[init] = gradient_norm(f, x, create_graph=False).mean().item()
    assert norms["dcgan"] < 0.05 and 0.4 < norms["he"] < 2.5, norms
    with pytest.raises(ValueError, match="d_init must be one of"):
        DCGANConfig(d_init="xavier")


def test_gradients_reach_every_parameter():
    G, D = small()
    x_fake = G(torch.randn(6, SMALL.z_dim))
    (discriminator_loss(D(torch.rand(6, 784)), D(x_fake)) + generator_loss_nonsaturating(D(x_fake))).backward()
    for name, p in [*G.named_parameters(), *D.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_a_batch_norm_discriminator_sees_real_and_fake_images_as_separate_batches():
    """As in DCGAN, each batch is normalised by its own statistics in the discriminator step (the generator step
    shows D an all-fake batch too); a mixed batch would give other probabilities."""
    G, D = small()
    D0 = copy.deepcopy(D).train()
    x, x_fake = 0.8 + 0.2 * torch.rand(8, 784), G(torch.randn(8, SMALL.z_dim)).detach()  # bright vs grey images
    terms = discriminator_step(D, torch.optim.SGD(D.parameters(), lr=0.0), x, x_fake)
    with torch.no_grad():
        d_real, d_fake = torch.sigmoid(D0(x)).mean(), torch.sigmoid(D0(x_fake)).mean()
        mixed = torch.sigmoid(D0(torch.cat([x, x_fake])))[:8].mean()
    torch.testing.assert_close(terms["d_real"], d_real)
    torch.testing.assert_close(terms["d_fake"], d_fake)
    assert abs(float(mixed) - float(d_real)) > 1e-4  # a hundred times the tolerance above


def test_a_short_run_through_the_unchanged_gan_step():
    G, D = small()
    x = torch.rand(65, 784, generator=torch.Generator().manual_seed(0))  # a last batch of one image
    train = Split(x, torch.zeros(65, dtype=torch.long), "tensor", "tensor")
    g0 = [p.clone() for p in G.parameters()]
    step = GANStep(G, D, GANTrainConfig(epochs=2, batch_size=32, device="cpu", label_smoothing=0.9))
    history = fit(step, train, val=train, progress=False)
    assert len(history) == 2
    assert all(math.isfinite(v) for row in history for k, v in row.items() if k.startswith(("train_", "val_")))
    assert not any(torch.equal(a, b) for a, b in zip(g0, G.parameters()))
    # train_gan checks the data's shape against the convolutional config too
    with pytest.raises(ValueError, match=r"shape \[N, 784\]"):
        train_gan(G, D, torch.rand(4, 100), GANTrainConfig(epochs=1, device="cpu"), progress=False)


def test_checkpoint_round_trip(tmp_path):
    G, D = small(DCGANConfig(z_dim=8, g_features=4, d_features=4, d_batch_norm=False))
    G.train()
    G(torch.randn(16, 8))  # move the batch-norm statistics away from their initial values
    path = save_checkpoint(tmp_path / "dcgan.pt", {"G": G, "D": D}, train_config=GANTrainConfig())
    loaded = load_checkpoint(path)
    assert type(loaded.modules["G"]) is DCGenerator and type(loaded.modules["D"]) is DCDiscriminator
    assert loaded.modules["D"].config == D.config
    g = torch.Generator().manual_seed(3)
    torch.testing.assert_close(loaded.modules["G"].sample(5, g), G.sample(5, torch.Generator().manual_seed(3)))
    x = torch.rand(3, 784)
    D.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.modules["D"](x), D(x), rtol=0, atol=0)
