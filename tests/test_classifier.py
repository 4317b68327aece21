"""Tests of dgmlab.models.classifier: it trains on the embedded subset, is accurate, and caches atomically."""

import pytest
import torch

from dgmlab.models import classifier as clf


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DGMLAB_CACHE", str(tmp_path))
    return tmp_path


def test_trains_accurately_then_loads_from_cache(cache, monkeypatch):
    model = clf.load_classifier()
    acc = model.info["test_accuracy"]
    assert acc > 0.85, f"test accuracy {acc:.3f} on the 500 embedded test images"
    files = list(cache.glob("classifier-*.pt"))
    assert len(files) == 1 and not list(cache.glob(".*.tmp"))  # the atomic write left no temporary file

    def no_training(*a, **k):
        raise AssertionError("the cached weights should be used")

    monkeypatch.setattr(clf, "train_classifier", no_training)
    again = clf.load_classifier()
    x = torch.rand(8, 784)
    assert torch.equal(again.predict(x), model.predict(x))
    assert again.info["test_accuracy"] == acc
    probs = again.probabilities(x)
    assert probs.shape == (8, 10) and torch.allclose(probs.sum(-1), torch.ones(8))


def test_damaged_cache_is_rebuilt(cache):
    path = clf._cache_path(clf.ClassifierConfig(epochs=1))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a checkpoint")
    model = clf.load_classifier(clf.ClassifierConfig(epochs=1))
    assert model.info["n_train"] == 4000
    assert torch.load(path, weights_only=True)["config"]["epochs"] == 1


def test_training_is_reproducible():
    a, _ = clf.train_classifier(clf.ClassifierConfig(epochs=1))
    b, _ = clf.train_classifier(clf.ClassifierConfig(epochs=1))
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k
