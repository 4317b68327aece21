"""The trainer: a one-epoch smoke run, history, snapshots, NaN detection, checkpoints (atomic, exact round trip)."""

import json
import math

import pytest
import torch

from dgmlab.data import load_mnist
from dgmlab.evaluate import evaluate_elbo
from dgmlab.models.vae import VAE, VAEConfig
from dgmlab.train import (
    MODEL_CLASSES,
    CheckpointError,
    NonFiniteLossError,
    SampleSnapshots,
    TrainConfig,
    load_checkpoint,
    load_or_train,
    save_checkpoint,
    train_vae,
)


@pytest.fixture(scope="module")
def data():
    train = load_mnist("train", source="embedded", binarize="dynamic", verbose=False).subset(1000)
    val = load_mnist("val", source="embedded", binarize="dynamic", verbose=False)
    return train, val


def small_vae(seed=0, z_dim=2):
    torch.manual_seed(seed)
    return VAE(VAEConfig(hidden_dims=(128,), z_dim=z_dim))


def test_two_epoch_cpu_smoke_run_improves_the_elbo(data):
    train, val = data
    model = small_vae()
    initial = evaluate_elbo(model, val)["elbo"]
    snaps = SampleSnapshots.before_half_after(2, n=9)
    history = train_vae(model, train, val, TrainConfig(epochs=2, batch_size=100, device="cpu"), [snaps], False)
    assert [row["epoch"] for row in history] == [1, 2]
    for row in history:
        assert set(row) >= {"train_elbo", "train_recon", "train_kl", "val_elbo", "val_recon", "val_kl", "seconds"}
        assert all(math.isfinite(v) for v in row.values())
        assert row["train_elbo"] == pytest.approx(-(row["train_recon"] + row["train_kl"]), rel=1e-6)
    # from about -543 nats (784 log 2) for an untrained decoder, each epoch climbs
    assert initial == pytest.approx(-784 * math.log(2), rel=0.05)
    assert initial + 50 < history[0]["val_elbo"] < history[1]["val_elbo"] < -100
    assert sorted(snaps.images) == [0, 1, 2] and snaps.images[0].shape == (9, 784)
    assert not torch.equal(snaps.images[0], snaps.images[2]), "samples change with training"
    json.dumps(history)  # history is plain data


def test_same_seed_gives_the_same_history(data):
    train, val = data
    cfg = TrainConfig(epochs=1, batch_size=200, device="cpu", seed=3)
    h1 = train_vae(small_vae(), train, val, cfg, progress=False)
    h2 = train_vae(small_vae(), train, val, cfg, progress=False)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(h1) == strip(h2)


def test_nan_loss_is_reported_with_epoch_and_batch(data):
    train, _ = data
    x = train.x.clone()
    x[450] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, batch \d+ of 10.*learning rate"):
        train_vae(small_vae(), x, None, TrainConfig(epochs=1, batch_size=100, device="cpu"), progress=False)


def test_checkpoint_round_trip_is_exact(tmp_path, data):
    train, val = data
    model = small_vae(z_dim=3)
    history = train_vae(model, train, val, TrainConfig(epochs=1, batch_size=250, device="cpu"), progress=False)
    path = save_checkpoint(tmp_path / "run" / "vae.pt", model, history, {"note": "hello", "epochs": 1})
    assert [p.name for p in path.parent.iterdir()] == ["vae.pt"], "no temporary file is left behind"
    loaded, h, extra = load_checkpoint(path)
    assert loaded.config == model.config and h == history and extra == {"note": "hello", "epochs": 1}
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    x = val.x[:10].round()
    torch.testing.assert_close(loaded.reconstruct(x), model.reconstruct(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(MODEL_CLASSES))
def test_every_registered_model_class_round_trips(tmp_path, name):
    import importlib

    module, cls_name = MODEL_CLASSES[name].split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    torch.manual_seed(0)
    model = cls(cls.config_class())
    save_checkpoint(tmp_path / "m.pt", model, [{"epoch": 1}], {"note": "x"})
    loaded, history, extra = load_checkpoint(tmp_path / "m.pt")
    assert type(loaded) is cls and loaded.config == model.config
    assert history == [{"epoch": 1}] and extra == {"note": "x"}
    for (k, v), w in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(v, w), k


def test_a_failed_save_keeps_the_old_checkpoint(tmp_path, data, monkeypatch):
    model = small_vae()
    path = save_checkpoint(tmp_path / "vae.pt", model, [{"epoch": 1}])
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("os.fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, small_vae(seed=9), [{"epoch": 2}])
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["vae.pt"]


def test_bad_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt is not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    good = save_checkpoint(tmp_path / "good.pt", small_vae())
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a dgmlab-checkpoint-v1 file"):
        load_checkpoint(tmp_path / "other.pt")


def test_load_or_train_trains_once_then_loads(tmp_path, data):
    train, val = data
    calls = []

    def fit(model):
        calls.append(1)
        return train_vae(model, train, val, TrainConfig(epochs=1, batch_size=500, device="cpu"), progress=False)

    m1, h1, _ = load_or_train(tmp_path / "c.pt", small_vae, fit, device="cpu")
    m2, h2, _ = load_or_train(tmp_path / "c.pt", small_vae, fit, device="cpu")
    assert len(calls) == 1 and h1 == h2
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    # a different architecture is not silently reused
    load_or_train(tmp_path / "c.pt", lambda: small_vae(z_dim=4), fit, device="cpu")
    assert len(calls) == 2


def test_bad_train_config_is_rejected():
    with pytest.raises(ValueError, match="lr > 0"):
        TrainConfig(lr=0)
