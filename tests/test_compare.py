"""Tests of dgmlab.compare on constructed models whose right answers are known: the test digits themselves (FD 0,
full coverage), one image repeated (one class), copies of the training set (distance 0 to it)."""

import math

import numpy as np
import pandas as pd
import pytest
import scipy.spatial.distance
import scipy.stats
import torch

from dgmlab import compare
from dgmlab.checkpoint import Checkpoint
from dgmlab.data import load_mnist
from dgmlab.step import TrainConfig
from dgmlab.train import train_classifier
from dgmlab.zoo import FAMILIES, Entry


@pytest.fixture(scope="module")
def data():
    return load_mnist("train", source="embedded", verbose=False), load_mnist("test", source="embedded", verbose=False)


@pytest.fixture(scope="module")
def classifier(data):
    """The course's classifier trained for two epochs (about 90% test accuracy, in a second or two)."""
    model, _ = train_classifier(data[0], TrainConfig(epochs=2, device="cpu"))
    return model.eval()


def test_the_test_digits_themselves_are_a_perfect_model(data, classifier):
    _, test = data
    table = compare.comparison_table(
        [compare.images_entry("copy-test", "the test digits", test.x)], classifier, test, n_samples=len(test)
    )
    row = table.loc["copy-test"]
    assert abs(row["fd"]) < 1e-6  # the same feature vectors, in another order
    assert row["precision"] == row["recall"] == row["coverage"] == 1.0
    # the class statistics are those of the classifier's labels of the test digits, computed here by scipy
    p_hat = np.bincount(classifier.predict(test.x).numpy(), minlength=10) / len(test)
    assert row["kl_to_uniform"] == pytest.approx(scipy.stats.entropy(p_hat, np.full(10, 0.1)), abs=1e-12)
    assert row["classes_covered"] == 10
    assert math.isnan(row["log_likelihood"]) and pd.isna(row["log_likelihood_kind"])
    assert row["family"] == "-" and row["n_samples"] == len(test)


def test_one_image_repeated_covers_one_class(data, classifier):
    _, test = data
    one = compare.images_entry("one", "one digit, repeated", test.x[:1])
    good = compare.images_entry("test", "test digits", test.x)
    table = compare.comparison_table([one, good], classifier, test, n_samples=300, progress=False)
    assert list(table.index) == ["one", "test"]
    assert table.loc["one", "classes_covered"] == 1
    assert table.loc["one", "kl_to_uniform"] == pytest.approx(math.log(10), abs=1e-12)  # all mass on one class
    # 300 copies of one point: their k-NN radii are 0, so only that digit itself lies in the fake manifold
    assert table.loc["one", "recall"] == 1 / len(test)
    assert table.loc["one", "coverage"] < 0.05  # only the balls around that digit and its closest neighbours
    assert table.loc["one", "fd"] > 10 * table.loc["test", "fd"]


def test_copies_of_the_training_set_are_at_distance_zero_from_it(data, classifier):
    train, test = data
    copies = compare.images_entry("copies", "training digits", train.x)
    blurred = compare.images_entry("blur", "test digits, noised", (test.x + 0.3 * torch.rand(test.x.shape)).clamp(0, 1))
    table = compare.comparison_table(
        [copies, blurred], classifier, test, n_samples=400, train=train, log_likelihood=False, progress=False
    )
    assert table.loc["copies", "nn_train_ratio"] == 0.0
    assert table.loc["blur", "nn_train_ratio"] > 1.0  # noise moves digits away from every training digit


def test_nearest_train_distance_against_scipy():
    g = torch.Generator().manual_seed(0)
    x, t = torch.rand(37, 20, generator=g), torch.rand(53, 20, generator=g)
    reference = scipy.spatial.distance.cdist(x.double().numpy(), t.double().numpy()).min(1)
    got = compare.nearest_train_distance(x, t, chunk=8)  # several chunks
    np.testing.assert_allclose(got.numpy(), reference, rtol=1e-12)
    assert (compare.nearest_train_distance(t[5:9], t) == 0).all()
    with pytest.raises(ValueError, match="same size"):
        compare.nearest_train_distance(x, torch.rand(5, 21))


def test_every_model_gets_the_same_samples_count_and_seed_and_its_log_likelihood(data, classifier):
    _, test = data
    calls = []

    def recording_entry(name, ll=None):
        def sampler(checkpoint):
            def sample(n, generator):
                calls.append((name, n, generator.initial_seed()))
                return test.x[torch.randperm(len(test), generator=generator)[:n]]

            return sample

        return Entry(
            name,
            name.upper(),
            "book/x",
            load=lambda device="cpu", verbose=True: Checkpoint(modules={}),
            sampler=sampler,
            log_likelihood=None if ll is None else (lambda checkpoint, split: ll),
            log_likelihood_kind=None if ll is None else "exact",
        )

    table = compare.comparison_table(
        [recording_entry("a", (-91.5, 0.25)), recording_entry("b")], classifier, test, n_samples=200, seed=7
    )
    assert calls == [("a", 200, 7), ("b", 200, 7)]
    assert table.loc["a", "log_likelihood"] == -91.5 and table.loc["a", "log_likelihood_se"] == 0.25
    assert table.loc["a", "log_likelihood_kind"] == "exact" and pd.isna(table.loc["b", "log_likelihood_kind"])
    # the same seed draws the same digits: the two rows agree
    assert table.loc["a", "fd"] == table.loc["b", "fd"]
    shown = compare.display_table(table)
    assert list(shown.index) == ["A", "B"] and "FD" in shown.columns and "log p(x)" in shown.columns
    assert "train-NN ratio" not in shown.columns  # empty for every row without train: left out
    skipped = compare.comparison_table(
        [recording_entry("a", (-91.5, 0.25))], classifier, test, n_samples=200, log_likelihood=False
    )
    assert math.isnan(skipped.loc["a", "log_likelihood"])


def test_bad_samplers_and_bad_selections_say_what_is_wrong(data, classifier):
    _, test = data
    bright = compare.images_entry("bright", "pixels in [-1, 1]", 2 * test.x - 1)
    with pytest.raises(ValueError, match=r"\[0, 1\].*\(x \+ 1\) / 2"):
        compare.comparison_table([bright], classifier, test, n_samples=100, progress=False)
    with pytest.raises(ValueError, match="unknown model families"):
        compare.select(families=("no-such-family",))
    with pytest.raises(ValueError, match="repeated"):
        compare.select([bright, bright])
    with pytest.raises(KeyError, match="no model 'no-such-model'"):
        compare.select(["no-such-model"])
    with pytest.raises(ValueError, match="either entries or families"):
        compare.select([bright], families=("vae",))
    binary = load_mnist("test", source="embedded", binarize="static-sample", verbose=False)
    with pytest.raises(ValueError, match="grey test digits"):
        compare.comparison_table([bright], classifier, binary, n_samples=100, progress=False)


def test_families_select_the_zoo_in_book_order():
    chosen = compare.select(families=FAMILIES)
    assert [e.name for e in chosen] == [e.name for e in compare.select()]
    assert "vae" in FAMILIES and FAMILIES[0] == "vae"
    assert {"vae-z20", "vae-z2"} <= {e.name for e in compare.select(families="vae")}
    assert isinstance(compare.display_table(pd.DataFrame(columns=["label", "fd"])), pd.DataFrame)


def test_cached_rows_are_reused_for_the_same_weights_and_measured_again_for_new_ones(
    data, classifier, tmp_path, monkeypatch
):
    monkeypatch.setenv("DGMLAB_CACHE", str(tmp_path))
    _, test = data
    weights = torch.nn.Linear(2, 1)
    calls = []

    def sampler(checkpoint):
        def sample(n, generator):
            calls.append(n)
            return test.x[torch.randperm(len(test), generator=generator)[:n]]

        return sample

    entry = Entry(
        "w", "W", "book/x", load=lambda device="cpu", verbose=True: Checkpoint({"m": weights}), sampler=sampler
    )
    first = compare.comparison_table([entry], classifier, test, n_samples=200, cache=True, progress=False)
    again = compare.comparison_table([entry], classifier, test, n_samples=200, cache=True, progress=False)
    assert len(calls) == 1 and len(list((tmp_path / "tables").glob("w-*.json"))) == 1
    pd.testing.assert_frame_equal(first, again, check_dtype=False)
    compare.comparison_table([entry], classifier, test, n_samples=300, cache=True, progress=False)  # other settings
    with torch.no_grad():
        weights.bias += 1  # "retrained"
    compare.comparison_table([entry], classifier, test, n_samples=200, cache=True, progress=False)
    assert calls == [200, 300, 200]
