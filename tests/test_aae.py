"""The adversarial autoencoder (dgmlab.models.aae) and its priors (dgmlab.priors)."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from dgmlab.checkpoint import load_checkpoint, save_checkpoint
from dgmlab.data import Split
from dgmlab.models.aae import (
    AAE,
    AAEConfig,
    AAEStep,
    AAETrainConfig,
    energy_distance,
    hide_labels,
    label_code,
    latent_discriminator,
)
from dgmlab.models.gan import discriminator_step, generator_step
from dgmlab.priors import MixturePrior, StandardNormal, SwissRoll, make_prior
from dgmlab.train import fit

N = 200_000


def _params(module):
    return [p.detach().clone() for p in module.parameters()]


def _changed(before, module):
    return [not torch.equal(a, b.detach()) for a, b in zip(before, module.parameters())]


def _tiny(prior="swiss_roll", conditional=False):
    torch.manual_seed(0)
    config = AAEConfig(x_dim=6, hidden=(8,), d_hidden=(8,), prior=prior, conditional=conditional)
    model, D = AAE(config), latent_discriminator(config)
    return model, D, AAEStep(model, D, AAETrainConfig(device="cpu", lr=1e-2, lr_adv=1e-2))


# --- the priors -------------------------------------------------------------------------------------------------


def test_swiss_roll_moments_match_numerical_integration():
    roll = SwissRoll()
    z, t = roll.sample_with_position(N, torch.Generator().manual_seed(0))
    z = z.double()

    def curve(t):  # the roll written out again from its definition, in numpy
        a = math.sqrt(roll.angle_start**2 + (roll.angle_end**2 - roll.angle_start**2) * t)
        r = roll.radius * a / roll.angle_end
        return r * math.cos(a), r * math.sin(a)

    def moment(f):
        return integrate.quad(f, 0, 1, limit=200)[0]

    mean = [moment(lambda t, i=i: curve(t)[i]) for i in (0, 1)]
    second = [[moment(lambda t, i=i, j=j: curve(t)[i] * curve(t)[j]) for j in (0, 1)] for i in (0, 1)]
    second = np.array(second) + roll.noise**2 * np.eye(2)  # the noise adds s^2 I to E[z z^T]
    se = z.std(0).numpy() / math.sqrt(N)
    assert np.all(np.abs(z.mean(0).numpy() - mean) < 4 * se)
    emp_second = (z.T @ z / N).numpy()
    se2 = (z[:, :, None] * z[:, None, :]).reshape(N, 4).std(0).reshape(2, 2).numpy() / math.sqrt(N)
    assert np.all(np.abs(emp_second - second) < 4 * se2)
    # the positions are uniform on [0, 1], and the noise around the curve has the stated standard deviation
    assert stats.kstest(t.numpy(), "uniform").pvalue > 1e-3
    residual = z - roll.curve(t).double()
    assert abs(residual.std().item() / roll.noise - 1) < 0.01


def test_swiss_roll_runs_from_the_centre_outwards():
    roll = SwissRoll()
    t = torch.linspace(0, 1, 101)
    radius = roll.curve(t).norm(dim=1)
    assert torch.all(radius[1:] > radius[:-1])  # the radius grows along the roll
    assert radius[0].item() == pytest.approx(roll.radius * roll.angle_start / roll.angle_end, rel=1e-5)
    assert radius[-1].item() == pytest.approx(roll.radius, rel=1e-5)
    # roughly uniform along the curve: consecutive steps in t cover arc lengths within a factor 1.5 of each other
    steps = roll.curve(torch.linspace(0, 1, 1001)).diff(dim=0).norm(dim=1)
    assert steps.max() / steps.min() < 1.5


def test_mixture_prior_components_and_moments():
    prior = MixturePrior()
    z, k = prior.sample_with_components(N, torch.Generator().manual_seed(0))
    K, R, s = prior.n_components, prior.radius, prior.std
    angles = 2 * math.pi * torch.arange(K, dtype=torch.float64) / K
    means = R * torch.stack([angles.cos(), angles.sin()], 1)  # the means, written out again
    assert torch.allclose(prior.means, means)
    counts = torch.bincount(k, minlength=K).double()
    assert stats.chisquare(counts.numpy()).pvalue > 1e-3  # uniform over the components
    for c in range(K):
        zc = z[k == c].double()
        assert torch.all((zc.mean(0) - means[c]).abs() < 4 * s / math.sqrt(len(zc)))
        assert abs(zc.std(0).mean().item() / s - 1) < 0.02
    # the whole mixture: mean 0, covariance (R^2 / 2 + s^2) I for K >= 3 equally spaced means
    cov = torch.cov(z.double().T)
    assert torch.allclose(cov, (R**2 / 2 + s**2) * torch.eye(2, dtype=torch.float64), atol=0.02)
    assert torch.all(z.double().mean(0).abs() < 4 * cov.diag().sqrt() / math.sqrt(N))


def test_mixture_prior_samples_the_component_of_each_label():
    prior = MixturePrior()
    y = torch.tensor([3] * 500 + [-1] * 5000 + [7] * 500)
    z, k = prior.sample_with_components(len(y), torch.Generator().manual_seed(1), y)
    labelled = y >= 0
    assert torch.equal(k[labelled], y[labelled])  # every labelled row from its own component, exactly
    unlabelled = torch.bincount(k[~labelled], minlength=10).numpy()
    assert stats.chisquare(unlabelled).pvalue > 1e-3  # the others from the whole mixture
    # the nearest mean reads the component back for points within 2 standard deviations of their mean
    near = (z.double() - prior.means[k]).norm(dim=1) < 2 * prior.std
    assert torch.equal(prior.component(z[near]), k[near])
    assert torch.equal(prior.component(prior.means.float()), torch.arange(10))
    with pytest.raises(ValueError, match="labels must be in"):
        prior.sample(2, y=torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="one label per sample"):
        prior.sample(3, y=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="no components"):
        SwissRoll().sample(2, y=torch.tensor([0, 1]))


def test_make_prior_and_config_errors():
    assert isinstance(make_prior("normal", 5), StandardNormal) and make_prior("normal", 5).sample(3).shape == (3, 5)
    with pytest.raises(ValueError, match="unknown prior"):
        make_prior("banana")
    with pytest.raises(ValueError, match="z_dim=2"):
        AAEConfig(z_dim=3, prior="swiss_roll")
    with pytest.raises(ValueError, match="needs prior='mixture'"):
        AAEConfig(conditional=True)
    assert AAEConfig(prior="mixture", conditional=True).n_classes == 10 and AAEConfig().n_classes == 0


# --- the networks and the step ------------------------------------------------------------------------------------


def test_latent_discriminator_reads_codes_and_labels():
    assert latent_discriminator(AAEConfig()).config.x_dim == 2
    assert latent_discriminator(AAEConfig(prior="mixture", conditional=True)).config.x_dim == 2 + 11
    code = label_code(torch.tensor([0, 9, -1]), 10)
    assert torch.equal(code.argmax(1), torch.tensor([0, 9, 10])) and torch.equal(code.sum(1), torch.ones(3))
    model = AAE(AAEConfig(prior="mixture", conditional=True))
    with pytest.raises(ValueError, match="latent_discriminator"):
        AAEStep(model, latent_discriminator(AAEConfig()), AAETrainConfig(device="cpu"))


def test_each_phase_updates_only_its_players():
    model, D, step = _tiny()
    x = torch.rand(32, 6)
    enc, dec, d = _params(model.encoder), _params(model.decoder), _params(D)
    step.reconstruction_step(x)
    assert all(_changed(enc, model.encoder)) and all(_changed(dec, model.decoder)) and not any(_changed(d, D))

    enc, dec, d = _params(model.encoder), _params(model.decoder), _params(D)
    real, fake = step.latent_pair(x)
    discriminator_step(step.D, step.opt_D, real, fake)  # the step's own optimiser of D
    assert all(_changed(d, D)) and not any(_changed(enc, model.encoder)) and not any(_changed(dec, model.decoder))

    enc, dec, d = _params(model.encoder), _params(model.decoder), _params(D)
    model.decoder.zero_grad(set_to_none=True)  # (the reconstruction step left its gradients there)
    generator_step(step.D, step.opt_E, fake)  # the step's optimiser of the encoder
    assert all(_changed(enc, model.encoder)) and not any(_changed(dec, model.decoder)) and not any(_changed(d, D))
    assert all(p.requires_grad for p in D.parameters())  # D is unfrozen after the generator step
    assert all(p.grad is None for p in model.decoder.parameters())  # no gradient was even computed for it


def test_full_step_returns_finite_terms_and_moves_every_player():
    model, D, step = _tiny()
    before = {name: _params(m) for name, m in (("E", model.encoder), ("dec", model.decoder), ("D", D))}
    terms = step(torch.rand(16, 6))
    assert set(terms) == {"recon", "d_loss", "g_loss", "d_real", "d_fake"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in terms.values())
    for name, m in (("E", model.encoder), ("dec", model.decoder), ("D", D)):
        assert all(_changed(before[name], m)), name


def test_generator_step_pushes_codes_towards_what_D_calls_prior():
    model, D, step = _tiny()
    x = torch.rand(64, 6)
    for _ in range(20):  # a D that tells codes from prior samples
        real, fake = step.latent_pair(x)
        discriminator_step(step.D, step.opt_D, real, fake)
    with torch.no_grad():
        before = torch.sigmoid(D(model.encode(x))).mean()
    for _ in range(5):
        generator_step(step.D, step.opt_E, model.encode(x))
    with torch.no_grad():
        after = torch.sigmoid(D(model.encode(x))).mean()
    assert after > before


def test_conditional_pairs_route_labels_to_their_components():
    model, D, step = _tiny("mixture", conditional=True)
    prior = model.prior
    n = 4000
    x = torch.rand(2 * n, 6)
    y = torch.cat([torch.full((n,), 4), torch.full((n,), -1)])
    real, fake = step.latent_pair(x, y)
    assert real.shape == fake.shape == (2 * n, 2 + 11)
    assert torch.equal(real[:, 2:], label_code(y, 10)) and torch.equal(fake[:, 2:], label_code(y, 10))
    z4 = real[:n, :2].double()  # labelled 4: from component 4 only
    assert torch.all((z4.mean(0) - prior.means[4]).abs() < 4 * prior.std / math.sqrt(n))
    assert abs(z4.std(0).mean().item() / prior.std - 1) < 0.05
    z_free = real[n:, :2]  # unlabelled: from the whole mixture
    assert stats.chisquare(torch.bincount(prior.component(z_free), minlength=10).numpy()).pvalue > 1e-3
    with pytest.raises(ValueError, match="needs labels"):
        step.latent_pair(x)


def test_hide_labels_keeps_a_stratified_subset():
    y = torch.arange(100) % 10
    split = Split(torch.rand(100, 6), y, "toy/labels", "toy")
    kept = hide_labels(split, 25, seed=0)
    labelled = kept.y >= 0
    assert int(labelled.sum()) == 25 and torch.equal(kept.y[labelled], y[labelled])
    per_class = torch.bincount(kept.y[labelled], minlength=10)
    assert per_class.max() - per_class.min() <= 1
    assert kept.name != split.name and torch.equal(kept.x, split.x) and torch.equal(split.y, y)
    with pytest.raises(ValueError, match="only 10"):
        hide_labels(split, 200)


def test_fit_one_epoch_conditional():
    model, D, step = _tiny("mixture", conditional=True)
    split = hide_labels(Split(torch.rand(64, 6), torch.arange(64) % 10, "toy/c", "toy"), 20)
    history = fit(step, split, AAETrainConfig(epochs=1, batch_size=16, device="cpu"), val=split, progress=False)
    assert math.isfinite(history[0]["train_recon"]) and math.isfinite(history[0]["val_recon"])


# --- sampling, checkpoints, the energy distance -----------------------------------------------------------------------


@pytest.mark.parametrize("prior", ["swiss_roll", "mixture", "normal"])
def test_sample_follows_the_sampling_rule(prior):
    model, _, _ = _tiny(prior)
    model.train()
    a = model.sample(7, torch.Generator().manual_seed(3))
    b = model.sample(7, torch.Generator().manual_seed(3))
    assert model.training  # the mode is restored
    assert torch.equal(a, b) and a.shape == (7, 6) and not a.requires_grad
    assert a.min() >= 0 and a.max() <= 1
    z = model.prior.sample(7, torch.Generator().manual_seed(3))  # noise from the CPU generator, then decoded
    with torch.no_grad():
        assert torch.allclose(a, torch.sigmoid(model.decoder(z)))


def test_checkpoint_round_trip(tmp_path):
    model, D, step = _tiny("mixture", conditional=True)
    step(torch.rand(8, 6), torch.tensor([0, 1, 2, -1, -1, 5, 6, 9]))
    path = save_checkpoint(tmp_path / "aae.pt", {"model": model, "D": D}, train_config=step.config)
    loaded = load_checkpoint(path)
    assert isinstance(loaded["model"], AAE) and loaded["model"].config == model.config
    assert loaded["model"].prior == model.prior and loaded["D"].config == D.config
    x = torch.rand(5, 6)
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded["model"](x)[0], model(x)[0])
        r = torch.rand(5, 13)
        assert torch.equal(loaded["D"](r), D.eval()(r))
    g = torch.Generator().manual_seed(0)
    assert torch.equal(loaded["model"].sample(4, g), model.sample(4, torch.Generator().manual_seed(0)))


def test_energy_distance_against_scipy():
    g = np.random.default_rng(0)
    a, b = g.normal(size=300), g.normal(0.5, 2.0, size=200)
    ours = energy_distance(torch.tensor(a)[:, None], torch.tensor(b)[:, None])
    assert ours == pytest.approx(stats.energy_distance(a, b) ** 2, rel=1e-10)
    same = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
    assert energy_distance(same, same) == pytest.approx(0, abs=1e-12)
    # in 2-d, against the definition by brute force over all pairs
    x, y = torch.randn(40, 2, dtype=torch.float64), torch.randn(30, 2, dtype=torch.float64) + 1
    brute = (
        2 * np.mean([np.linalg.norm(u - v) for u in x.numpy() for v in y.numpy()])
        - np.mean([np.linalg.norm(u - v) for u in x.numpy() for v in x.numpy()])
        - np.mean([np.linalg.norm(u - v) for u in y.numpy() for v in y.numpy()])
    )
    assert energy_distance(x, y) == pytest.approx(brute, rel=1e-10)


def test_zoo_entries_sample_images_and_have_no_likelihood():
    from dgmlab import zoo
    from dgmlab.checkpoint import Checkpoint
    from dgmlab.zoo.aae import ENTRIES, MIXTURE_LABELS, SWISS_ROLL

    assert [e.name for e in ENTRIES] == ["aae-swiss-roll", "aae-mixture-labels"]
    assert "aae" in zoo.FAMILIES and zoo.get("aae-swiss-roll") is ENTRIES[0]
    assert MIXTURE_LABELS.model.conditional and not SWISS_ROLL.model.conditional
    for entry, recipe in zip(ENTRIES, (SWISS_ROLL, MIXTURE_LABELS)):
        assert entry.log_likelihood is None and entry.sampler is not None
        untrained = Checkpoint(recipe.build())  # the entry's sampler on the recipe's (untrained) networks
        x = entry.sampler(untrained)(6, torch.Generator().manual_seed(0))
        assert x.shape == (6, 784) and x.device.type == "cpu" and 0 <= x.min() and x.max() <= 1
