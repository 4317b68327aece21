"""Tests of dgmlab.metrics against independent references: closed forms, brute-force loops, hand-computed cases."""

import math
import warnings

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from dgmlab import metrics
from dgmlab.models.classifier import Classifier, ClassifierConfig
from dgmlab.models.gan import GANConfig, Generator


def random_classifier(seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Classifier(ClassifierConfig()).eval()


def with_moments(mu, sigma, n, seed=0):
    """``n`` points whose sample mean is exactly ``mu`` [D] and sample covariance (ddof=1) exactly ``sigma``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, len(mu)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # sample covariance I
    return mu + z @ np.linalg.cholesky(sigma).T


def sqrt_psd(s):
    w, v = np.linalg.eigh(s)
    return v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T


def fd_reference(mu_a, s_a, mu_b, s_b):
    """Tr (S_a S_b)^{1/2} = Tr (S_a^{1/2} S_b S_a^{1/2})^{1/2}, a symmetric PSD matrix: eigenvalues only."""
    root_a = sqrt_psd(s_a)
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ s_b @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * tr_covmean)


def random_spd(d, rng, floor=0.1):
    a = rng.normal(size=(d, d))
    return a @ a.T + floor * np.eye(d)


# --- the Frechet distance -------------------------------------------------------------------------------------


def test_fd_of_a_set_with_itself_is_zero():
    rng = np.random.default_rng(0)
    feat = rng.normal(size=(2000, 32)) @ rng.normal(size=(32, 32)) + 3.0  # correlated, off-centre
    fd = metrics.frechet_distance(feat, torch.from_numpy(feat).float())
    assert abs(fd) < 1e-6 * np.trace(np.cov(feat, rowvar=False))


def test_fd_diagonal_and_commuting_covariances_match_the_closed_form():
    rng = np.random.default_rng(1)
    d = 6
    a, b = rng.uniform(0.2, 3.0, d), rng.uniform(0.2, 3.0, d)
    mu_a, mu_b = rng.normal(size=d), rng.normal(size=d)
    closed = float(((np.sqrt(a) - np.sqrt(b)) ** 2).sum() + ((mu_a - mu_b) ** 2).sum())
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))  # shared eigenvectors: S_a and S_b commute
    for s_a, s_b in [(np.diag(a), np.diag(b)), (q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T)]:
        fd = metrics.frechet_distance(with_moments(mu_a, s_a, 500, 2), with_moments(mu_b, s_b, 800, 3))
        assert fd == pytest.approx(closed, rel=1e-9, abs=1e-10)


def test_fd_non_commuting_covariances_match_an_eigendecomposition():
    rng = np.random.default_rng(2)
    d = 8
    mu_a, mu_b = rng.normal(size=d), rng.normal(size=d)
    s_a, s_b = random_spd(d, rng), random_spd(d, rng)
    assert not np.allclose(s_a @ s_b, s_b @ s_a)
    want = fd_reference(mu_a, s_a, mu_b, s_b)
    fd = metrics.frechet_distance(with_moments(mu_a, s_a, 400, 4), with_moments(mu_b, s_b, 300, 5))
    assert fd == pytest.approx(want, rel=1e-9)
    # and equal means: only the covariance term is left
    fd0 = metrics.frechet_distance(with_moments(mu_a, s_a, 400, 4), with_moments(mu_a, s_b, 300, 5))
    assert fd0 == pytest.approx(fd_reference(mu_a, s_a, mu_a, s_b), rel=1e-9)


def test_fd_on_large_samples_approaches_the_population_value():
    # 100,000 draws from each of two 3-D Gaussians: over 20 seeds the estimate's spread is 0.4% of the
    # population value (its bias, of order D/N, is smaller), so a 2% tolerance is five standard deviations.
    rng = np.random.default_rng(3)
    s_a, s_b = random_spd(3, rng, 1.0), random_spd(3, rng, 0.5)
    mu_a, mu_b = np.zeros(3), np.array([1.0, -0.5, 0.25])
    a = rng.multivariate_normal(mu_a, s_a, size=100_000)
    b = rng.multivariate_normal(mu_b, s_b, size=100_000)
    assert metrics.frechet_distance(a, b) == pytest.approx(fd_reference(mu_a, s_a, mu_b, s_b), rel=0.02)


def test_fd_with_dead_units_and_fewer_samples_than_dimensions():
    # ReLU features often hold units that are 0 for every image: a singular covariance must change nothing
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(300, 5)), rng.normal(size=(200, 5)) * 1.5 + 0.3
    pad = lambda f: np.concatenate([f, np.zeros((len(f), 3))], 1)  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no LinAlgWarning reaches the user
        assert metrics.frechet_distance(pad(a), pad(b)) == pytest.approx(metrics.frechet_distance(a, b), rel=1e-6)
        few = metrics.frechet_distance(rng.normal(size=(20, 50)), rng.normal(size=(30, 50)))
    assert math.isfinite(few) and few > 0


@pytest.mark.parametrize(
    "a, b, message",
    [
        (np.zeros((10, 3)), np.zeros((10, 4)), "different feature dimensions"),
        (np.zeros((1, 3)), np.zeros((10, 3)), "at least 2"),
        (np.zeros(10), np.zeros((10, 1)), r"\[N, D\]"),
        (np.full((10, 2), np.nan), np.zeros((10, 2)), "NaN"),
    ],
)
def test_fd_bad_input_says_what_is_wrong(a, b, message):
    with pytest.raises(ValueError, match=message):
        metrics.frechet_distance(a, b)


# --- precision, recall, density, coverage -----------------------------------------------------------------------


def prdc_brute_force(real, fake, k):
    """Literal transcription of the definitions with Python loops over numpy rows."""
    dist = lambda u, v: float(np.sqrt(((u - v) ** 2).sum()))  # noqa: E731

    def radii(x):
        return [sorted(dist(x[i], x[j]) for j in range(len(x)) if j != i)[k - 1] for i in range(len(x))]

    r, s = radii(real), radii(fake)
    in_real = [[dist(f, real[i]) <= r[i] for i in range(len(real))] for f in fake]
    return {
        "precision": np.mean([any(row) for row in in_real]),
        "recall": np.mean([any(dist(x, fake[j]) <= s[j] for j in range(len(fake))) for x in real]),
        "density": np.sum(in_real) / (k * len(fake)),
        "coverage": np.mean([min(dist(x, f) for f in fake) <= r[i] for i, x in enumerate(real)]),
    }


def all_four(real, fake, k):
    return {**metrics.precision_recall(real, fake, k), **metrics.density_coverage(real, fake, k)}


def test_prdc_hand_computed_1d_case():
    # k=1 radii: reals 0,1,3,7,8,30,31 -> 1,1,2,1,1,1,1; fakes 0.5,2.5,9.5,13 -> 2,2,3.5,3.5.
    # Real balls holding each fake: 0.5 in those of 0 and 1, 2.5 in that of 3, 9.5 and 13 in none.
    # Reals within a fake ball: all but 30 and 31. Reals with a fake in their ball: 0, 1 and 3.
    real = np.array([0.0, 1, 3, 7, 8, 30, 31])[:, None]
    fake = np.array([0.5, 2.5, 9.5, 13])[:, None]
    got = all_four(real, fake, k=1)
    assert got == {"precision": 2 / 4, "recall": 5 / 7, "density": 3 / 4, "coverage": 3 / 7}
    assert got == pytest.approx(prdc_brute_force(real, fake, 1), abs=1e-15)


def test_prdc_of_copies_far_points_and_half_and_half():
    rng = np.random.default_rng(5)
    real = rng.normal(size=(300, 8))
    k = 5
    # exact copies: every closed ball holds its own centre and its k neighbours, so density = (k + 1) / k
    got = all_four(real, real.copy(), k)
    assert got == pytest.approx({"precision": 1, "recall": 1, "density": (k + 1) / k, "coverage": 1}, abs=1e-12)
    # copies rounded to float32 move off the balls' boundaries, but stay well inside their own balls
    got = all_four(real, torch.from_numpy(real).float(), k)
    assert got["precision"] == got["recall"] == got["coverage"] == 1
    far = real + 1e3
    assert all_four(real, far, k) == {"precision": 0, "recall": 0, "density": 0, "coverage": 0}
    half = np.concatenate([real[:100], far[:100]])
    assert metrics.precision_recall(real, half, k)["precision"] == 0.5


@pytest.mark.parametrize("chunk", [7, 2048])
def test_prdc_match_brute_force_on_random_clouds(monkeypatch, chunk):
    monkeypatch.setattr(metrics, "_CHUNK", chunk)  # 7: the chunked loop is used and must not change anything
    rng = np.random.default_rng(6)
    real = rng.normal(size=(60, 3))
    fake = rng.normal(size=(45, 3)) * 0.7 + 0.4
    for k in (1, 3, 5):
        assert all_four(real, fake, k) == pytest.approx(prdc_brute_force(real, fake, k), abs=1e-12)


@pytest.mark.parametrize(
    "n_real, n_fake, k, fn, message",
    [
        (5, 20, 5, "precision_recall", "more than k real"),
        (20, 3, 5, "precision_recall", "more than k fake"),
        (5, 20, 5, "density_coverage", "smaller k"),
        (20, 20, 0, "density_coverage", "positive integer"),
    ],
)
def test_knn_metrics_refuse_too_large_k(n_real, n_fake, k, fn, message):
    with pytest.raises(ValueError, match=message):
        getattr(metrics, fn)(np.zeros((n_real, 2)), np.ones((n_fake, 2)), k)


def test_density_coverage_need_no_fake_neighbours():
    real = np.arange(10.0)[:, None]
    # k=5 radii of 0..9: 5, 4, 3, 3, 3, 3, 3, 3, 4, 5; the fakes 0.1 and 1.1 lie in the balls of 0..4 only
    assert metrics.density_coverage(real, real[:2] + 0.1, k=5)["coverage"] == 0.5
    with pytest.raises(ValueError, match="different feature dimensions"):
        metrics.density_coverage(real, np.zeros((4, 2)))


# --- classes of the samples -------------------------------------------------------------------------------------


def test_histogram_coverage_and_kl_on_constructed_labels():
    uniform = torch.arange(1000) % 10
    p = metrics.class_histogram(uniform)
    assert p.dtype == torch.float64 and torch.equal(p, torch.full((10,), 0.1, dtype=torch.float64))
    assert metrics.kl_to_uniform(p) == pytest.approx(0, abs=1e-15) and metrics.classes_covered(p) == 10
    one = metrics.class_histogram(torch.full((50,), 3))
    assert metrics.kl_to_uniform(one) == pytest.approx(math.log(10), rel=1e-15) and metrics.classes_covered(one) == 1
    two = metrics.class_histogram(torch.tensor([2, 7] * 30))  # empty classes: 0 log 0 = 0
    assert metrics.kl_to_uniform(two) == pytest.approx(math.log(5), rel=1e-15) and metrics.classes_covered(two) == 2
    assert metrics.kl_to_uniform(torch.tensor([30, 0, 30])) == pytest.approx(math.log(1.5), rel=1e-15)  # counts


def test_kl_to_uniform_matches_scipy_entropy():
    p = np.random.default_rng(7).dirichlet(np.ones(10))
    assert metrics.kl_to_uniform(p) == pytest.approx(scipy.stats.entropy(p, np.full(10, 0.1)), rel=1e-12)


def test_classes_covered_threshold_rule():
    counts = torch.zeros(10)
    counts[0], counts[1] = 995, 5  # class 1 holds 0.5% of the samples: below the default 1%
    assert metrics.classes_covered(counts) == 1
    assert metrics.classes_covered(counts, min_share=0) == 2  # at least one sample
    counts[0], counts[1] = 990, 10  # exactly 1%: covered
    assert metrics.classes_covered(counts) == 2
    assert metrics.classes_covered(counts, min_share=0.5) == 1


def test_class_histogram_from_probabilities_counts_the_most_likely_class():
    logits = torch.randn(200, 10, generator=torch.Generator().manual_seed(0))
    probs = F.softmax(logits, -1)
    assert torch.equal(metrics.class_histogram(probs), metrics.class_histogram(logits.argmax(1)))


@pytest.mark.parametrize(
    "y, message",
    [(torch.tensor([0, 10]), r"0\.\.9"), (torch.rand(5, 3), "10 columns"), (torch.tensor([], dtype=torch.long), "no")],
)
def test_class_histogram_bad_input(y, message):
    with pytest.raises(ValueError, match=message):
        metrics.class_histogram(y)


def test_histogram_functions_refuse_what_is_not_a_histogram():
    for bad in (torch.tensor([0.5, -0.1, 0.6]), torch.zeros(3), torch.ones(2, 2)):
        with pytest.raises(ValueError, match="class histogram"):
            metrics.kl_to_uniform(bad)
    with pytest.raises(ValueError, match="min_share"):
        metrics.classes_covered(torch.ones(3), min_share=2)


# --- classifier features --------------------------------------------------------------------------------------


@pytest.mark.parametrize("train_mode", [True, False])
def test_classifier_features_shape_batches_and_mode(train_mode):
    model = random_classifier().train(train_mode)
    x = torch.rand(23, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    feat = metrics.classifier_features(model, x, batch_size=5)
    assert feat.shape == (23, 256) and feat.dtype == torch.float32 and feat.device.type == "cpu"
    assert model.training is train_mode
    first = model.net[0]  # Linear(784, 256), then the ReLU: the hidden activations by hand
    want = torch.relu(x.reshape(23, 784) @ first.weight.T + first.bias).detach()
    torch.testing.assert_close(feat, want, rtol=1e-5, atol=1e-5)
    flat = metrics.classifier_features(model, x.reshape(23, 784), batch_size=5)
    torch.testing.assert_close(flat, feat, rtol=0, atol=0)  # [N, 1, 28, 28] is flattened, nothing else


def test_classifier_features_refuse_wrong_image_size():
    with pytest.raises(ValueError, match="784 pixels"):
        metrics.classifier_features(random_classifier(), torch.rand(4, 32, 32))
    with pytest.raises(ValueError, match="N > 0"):
        metrics.classifier_features(random_classifier(), torch.rand(0, 784))
    with pytest.raises(ValueError, match="batch_size"):
        metrics.classifier_features(random_classifier(), torch.rand(3, 784), batch_size=0)


# --- mean images ----------------------------------------------------------------------------------------------


def test_mean_image_distance_is_the_brute_force_distance():
    g = torch.Generator().manual_seed(2)
    fake, real = torch.rand(37, 784, generator=g), torch.rand(51, 1, 28, 28, generator=g) * 0.5
    f, r = fake.double().numpy(), real.reshape(51, 784).double().numpy()
    want = math.sqrt(sum((f[:, p].sum() / 37 - r[:, p].sum() / 51) ** 2 for p in range(784)))
    assert metrics.mean_image_distance(fake, real) == pytest.approx(want, rel=1e-5)


class ConstantSampler:
    """A model whose every sample is the same image: the distance is then known exactly."""

    def __init__(self, value):
        self.value = value

    def sample(self, n, generator=None):
        torch.rand(1, generator=generator)  # uses the generator it is given, never the global one
        return torch.full((n, 784), self.value)


def test_mean_image_distance_of_models():
    G = Generator(GANConfig(z_dim=8, g_hidden=(32,), batch_norm=False)).train()
    state = torch.get_rng_state()
    assert metrics.mean_image_distance(ConstantSampler(0.75), torch.full((5, 784), 0.25)) == pytest.approx(0.5 * 28)
    x = torch.rand(100, 784, generator=torch.Generator().manual_seed(3))
    # the rule lab 2's grader has always used: 1000 samples from the noise of seed 0
    old = (G.sample(1000, generator=torch.Generator().manual_seed(0)).mean(0) - x.mean(0)).norm().item()
    assert metrics.mean_image_distance(G, x) == old
    assert metrics.mean_image_distance(G, x, n=10, seed=1) != old
    assert G.training and torch.equal(torch.get_rng_state(), state)
    with pytest.raises(ValueError, match="fake"):
        metrics.mean_image_distance(torch.rand(10, 784), x, n=5)
    with pytest.raises(TypeError, match="sample"):
        metrics.mean_image_distance([0.0], x)


# --- everything at once ---------------------------------------------------------------------------------------


def test_sample_metrics_of_the_data_against_itself():
    model = random_classifier()
    x = torch.rand(120, 784, generator=torch.Generator().manual_seed(4))
    out = metrics.sample_metrics(model, x, x.view(120, 1, 28, 28), k=3)
    assert set(out) == {
        "fd", "precision", "recall", "density", "coverage", "classes_covered", "kl_to_uniform", "mean_image_distance"
    }  # fmt: skip
    assert abs(out["fd"]) < 1e-6 and out["mean_image_distance"] == 0
    assert out["precision"] == out["recall"] == out["coverage"] == 1 and out["density"] == pytest.approx(4 / 3)


def test_sample_metrics_see_dropped_modes_with_a_trained_classifier():
    from dgmlab.data import load_mnist

    train = load_mnist("train", source="embedded", verbose=False)
    test = load_mnist("test", source="embedded", verbose=False)
    model = random_classifier(seed=1).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    perm = torch.randperm(len(train.x), generator=torch.Generator().manual_seed(0))
    for _ in range(3):  # three epochs of 4,000 images: about 90% test accuracy in a second
        for i in range(0, len(perm), 128):
            idx = perm[i : i + 128]
            loss = F.cross_entropy(model(train.x[idx]), train.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    real, other = train.x[:1000], test.x  # two independent samples of the data
    dropped = test.x[test.y < 5]  # a "model" that only draws the digits 0-4
    good, bad = metrics.sample_metrics(model, real, other), metrics.sample_metrics(model, real, dropped)
    assert good["classes_covered"] == 10 and good["kl_to_uniform"] < 0.05
    assert bad["classes_covered"] <= 7 and bad["kl_to_uniform"] > 0.5  # log 2 = 0.69 for a perfect classifier
    assert bad["fd"] > 2 * good["fd"] and bad["recall"] < good["recall"] and bad["coverage"] < good["coverage"]
