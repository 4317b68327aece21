"""Checkpoints of model groups: exact round trips of every registered class, atomic writes, clear errors, and
load_or_train reusing a checkpoint only when the model configs, the training config and the data all match."""

import importlib

import pytest
import torch

from dgmlab.checkpoint import (
    CHECKPOINT_FORMAT,
    MODEL_CLASSES,
    CheckpointError,
    load_checkpoint,
    load_or_train,
    save_checkpoint,
)
from dgmlab.data import load_mnist
from dgmlab.models.gan import Discriminator, GANConfig, GANStep, GANTrainConfig, Generator
from dgmlab.models.vae import VAE, VAEConfig, VAETrainConfig
from dgmlab.train import fit, train_vae

SMALL_GAN = GANConfig(z_dim=8, g_hidden=(32,), d_hidden=(32,))


@pytest.fixture(scope="module")
def train():
    return load_mnist("train", source="embedded", binarize="dynamic", verbose=False).subset(500)


def small_vae(seed=0, z_dim=2):
    torch.manual_seed(seed)
    return VAE(VAEConfig(hidden_dims=(64,), z_dim=z_dim))


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_trained_gan_group_round_trips_exactly(tmp_path, train):
    torch.manual_seed(0)
    G, D = Generator(SMALL_GAN), Discriminator(SMALL_GAN)
    config = GANTrainConfig(epochs=1, batch_size=100, device="cpu")
    history = fit(GANStep(G, D, config), train, progress=False)
    path = save_checkpoint(tmp_path / "run" / "gan.pt", {"G": G, "D": D}, history, config, train, {"note": "hi"})
    assert [p.name for p in path.parent.iterdir()] == ["gan.pt"], "no temporary file is left behind"
    ck = load_checkpoint(path)
    assert sorted(ck.modules) == ["D", "G"] and isinstance(ck["G"], Generator) and isinstance(ck["D"], Discriminator)
    assert same_weights(ck["G"], G) and same_weights(ck["D"], D)
    assert ck["G"].config == SMALL_GAN and not ck["G"].training
    assert ck.history == history and ck.extra == {"note": "hi"}
    assert ck.train_config["lr"] == 2e-4 and tuple(ck.train_config["betas"]) == (0.5, 0.999)
    assert ck.data == {"name": "mnist/train", "source": "embedded", "n": 500, "binarize": "dynamic"}
    z = torch.randn(5, 8)
    torch.testing.assert_close(ck["G"].generate(z), G.generate(z), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match=r"holds \['D', 'G'\]"):
        _ = ck.model
    with pytest.raises(KeyError, match="no module 'E'"):
        ck["E"]


@pytest.mark.parametrize("name", sorted(MODEL_CLASSES))
def test_every_registered_model_class_round_trips(tmp_path, name):
    module, cls_name = MODEL_CLASSES[name].split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    torch.manual_seed(0)
    model = cls(cls.config_class())
    save_checkpoint(tmp_path / "m.pt", model, [{"epoch": 1}], extra={"note": "x"})
    ck = load_checkpoint(tmp_path / "m.pt")
    assert type(ck.model) is cls and ck.model.config == model.config and same_weights(ck.model, model)
    assert ck.history == [{"epoch": 1}] and ck.extra == {"note": "x"} and ck.train_config is None


def test_a_checkpoint_loads_without_unpickling_code(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", small_vae(), train_config=VAETrainConfig(beta=4.0))
    payload = torch.load(path, weights_only=True)  # would raise on anything but plain data
    assert payload["format"] == CHECKPOINT_FORMAT and payload["train_config"]["beta"] == 4.0


def test_a_failed_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "vae.pt", small_vae(), [{"epoch": 1}])
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
    with pytest.raises(CheckpointError, match="not written by dgmlab"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"format": "dgmlab-checkpoint-v1", "model_class": "VAE"}, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="v1 file from an older dgmlab.*retrain"):
        load_checkpoint(tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="cannot checkpoint a Linear"):
        save_checkpoint(tmp_path / "lin.pt", torch.nn.Linear(2, 2))


def test_load_or_train_reuses_only_what_matches(tmp_path, train, capsys):
    calls = []
    path = tmp_path / "c.pt"

    def run(build=small_vae, config=None, data=train):
        config = config or VAETrainConfig(epochs=1, batch_size=250, device="cpu")

        def train_fn(model):
            calls.append(1)
            return train_vae(model, data, None, config, progress=False)

        return load_or_train(path, build, train_fn, config, data, device="cpu")

    first = run()
    second = run()
    assert len(calls) == 1 and first.history == second.history and same_weights(first.model, second.model)
    assert capsys.readouterr().out == ""
    # the device and compile flags change how a model is trained, not what it learns: no retraining
    run(config=VAETrainConfig(epochs=1, batch_size=250, device="auto"))
    assert len(calls) == 1
    # each case changes one more thing than the one before, so each message names exactly that change
    cases = [
        ({"build": lambda: small_vae(z_dim=4)}, "the config of model differs (z_dim: 2 -> 4)"),
        ({"config": VAETrainConfig(epochs=2, batch_size=250, device="cpu")}, "config differs (epochs: 1 -> 2)"),
        ({"config": VAETrainConfig(epochs=2, batch_size=250, device="cpu", beta=2.0)}, "(beta: 1.0 -> 2.0)"),
        ({"config": VAETrainConfig(epochs=2, batch_size=250, device="cpu", beta=2.0, seed=1)}, "(seed: 0 -> 1)"),
        ({"data": train.subset(400)}, "the training data differ (n: 500 -> 400)"),
    ]
    current = {}
    for n, (kwargs, why) in enumerate(cases, start=2):
        current.update(kwargs)
        run(**current)
        out = capsys.readouterr().out
        assert len(calls) == n and why in out and out.count("\n") == 1, out
    run(**current)
    assert len(calls) == len(cases) + 1, "the last checkpoint is reused"
    path.write_bytes(b"damaged")
    run(**current)
    assert "not a readable checkpoint" in capsys.readouterr().out and len(calls) == len(cases) + 2


def test_load_or_train_of_a_group_returns_every_module(tmp_path, train):
    config = GANTrainConfig(epochs=1, batch_size=250, device="cpu")

    def build():
        torch.manual_seed(0)
        return {"G": Generator(SMALL_GAN), "D": Discriminator(SMALL_GAN)}

    def train_fn(nets):
        return fit(GANStep(nets["G"], nets["D"], config), train, progress=False)

    a = load_or_train(tmp_path / "g.pt", build, train_fn, config, train, extra=lambda nets: {"k": 1}, device="cpu")
    b = load_or_train(tmp_path / "g.pt", build, lambda nets: pytest.fail("retrained"), config, train, device="cpu")
    assert a.extra == b.extra == {"k": 1} and same_weights(a["G"], b["G"]) and same_weights(a["D"], b["D"])
