"""dgmlab.zoo.gan: the MLP GAN's entry, and its recipe's checkpoint round trip (fast mode, a tiny config)."""

from __future__ import annotations

import pytest
import torch

from dgmlab import zoo
from dgmlab.checkpoint import Checkpoint
from dgmlab.models.classifier import Classifier
from dgmlab.models.gan import GANConfig, Generator
from dgmlab.zoo import gan as zoo_gan

TINY = GANConfig(z_dim=4, g_hidden=(16,), d_hidden=(16,))


@pytest.fixture
def fast_cache(tmp_path, monkeypatch):
    """Fast mode, an empty model cache, and an untrained (but fixed) classifier instead of the course's, so the
    test does not train one: the trace's properties do not depend on how good the classifier is."""
    monkeypatch.setenv("DGMLAB_FAST", "1")
    monkeypatch.setenv("DGMLAB_CACHE", str(tmp_path))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        classifier = Classifier().eval()
    classifier.info = {"test_accuracy": 0.5}
    monkeypatch.setattr(zoo_gan, "load_classifier", lambda: classifier)
    return tmp_path, classifier


def tiny_recipe(**kwargs) -> zoo_gan.GANRecipe:
    settings = dict(epochs=50, fast_epochs=2, n_snapshot=6, n_trace=40)
    settings.update(kwargs)
    return zoo_gan.GANRecipe("test-tiny-gan", TINY, **settings)


def test_entry_is_registered_after_the_vaes():
    assert "gan" in zoo.FAMILIES
    book_order = ("vae", "gan", "gan_cures", "flow", "rbm", "aae", "cyclegan")
    assert [f for f in book_order if f in zoo.FAMILIES] == list(zoo.FAMILIES)
    entry = zoo.get("mlp-gan")
    assert entry.chapter == "book/10_gan_mnist" and entry.sampler is not None
    assert entry.log_likelihood is None and entry.log_likelihood_kind is None  # a GAN has no likelihood
    assert entry.load == zoo_gan.MLP_GAN.load


def test_snapshot_epochs_and_fast_mode(monkeypatch):
    recipe = tiny_recipe(epochs=24, fast_epochs=5)
    monkeypatch.delenv("DGMLAB_FAST", raising=False)
    assert recipe.snapshot_epochs() == (0, 12, 24) and recipe.train_config().epochs == 24
    monkeypatch.setenv("DGMLAB_FAST", "1")
    assert recipe.snapshot_epochs() == (0, 2, 5) and recipe.train_config().epochs == 5


def test_build_is_seeded_and_leaves_the_global_rng_alone():
    recipe = tiny_recipe()
    state = torch.random.get_rng_state()
    a, b = recipe.build(), recipe.build()
    assert torch.equal(torch.random.get_rng_state(), state)
    for name in ("G", "D"):
        for p, q in zip(a[name].parameters(), b[name].parameters()):
            assert torch.equal(p, q)


def test_round_trip_trains_once_and_records_snapshots_and_trace(fast_cache, monkeypatch):
    tmp_path, classifier = fast_cache
    recipe = tiny_recipe()
    ckpt = recipe.load(device="cpu", verbose=False)
    assert (tmp_path / "checkpoints" / "test-tiny-gan-fast.pt").is_file()  # fast mode's own checkpoint
    assert len(ckpt.history) == 2 and ckpt.train_config["epochs"] == 2
    G = ckpt["G"]

    # the snapshots are the trained G's samples of the same noise (seed 0): the last one is what the saved
    # weights generate now, and the first is what a freshly built, untrained G generates
    snaps = ckpt.extra["snapshots"]
    assert sorted(snaps) == [0, 1, 2] and all(s.shape == (6, 784) for s in snaps.values())
    assert torch.allclose(snaps[2], G.sample(6, torch.Generator().manual_seed(0)), atol=1e-6)
    untrained = recipe.build()["G"]
    assert torch.allclose(snaps[0], untrained.sample(6, torch.Generator().manual_seed(0)), atol=1e-6)
    assert not torch.allclose(snaps[0], snaps[2], atol=1e-3)  # training changed G

    # the trace: one row per epoch, 0 (before training) to the end, each measured on the noise of seed 1
    trace = ckpt.extra["trace"]
    assert [row["epoch"] for row in trace] == [0, 1, 2]
    x_end = G.sample(40, torch.Generator().manual_seed(1))
    top = classifier.probabilities(x_end).max(1).values
    assert trace[-1]["confidence"] == pytest.approx(top.mean().item(), abs=1e-6)
    assert trace[-1]["confident_share"] == pytest.approx((top >= 0.9).double().mean().item())
    for row in trace:
        assert 0.1 <= row["confidence"] <= 1 and 0 <= row["confident_share"] <= 1
        assert 1 <= row["classes_covered"] <= 10 and row["fd"] > 0
    assert ckpt.extra["classifier_test_accuracy"] == 0.5

    # a second load reuses the checkpoint: it must not train again
    def no_training(*args, **kwargs):
        raise AssertionError("the cached checkpoint was not reused")

    monkeypatch.setattr(zoo_gan, "fit", no_training)
    again = recipe.load(device="cpu", verbose=False)
    for p, q in zip(G.parameters(), again["G"].parameters()):
        assert torch.equal(p, q)
    assert torch.equal(again.extra["snapshots"][2], snaps[2]) and again.extra["trace"] == trace


def test_sampler_shape_range_device_and_determinism():
    ckpt = Checkpoint({"G": Generator(TINY).eval()})
    G = ckpt["G"]
    G.train()  # the sampler must not depend on, or change, the mode it finds
    sample = zoo.get("mlp-gan").sampler(ckpt)
    x = sample(7, torch.Generator().manual_seed(3))
    assert x.shape == (7, 784) and x.device.type == "cpu" and x.dtype == torch.float32
    assert 0 < x.min() and x.max() < 1  # the generator's sigmoid
    assert torch.equal(x, sample(7, torch.Generator().manual_seed(3)))
    assert not torch.allclose(x, sample(7, torch.Generator().manual_seed(4)))
    assert G.training
    # the same images as the generator applied to the noise of that seed, in eval mode
    z = torch.randn(7, TINY.z_dim, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(x, G.generate(z))
