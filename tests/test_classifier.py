"""Tests of the course's MNIST classifier: it trains on the data it is given, is accurate, caches through
load_or_train, and its prediction helpers restore the mode."""

import dataclasses

import pytest
import torch

from dgmlab import checkpoint, train
from dgmlab.data import load_mnist
from dgmlab.models.classifier import Classifier, ClassifierConfig
from dgmlab.step import TrainConfig


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DGMLAB_CACHE", str(tmp_path))
    return tmp_path


def test_trains_accurately_then_loads_from_cache(cache, monkeypatch):
    model = train.load_classifier()
    acc = model.info["test_accuracy"]
    assert acc > 0.85, f"test accuracy {acc:.3f} on the 500 embedded test images"
    files = list(cache.glob("checkpoints/classifier-*.pt"))
    assert len(files) == 1 and not list(cache.rglob(".*.tmp"))  # the atomic write left no temporary file
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("the cached weights should be used"))
    again = train.load_classifier()
    x = torch.rand(8, 784)
    assert torch.equal(again.predict(x), model.predict(x))
    assert again.info["test_accuracy"] == acc
    probs = again.probabilities(x)
    assert probs.shape == (8, 10) and torch.allclose(probs.sum(-1), torch.ones(8))


def test_the_classifier_is_trained_on_the_data_passed_in(cache):
    """Trained on 0s and 1s only, it predicts nothing else; a different training set is a different cache entry."""
    full = load_mnist("train", source="embedded", verbose=False)
    keep = full.y < 2
    few = dataclasses.replace(full, x=full.x[keep], y=full.y[keep], name="mnist/train-0-1")
    model = train.load_classifier(few, config=TrainConfig(epochs=2, device="cpu"))
    test = load_mnist("test", source="embedded", verbose=False)
    assert set(model.predict(test.x).tolist()) <= {0, 1}
    assert len(list(cache.glob("checkpoints/classifier-*.pt"))) == 1
    ck = checkpoint.load_checkpoint(next(cache.glob("checkpoints/classifier-*.pt")))
    assert ck.data["n"] == int(keep.sum()) and ck.train_config["epochs"] == 2


def test_damaged_cache_is_rebuilt(cache):
    config = TrainConfig(epochs=1, device="cpu")
    model = train.load_classifier(config=config)
    path = next(cache.glob("checkpoints/classifier-*.pt"))
    path.write_bytes(b"not a checkpoint")
    again = train.load_classifier(config=config)
    assert checkpoint.load_checkpoint(path).train_config["epochs"] == 1
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_training_is_reproducible_and_leaves_the_global_rng_alone():
    data = load_mnist("train", source="embedded", verbose=False).subset(500)
    state = torch.random.get_rng_state()
    a, _ = train.train_classifier(data, TrainConfig(epochs=1, device="cpu"))
    b, _ = train.train_classifier(data, TrainConfig(epochs=1, device="cpu"))
    assert torch.equal(state, torch.random.get_rng_state())
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k


def test_helpers_restore_the_mode_and_features_are_the_hidden_layer():
    torch.manual_seed(0)
    model = Classifier(ClassifierConfig(hidden=16)).train()
    x = torch.rand(5, 784)
    h = model.features(x)
    assert model.training and h.shape == (5, 16) and (h >= 0).all()
    with torch.no_grad():
        torch.testing.assert_close(model.net[-1](h), model(x))  # the output layer applied to the features
    model.predict(x), model.probabilities(x)
    assert model.training
