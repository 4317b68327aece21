"""The one sampling rule of every generative model: ``sample(n, generator)`` draws its noise on the CPU generator,
moves it to the model's device, runs in eval mode without gradients and restores the train/eval mode it found;
``reconstruct``/``decode_mean``/``generate`` do the same with their inputs."""

from types import SimpleNamespace

import pytest
import torch

from dgmlab.models.dcgan import DCGANConfig, DCGenerator
from dgmlab.models.gan import GANConfig, Generator
from dgmlab.models.vae import VAE, VAEConfig
from dgmlab.utils import randn


def vae():
    torch.manual_seed(0)
    return VAE(VAEConfig(hidden_dims=(32,), z_dim=3))


def generator():
    torch.manual_seed(0)
    return Generator(GANConfig(z_dim=3, g_hidden=(32,), batch_norm=True))


def dc_generator():
    torch.manual_seed(0)
    return DCGenerator(DCGANConfig(z_dim=3, g_features=4))


def decode(model, z):
    return model.decode_mean(z) if isinstance(model, VAE) else model.generate(z)


@pytest.mark.parametrize("make", [vae, generator, dc_generator], ids=["VAE", "Generator", "DCGenerator"])
@pytest.mark.parametrize("mode", [True, False], ids=["train", "eval"])
def test_sample_follows_the_rule(make, mode):
    model = make()
    model.train(mode)
    a = model.sample(6, torch.Generator().manual_seed(4))
    assert model.training is mode, "the mode is restored"
    assert a.shape == (6, 784) and not a.requires_grad
    # the noise is exactly a standard normal draw of the CPU generator, decoded in eval mode
    z = torch.randn(6, 3, generator=torch.Generator().manual_seed(4))
    model.eval()
    with torch.no_grad():
        reference = model.mean(model.decode(z)) if isinstance(model, VAE) else model(z)
    torch.testing.assert_close(a, reference, rtol=0, atol=0)
    model.train(not mode)
    torch.testing.assert_close(decode(model, z), reference, rtol=0, atol=0)
    assert model.training is (not mode)


@pytest.mark.parametrize("make", [vae, generator, dc_generator], ids=["VAE", "Generator", "DCGenerator"])
def test_a_generator_on_another_device_is_refused_clearly(make):
    model = make()
    fake = SimpleNamespace(device=torch.device("cuda"))  # stands in for a CUDA generator on a machine without one
    with pytest.raises(ValueError, match="draws noise on the CPU"):
        model.sample(2, fake)


def test_reconstruct_restores_the_mode_and_needs_no_grad():
    model = vae().train()
    x = torch.rand(4, 784)
    r = model.reconstruct(x)
    assert model.training and r.shape == (4, 784) and not r.requires_grad


def test_randn_is_the_cpu_draw_moved():
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    torch.testing.assert_close(randn(3, 2, generator=g1, device="cpu"), torch.randn(3, 2, generator=g2))
