"""dgmlab.zoo.gan_cures: chapter 11's recipes build the networks and steps they name, share one budget, and round
trip through the checkpoint cache (fast mode, tiny networks, an untrained stand-in classifier)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dgmlab import zoo
from dgmlab.models.classifier import Classifier
from dgmlab.models.dcgan import DCDiscriminator, DCGANConfig, DCGenerator
from dgmlab.models.gan import Discriminator, GANConfig, GANStep, GANTrainConfig, Generator
from dgmlab.models.wgan import WGANGPStep, WGANTrainConfig
from dgmlab.zoo import gan_cures

TINY_MLP = GANConfig(z_dim=4, g_hidden=(16,), d_hidden=(16,))
TINY_DC = DCGANConfig(z_dim=4, g_features=4, d_features=4)


@pytest.fixture
def fast_cache(tmp_path, monkeypatch):
    """Fast mode, an empty model cache, and an untrained (fixed) classifier in place of the course's, so that the
    test trains no classifier: the class trace's properties do not depend on how good the classifier is."""
    monkeypatch.setenv("DGMLAB_FAST", "1")
    monkeypatch.setenv("DGMLAB_CACHE", str(tmp_path))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        classifier = Classifier().eval()
    monkeypatch.setattr(gan_cures, "load_classifier", lambda: classifier)
    return tmp_path


def tiny(recipe: gan_cures.GANCureRecipe, **kwargs) -> gan_cures.GANCureRecipe:
    settings = dict(checkpoint=f"test-{recipe.checkpoint}", mlp=TINY_MLP, dcgan=TINY_DC, fast_n_train=96, n_trace=30)
    return dataclasses.replace(recipe, **{**settings, **kwargs})


def test_entries_are_the_three_cures_in_book_order():
    assert "gan_cures" in zoo.FAMILIES
    book_order = ("vae", "gan", "gan_cures", "flow", "rbm", "aae", "cyclegan")
    assert [f for f in book_order if f in zoo.FAMILIES] == list(zoo.FAMILIES)
    assert [e.name for e in gan_cures.ENTRIES] == ["mlp-gan-smoothed", "dcgan", "wgan-gp"]
    for entry in gan_cures.ENTRIES:
        assert zoo.get(entry.name) is entry and entry.chapter == "book/11_gan_training_problems"
        assert entry.sampler is not None and entry.log_likelihood is None  # a GAN has no likelihood
        assert entry.load == gan_cures.RECIPES[entry.name].load


@pytest.mark.parametrize("name", list(gan_cures.RECIPES))
def test_recipes_build_what_they_name_with_one_budget(name, monkeypatch):
    monkeypatch.delenv("DGMLAB_FAST", raising=False)
    recipe = gan_cures.RECIPES[name]
    modules = recipe.build()
    config = recipe.train_config("cpu")
    step = recipe.step(modules, config)
    wgan = recipe.objective == "wgan-gp"
    assert set(modules) == ({"G", "f"} if wgan else {"G", "D"})
    assert isinstance(step, WGANGPStep if wgan else GANStep) and isinstance(
        config, WGANTrainConfig if wgan else GANTrainConfig
    )
    conv = recipe.architecture == "dcgan"
    assert isinstance(modules["G"], DCGenerator if conv else Generator)
    critic = modules["f" if wgan else "D"]
    assert isinstance(critic, DCDiscriminator if conv else Discriminator)
    if wgan:  # the critic is deterministic and per-example: no batch norm, no dropout
        assert not any(
            isinstance(m, torch.nn.modules.batchnorm._BatchNorm | torch.nn.Dropout) for m in critic.modules()
        )
    # the same budget for every variant: epochs, batch size, seed, data
    base = gan_cures.MLP_GAN_BASELINE
    assert (config.epochs, config.batch_size, config.seed) == (base.epochs, base.batch_size, base.seed)
    assert recipe.data().signature() == base.data().signature()
    assert getattr(config, "label_smoothing", 1.0) == (0.9 if name == "mlp-gan-smoothed" else 1.0)


def test_build_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = gan_cures.DCGAN.build(), gan_cures.DCGAN.build()
    assert torch.equal(torch.random.get_rng_state(), state)
    for name in a:
        for pa, pb in zip(a[name].parameters(), b[name].parameters()):
            assert torch.equal(pa, pb)


def test_bad_recipes_are_rejected():
    with pytest.raises(ValueError, match="architecture"):
        gan_cures.GANCureRecipe("x", architecture="resnet")
    with pytest.raises(ValueError, match="objective"):
        gan_cures.GANCureRecipe("x", objective="lsgan")
    with pytest.raises(ValueError, match="label_smoothing"):
        gan_cures.GANCureRecipe("x", objective="wgan-gp", label_smoothing=0.9)


@pytest.mark.parametrize("name", ["mlp-gan-smoothed", "wgan-gp"])
def test_load_trains_once_then_reuses_the_checkpoint(fast_cache, name):
    recipe = tiny(gan_cures.RECIPES[name])
    first = recipe.load(verbose=False)
    path = fast_cache / "checkpoints" / f"{recipe.checkpoint}-fast.pt"
    assert path.is_file()
    # one history row per fast epoch, and the class trace from epoch 0 to the last, each a histogram
    assert len(first.history) == recipe.fast_epochs
    trace = first.extra["class_trace"]
    assert [row["epoch"] for row in trace] == list(range(recipe.fast_epochs + 1))
    for row in trace:
        assert len(row["histogram"]) == 10 and abs(sum(row["histogram"]) - 1) < 1e-12
        # classes holding 1% or more of the samples, and no Frechet distance (the cures' trace gets no real images)
        assert row["classes_covered"] == sum(share >= 0.01 for share in row["histogram"]) and "fd" not in row
    mtime = path.stat().st_mtime_ns
    second = recipe.load(verbose=False)
    assert path.stat().st_mtime_ns == mtime  # not trained again
    for pa, pb in zip(first["G"].parameters(), second["G"].parameters()):
        assert torch.equal(pa, pb)
    x = gan_cures._sampler(second)(7, torch.Generator().manual_seed(0))
    assert x.shape == (7, 784) and x.device.type == "cpu" and 0 < x.min() and x.max() < 1
    assert torch.equal(x, gan_cures._sampler(second)(7, torch.Generator().manual_seed(0)))


def test_the_wgan_gp_critic_starts_with_gradient_norms_near_the_penalty_target():
    # He's initialisation (DCGANConfig(d_init="he")): on digits and samples, the untrained critic's gradient norm is
    # of order 1, where the paper's N(0, 0.02^2) would give about 0.01 and the penalty would dominate the start
    from dgmlab.data import load_mnist
    from dgmlab.models.wgan import gradient_norm, interpolates

    modules = gan_cures.WGAN_GP.build()
    x = load_mnist("train", source="embedded", verbose=False).x[:64]
    x_fake = modules["G"].sample(64, torch.Generator().manual_seed(0))
    norms = gradient_norm(modules["f"], interpolates(x, x_fake, torch.Generator().manual_seed(1)), create_graph=False)
    assert 0.2 < norms.median().item() < 5
