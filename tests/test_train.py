"""The loop: fit with every step (VAE, GAN, classifier), history rows, callbacks and their events, snapshots, the
NaN error naming epoch and batch, seeds, and the wrappers train_vae / train_gan."""

import json
import math

import pytest
import torch

from dgmlab.data import Split, load_mnist
from dgmlab.evaluate import evaluate_elbo
from dgmlab.models.classifier import Classifier, ClassifierConfig, ClassifierStep
from dgmlab.models.gan import Discriminator, GANConfig, GANStep, GANTrainConfig, Generator
from dgmlab.models.vae import VAE, VAEConfig, VAEStep, VAETrainConfig
from dgmlab.step import Step, TrainConfig
from dgmlab.train import Callback, NonFiniteLossError, Snapshots, fit, train_gan, train_vae

SMALL_GAN = GANConfig(z_dim=8, g_hidden=(32,), d_hidden=(32,))


@pytest.fixture(scope="module")
def data():
    train = load_mnist("train", source="embedded", binarize="dynamic", verbose=False).subset(1000)
    val = load_mnist("val", source="embedded", binarize="dynamic", verbose=False)
    return train, val


def small_vae(seed=0, z_dim=2):
    torch.manual_seed(seed)
    return VAE(VAEConfig(hidden_dims=(128,), z_dim=z_dim))


def small_gan(seed=0, config=SMALL_GAN):
    torch.manual_seed(seed)
    return Generator(config), Discriminator(config)


def make_step(kind: str, config: TrainConfig | None = None):
    """One step of each family, small and on the CPU."""
    if kind == "vae":
        return VAEStep(small_vae(), config or VAETrainConfig(epochs=2, batch_size=100, device="cpu"))
    if kind == "gan":
        return GANStep(*small_gan(), config or GANTrainConfig(epochs=2, batch_size=100, device="cpu"))
    torch.manual_seed(0)
    return ClassifierStep(Classifier(ClassifierConfig(hidden=32)), config or TrainConfig(epochs=2, device="cpu"))


TERMS = {
    "vae": {"elbo", "recon", "kl"},
    "gan": {"d_loss", "g_loss", "d_real", "d_fake"},
    "classifier": {"loss", "accuracy"},
}


@pytest.mark.parametrize("kind", sorted(TERMS))
def test_fit_writes_one_row_per_epoch_with_the_steps_terms(kind, data):
    train, val = data
    step = make_step(kind)
    assert isinstance(step, Step)
    history = fit(step, train, val=val, progress=False)
    assert [row["epoch"] for row in history] == [1, 2]
    wanted = {"epoch", "seed", "n_train", "seconds"} | {f"{s}_{t}" for s in ("train", "val") for t in TERMS[kind]}
    for row in history:
        assert set(row) == wanted
        assert row["n_train"] == 1000 and row["seed"] == 0
        assert all(isinstance(v, int | float) and math.isfinite(v) for v in row.values())
    assert all(not m.training for m in step.modules.values()), "fit leaves the networks in eval mode"
    json.dumps(history)  # plain data


def test_vae_epoch_terms_are_example_weighted_means(data):
    """The row's train terms are the mean over examples, not over batches: a last batch of 1 counts as 1 example."""
    train, _ = data
    seen = []

    class Recorder:
        def __init__(self, step):
            self.inner, self.modules, self.config, self.device = step, step.modules, step.config, step.device

        def __call__(self, x, y=None):
            terms = self.inner(x, y)
            seen.append((len(x), {k: float(v) for k, v in terms.items()}))
            return terms

    step = Recorder(make_step("vae", VAETrainConfig(epochs=1, batch_size=333, device="cpu")))
    (row,) = fit(step, train, progress=False)
    assert [n for n, _ in seen] == [333, 333, 333, 1]
    for key in ("elbo", "recon", "kl"):
        expected = sum(n * t[key] for n, t in seen) / 1000
        assert row[f"train_{key}"] == pytest.approx(expected, rel=1e-9)
    assert row["train_elbo"] == pytest.approx(-(row["train_recon"] + row["train_kl"]), rel=1e-6)


def test_two_epoch_vae_run_improves_the_elbo(data):
    train, val = data
    model = small_vae()
    initial = evaluate_elbo(model, val)["elbo"]
    snaps = Snapshots.before_half_after(2, n=9)
    history = train_vae(model, train, val, VAETrainConfig(epochs=2, batch_size=100, device="cpu"), [snaps], False)
    # from about -543 nats (784 log 2) for an untrained decoder, each epoch climbs
    assert initial == pytest.approx(-784 * math.log(2), rel=0.05)
    assert initial + 50 < history[0]["val_elbo"] < history[1]["val_elbo"] < -100
    assert sorted(snaps.images) == [0, 1, 2] and snaps.images[0].shape == (9, 784)
    assert not torch.equal(snaps.images[0], snaps.images[2]), "samples change with training"
    # the last snapshot is the trained model's sample from the snapshot seed
    torch.testing.assert_close(snaps.images[2], model.sample(9, torch.Generator().manual_seed(0)), rtol=0, atol=0)


@pytest.mark.parametrize("kind", sorted(TERMS))
def test_same_seed_gives_the_same_history(kind, data):
    train, _ = data
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    h1 = fit(make_step(kind), train, progress=False)
    h2 = fit(make_step(kind), train, progress=False)
    assert strip(h1) == strip(h2)
    cfg = make_step(kind).config
    other = type(cfg)(**{**cfg.__dict__, "seed": 5})
    assert strip(fit(make_step(kind, other), train, progress=False)) != strip(h1)


def test_nan_is_reported_with_epoch_and_batch(data):
    train, _ = data
    x = train.x.clone()
    x[450] = float("nan")
    # fit draws epoch 1's order from a generator seeded with seed + 0 (see dgmlab.data.Batches)
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(3))
    batch = int((order == 450).nonzero()) // 100 + 1
    config = VAETrainConfig(epochs=2, batch_size=100, device="cpu", seed=3)
    with pytest.raises(NonFiniteLossError, match=rf"at epoch 1, batch {batch} of 10; try a smaller learning rate"):
        fit(VAEStep(small_vae(), config), x, progress=False)


def test_the_batch_loop_never_synchronises(data, monkeypatch):
    """No Tensor.item() per batch: on a GPU every call would wait for the device."""
    train, _ = data
    calls = []
    real_item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: calls.append(1) or real_item(self))
    for kind in TERMS:
        fit(make_step(kind), train, progress=False)
    assert calls == []


def test_callbacks_see_the_events_in_order(data):
    train, _ = data
    events = []

    class Record(Callback):
        def on_fit_start(self, step, history):
            events.append(("start", len(history)))

        def on_epoch_end(self, epoch, step, history):
            events.append(("epoch", epoch, len(history), history[-1]["epoch"]))

        def on_fit_end(self, step, history):
            events.append(("end", len(history)))

    plain = []
    fit(make_step("vae"), train, callbacks=[Record(), lambda e, s, h: plain.append((e, len(h)))], progress=False)
    assert events == [("start", 0), ("epoch", 1, 1, 1), ("epoch", 2, 2, 2), ("end", 2)]
    assert plain == [(0, 0), (1, 1), (2, 2)]


def test_fit_config_overrides_the_loop_settings_only(data):
    train, _ = data
    step = make_step("vae")
    history = fit(step, train, TrainConfig(epochs=1, batch_size=500, seed=0, device="cpu"), progress=False)
    assert len(history) == 1


def test_empty_and_wrong_data_are_refused():
    step = make_step("vae")
    with pytest.raises(ValueError, match="empty"):
        fit(step, torch.zeros(0, 784), progress=False)
    with pytest.raises(TypeError, match="Split or a tensor"):
        fit(step, [[0.0] * 784], progress=False)


# --- the GAN through fit ---------------------------------------------------------------------------------------


def test_gan_with_batch_norm_survives_a_last_batch_of_one():
    """33 images in batches of 32 leave one image: batch norm in G must still train."""
    G, D = small_gan()
    assert G.config.batch_norm
    x = torch.rand(33, 784, generator=torch.Generator().manual_seed(0))
    history = train_gan(G, D, x, GANTrainConfig(epochs=2, batch_size=32, device="cpu"), progress=False)
    assert len(history) == 2 and all(math.isfinite(r["train_d_loss"]) for r in history)


def test_gan_validation_is_in_eval_mode_and_leaves_batch_norm_alone(data):
    train, _ = data
    val = load_mnist("val", source="embedded", verbose=False)  # grey levels: no binarisation noise
    step = make_step("gan")
    fit(step, train, GANTrainConfig(epochs=1, batch_size=100, device="cpu"), progress=False)
    G, D = step.G, step.D
    # training ran G once per batch (10 batches) and nothing else touched its batch-norm statistics
    assert all(int(m.num_batches_tracked) == 10 for m in G.modules() if isinstance(m, torch.nn.BatchNorm1d))
    G.train(), D.train()
    bn = [m for m in G.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    stats = [(m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked)) for m in bn]
    got = step.evaluate(val)
    after = [(m.running_mean, m.running_var, int(m.num_batches_tracked)) for m in bn]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2] for a, b in zip(stats, after))
    assert G.training and D.training, "evaluate restores the train mode it found"
    G.eval(), D.eval()
    with torch.no_grad():  # the reference: eval-mode D on the validation images (dropout off, deterministic)
        d_real = torch.sigmoid(D(val.x)).mean().item()
    assert got["d_real"] == pytest.approx(d_real, rel=1e-5)
    assert got == step.evaluate(val), "evaluate is deterministic"


def test_gan_step_updates_each_player_from_its_own_loss():
    """The discriminator step changes D only; the generator step changes G only and leaves D trainable."""
    from dgmlab.models.gan import discriminator_step, generator_step

    cfg = GANConfig(z_dim=8, g_hidden=(32,), d_hidden=(32,), batch_norm=False, dropout=0.0)
    G, D = small_gan(config=cfg)
    opt_G, opt_D = torch.optim.Adam(G.parameters(), lr=1e-3), torch.optim.Adam(D.parameters(), lr=1e-3)
    x, z = torch.rand(16, 784), torch.randn(16, 8)
    g0, d0 = [p.clone() for p in G.parameters()], [p.clone() for p in D.parameters()]
    d_losses = [float(discriminator_step(D, opt_D, x, G(z))["d_loss"]) for _ in range(5)]
    assert all(torch.equal(a, b) for a, b in zip(g0, G.parameters()))
    assert not any(torch.equal(a, b) for a, b in zip(d0, D.parameters()))
    assert d_losses[-1] < d_losses[0]
    d1 = [p.clone() for p in D.parameters()]
    d_grads = [p.grad.clone() for p in D.parameters()]
    g_losses = [float(generator_step(D, opt_G, G(z))["g_loss"]) for _ in range(5)]
    assert all(torch.equal(a, b) for a, b in zip(d1, D.parameters()))
    assert not any(torch.equal(a, b) for a, b in zip(g0, G.parameters()))
    assert g_losses[-1] < g_losses[0]
    assert all(p.requires_grad for p in D.parameters()), "D is trainable again after the generator step"
    assert all(torch.equal(a, p.grad) for a, p in zip(d_grads, D.parameters())), "no gradient was computed for D"


def test_gan_snapshots_use_the_same_noise_each_time(data):
    train, _ = data
    step = make_step("gan")
    snaps = Snapshots([0, 2], n=4, seed=7)
    fit(step, train, callbacks=[snaps], progress=False)
    assert sorted(snaps.images) == [0, 2] and snaps.images[0].shape == (4, 784)
    torch.testing.assert_close(snaps.images[2], step.G.sample(4, torch.Generator().manual_seed(7)), rtol=0, atol=0)
    assert not torch.equal(snaps.images[0], snaps.images[2])


def test_train_gan_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"shape \[N, 784\]"):
        train_gan(*small_gan(), Split(torch.rand(10, 100), torch.zeros(10), "x", "t"), GANTrainConfig(epochs=1))


def test_saturating_generator_loss_is_a_config_choice():
    step = GANStep(*small_gan(), GANTrainConfig(generator_loss="saturating", device="cpu"))
    assert step.generator_loss.__name__ == "generator_loss_saturating"
    with pytest.raises(ValueError, match="generator_loss must be one of"):
        GANTrainConfig(generator_loss="wasserstein")


def test_bad_train_configs_are_rejected():
    with pytest.raises(ValueError, match="lr > 0"):
        TrainConfig(lr=0)
    with pytest.raises(ValueError, match="betas"):
        TrainConfig(betas=(0.9, 1.5))
    with pytest.raises(ValueError, match="beta >= 0"):
        VAETrainConfig(beta=-1)


def test_compile_true_trains_the_same_model(data):
    """compile=True changes how the loss runs, not what it computes (one small VAE, one epoch; ~30 s of compiling)."""
    train, _ = data
    small = train.subset(300)
    runs = {}
    for flag in (False, True):
        torch._dynamo.reset()
        config = VAETrainConfig(epochs=1, batch_size=128, device="cpu", compile=flag)  # 128, 128, 44: two shapes
        step = VAEStep(small_vae(), config)
        runs[flag] = (fit(step, small, progress=False)[0], step.model.state_dict())
    for key in ("train_elbo", "train_recon", "train_kl"):
        assert runs[True][0][key] == pytest.approx(runs[False][0][key], rel=1e-4), key
    for name, w in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][name], w, rtol=1e-3, atol=1e-5)


def test_held_out_means_weights_batches_by_their_size_and_refuses_an_empty_split():
    from dgmlab.step import held_out_means

    g = torch.Generator().manual_seed(0)
    x = torch.rand(7, 5, generator=g, dtype=torch.float64)  # 7 examples in batches of 3: the last batch holds 1
    split = Split(x, torch.zeros(7, dtype=torch.long), "test", "memory")
    seen = []

    def terms(xb):
        seen.append(len(xb))
        return {"mean": xb.mean(), "row_sum": xb.sum(1).mean(), "count": 1.0}

    got = held_out_means(split, terms, batch_size=3, device="cpu", seed=0)
    assert seen == [3, 3, 1]  # every example once, in order
    # against the full-batch values: an unweighted mean of the batch means would give (.. + .. + x[6]) / 3
    assert math.isclose(got["mean"], x.mean().item(), rel_tol=1e-12)
    assert math.isclose(got["row_sum"], x.sum(1).mean().item(), rel_tol=1e-12)
    assert got["count"] == 1.0
    assert held_out_means(x, terms, batch_size=3, device="cpu", seed=0) == got  # a plain tensor: the same batches
    with pytest.raises(ValueError, match="no examples"):
        held_out_means(split.subset(0), terms, batch_size=3, device="cpu", seed=0)
