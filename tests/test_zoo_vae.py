"""Tests of dgmlab.zoo.vae: the part I VAEs as zoo entries (recipes, caching, samplers, log-likelihoods)."""

import math

import numpy as np
import pytest
import torch

from dgmlab import zoo
from dgmlab.data import load_mnist
from dgmlab.evaluate import evaluate_elbo
from dgmlab.models.vae import VAE, VAEConfig
from dgmlab.zoo import vae as vae_zoo

TINY = VAEConfig(z_dim=1, hidden_dims=(32,))


@pytest.fixture
def fast_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DGMLAB_CACHE", str(tmp_path))
    monkeypatch.setenv("DGMLAB_FAST", "1")
    return tmp_path


def tiny_recipe(**kw):
    settings = dict(model=TINY, epochs=3, fast_epochs=1, fast_n_train=256, snapshots=True)
    return vae_zoo.VAERecipe("test-tiny-vae", **{**settings, **kw})


def test_the_vae_family_is_first_and_its_entries_are_complete():
    assert zoo.FAMILIES[0] == "vae"
    names = [e.name for e in vae_zoo.ENTRIES]
    assert {"vae-z20", "vae-z2"} <= set(names) and len(set(names)) == len(names)
    for e in vae_zoo.ENTRIES:
        assert zoo.get(e.name) is e
        assert e.sampler is not None and e.log_likelihood is not None and e.log_likelihood_kind.startswith("IWAE")
    # the chapters' checkpoint names are kept, so that caches trained before the recipes moved are reused
    assert vae_zoo.CH06_Z20.checkpoint == "ch06-vae20-v2" and vae_zoo.CH06_Z2.checkpoint == "ch06-vae2"
    assert vae_zoo.chapter7_recipe("gaussian").checkpoint == "ch07-gaussian-z10-beta1"


def test_a_broken_later_family_does_not_break_loading_an_earlier_entry(monkeypatch):
    """get() imports families in the book's order only until it finds the entry; entries() names the broken one."""
    monkeypatch.setattr(zoo, "FAMILIES", (*zoo.FAMILIES, "no_such_family"))
    assert zoo.get("vae-z20").chapter == "book/06_training_vae"
    with pytest.raises(RuntimeError, match=r"dgmlab\.zoo\.no_such_family failed to load"):
        zoo.entries()
    with pytest.raises(RuntimeError, match="no_such_family"):  # an entry not found before it: the same message
        zoo.get("not-a-model")


def test_build_gives_seed_zero_weights_and_leaves_the_global_rng_alone():
    recipe = tiny_recipe()
    before = torch.random.get_rng_state()
    a, b = recipe.build(), recipe.build()
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(0)
    reference = VAE(TINY)
    for pa, pb, pr in zip(a.parameters(), b.parameters(), reference.parameters()):
        assert torch.equal(pa, pb) and torch.equal(pa, pr)


def test_fast_mode_trains_the_short_run_under_its_own_name_then_reuses_it(fast_cache, capsys):
    recipe = tiny_recipe()
    assert recipe.n_epochs() == 1 and recipe.train_config().epochs == 1
    train, _ = recipe.data()
    assert len(train) == 256 and train.binarize == "dynamic"
    first = recipe.load()
    assert (fast_cache / "checkpoints" / "test-tiny-vae-fast.pt").is_file()
    assert len(first.history) == 1 and not first.model.training
    # chapter 6's extras: snapshots before and after the one epoch, and the untrained model's validation ELBO
    assert sorted(first.extra["snapshots"]) == vae_zoo.snapshot_epochs(1) == [0, 1]
    assert first.extra["snapshots"][0].shape == (100, 784)
    untrained = recipe.build()
    val = load_mnist("val", binarize="dynamic")
    assert first.extra["initial"]["elbo"] == pytest.approx(evaluate_elbo(untrained, val)["elbo"], rel=1e-6)
    second = recipe.load()
    assert second.history == first.history
    for p1, p2 in zip(first.model.parameters(), second.model.parameters()):
        assert torch.equal(p1, p2)
    assert "training again" not in capsys.readouterr().out


def test_snapshot_epochs_are_log_spaced_and_end_at_the_last_epoch():
    assert vae_zoo.snapshot_epochs(6) == [0, 1, 2, 3, 5, 6]
    assert vae_zoo.snapshot_epochs(100) == [0, 1, 2, 3, 5, 10, 20, 40, 70, 100]


def test_the_log_likelihood_is_a_bound_on_the_quadrature_value(fast_cache):
    """J = 1: log p(x) = log int p(x | z) N(z; 0, 1) dz by quadrature is the independent reference."""
    recipe = tiny_recipe(snapshots=False)
    entry = vae_zoo.vae_entry("tiny", "tiny", "tests", recipe)
    checkpoint = entry.load()
    model = checkpoint.model
    test = load_mnist("test")
    mean, se = entry.log_likelihood(checkpoint, test)
    k, n = vae_zoo.iwae_settings()
    assert (k, n) == (vae_zoo.IWAE_K_FAST, vae_zoo.IWAE_N_FAST)
    # the entry binarises the grey digits exactly as load_mnist's fixed sample does
    x = load_mnist("test", binarize="static-sample", seed=0).x[:n]
    assert entry.log_likelihood(checkpoint, load_mnist("test", binarize="static-sample", seed=0)) == (mean, se)
    z = torch.linspace(-8, 8, 4001, dtype=torch.float64)  # [Q]
    with torch.no_grad():
        log_px_z = torch.cat(
            [
                model.log_px(x.expand(len(zc), -1, -1), model.decode(zc[:, None].float())[:, None].expand(-1, n, -1))
                for zc in z.split(200)
            ]
        ).double()  # [Q, n]
    log_prior = -0.5 * z**2 - 0.5 * math.log(2 * math.pi)
    log_w = torch.log(torch.full_like(z, float(z[1] - z[0])))  # the rectangle rule: the integrand is ~0 at +-8
    quad = torch.logsumexp(log_px_z + (log_prior + log_w)[:, None], dim=0)  # [n]
    elbo = evaluate_elbo(model, x)["elbo"]
    assert elbo - 3 * se < mean <= quad.mean().item() + 1e-3  # ELBO <= L_K <= log p(x) (up to Monte Carlo error)
    assert quad.mean().item() - mean < 0.25 * (quad.mean().item() - elbo) + 0.05  # K importance samples close most
    assert se == pytest.approx(np.std(quad.numpy(), ddof=1) / math.sqrt(n), rel=0.1)  # the spread over digits


def test_sampler_gives_decoder_means_in_the_unit_interval_on_the_cpu(fast_cache):
    entry = vae_zoo.vae_entry("tiny", "tiny", "tests", tiny_recipe(snapshots=False))
    checkpoint = entry.load()
    sample = entry.sampler(checkpoint)
    x = sample(50, torch.Generator().manual_seed(3))
    assert x.shape == (50, 784) and x.device.type == "cpu" and 0 <= x.min() and x.max() <= 1
    assert torch.equal(x, sample(50, torch.Generator().manual_seed(3)))
    assert torch.equal(x, checkpoint.model.sample(50, torch.Generator().manual_seed(3)))


def test_a_grey_level_decoder_refuses_binarised_test_digits(fast_cache):
    recipe = tiny_recipe(
        snapshots=False, binarized=False, model=VAEConfig(z_dim=1, hidden_dims=(32,), likelihood="gaussian")
    )
    entry = vae_zoo.vae_entry("tiny-gauss", "tiny", "tests", recipe)
    assert "grey" in entry.log_likelihood_kind
    checkpoint = entry.load()
    assert recipe.data()[0].binarize == "none"
    with pytest.raises(ValueError, match="grey levels"):
        entry.log_likelihood(checkpoint, load_mnist("test", binarize="static-sample", seed=0))
    mean, se = entry.log_likelihood(checkpoint, load_mnist("test"))
    assert math.isfinite(mean) and se > 0
