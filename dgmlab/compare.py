"""The course's comparison table: every model of :mod:`dgmlab.zoo` measured the same way, one row each.

:func:`comparison_table` draws the same number of samples from every model, with the same seed, and measures them
against the same test digits with :func:`dgmlab.metrics.sample_metrics` (Frechet distance, precision/recall,
density/coverage, classes covered, KL to uniform, all on the features of the course's MNIST classifier), adds how
close the samples lie to the training digits (:func:`nearest_train_distance`, when the training digits are given),
and the model's log-likelihood estimate where it has one. "Measuring generative models" shows the table of parts I
and II; later parts pass their own families (``families=("flow", ...)``) or entries.

:func:`images_entry` makes an entry out of a fixed set of images (a model that copies the training set, one that
only ever shows one digit): the book's counter-examples and the tests' reference points.

The numbers are comparable within this course only (same classifier, same test digits, same sample size); the
Frechet distance here is not the Inception FID of the papers.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math

import pandas as pd
import torch
from tqdm.auto import tqdm

from dgmlab.checkpoint import Checkpoint
from dgmlab.data import Split
from dgmlab.metrics import sample_metrics
from dgmlab.utils import atomic_write_text, cache_dir
from dgmlab.zoo import FAMILIES, Entry, get

__all__ = ["COLUMNS", "comparison_table", "display_table", "images_entry", "nearest_train_distance", "select"]

# column -> what a printed table calls it
COLUMNS = {
    "label": "model",
    "family": "family",
    "fd": "FD",
    "precision": "precision",
    "recall": "recall",
    "density": "density",
    "coverage": "coverage",
    "classes_covered": "classes covered",
    "kl_to_uniform": "KL to uniform",
    "nn_train_ratio": "train-NN ratio",
    "log_likelihood": "log p(x)",
    "log_likelihood_se": "SE",
    "log_likelihood_kind": "log p(x) is",
}


# --- which models -----------------------------------------------------------------------------------------------


def _family_of() -> dict[str, str]:
    """Entry name -> family, for every family in :data:`dgmlab.zoo.FAMILIES`."""
    return {e.name: family for family in FAMILIES for e in importlib.import_module(f"dgmlab.zoo.{family}").ENTRIES}


def select(entries=None, families=None) -> list[Entry]:
    """The entries a table shows, in the order given.

    Args:
        entries: ``None`` (every entry of ``families``), or a list of :class:`~dgmlab.zoo.Entry` objects and zoo
            names (``"vae-z20"``), mixed as you like.
        families: family names of :data:`dgmlab.zoo.FAMILIES` (``("vae", "gan")``); only without ``entries``.
            Default: every family.

    Returns:
        A list of entries.
    """
    if entries is not None and families is not None:
        raise ValueError("pass either entries or families, not both")
    if entries is None:
        families = tuple(FAMILIES) if families is None else ((families,) if isinstance(families, str) else families)
        unknown = [f for f in families if f not in FAMILIES]
        if unknown:
            raise ValueError(
                f"unknown model families {unknown}; dgmlab.zoo.FAMILIES has {list(FAMILIES) or 'none yet'}"
            )
        return [e for f in families for e in importlib.import_module(f"dgmlab.zoo.{f}").ENTRIES]
    if isinstance(entries, (Entry, str)):
        entries = [entries]
    chosen = []
    for e in entries:
        if isinstance(e, str):
            e = get(e)
        elif not isinstance(e, Entry):
            raise TypeError(f"entries must be dgmlab.zoo.Entry objects or zoo names, got {type(e).__name__}")
        chosen.append(e)
    names = [e.name for e in chosen]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"each model may appear once in a table, repeated: {repeated}")
    return chosen


# --- models made of fixed images --------------------------------------------------------------------------------


def images_entry(name: str, label: str, images: torch.Tensor, chapter: str = "") -> Entry:
    """An entry whose "model" returns images from a fixed set: ``n`` distinct ones drawn at random (uniformly,
    without replacement, from the generator's noise), or with replacement when ``n`` exceeds the set.

    It has no weights and no log-likelihood. With the training digits it is a model that memorises its data; with
    the digits of one class, a model collapsed onto one mode.

    Args:
        name: its id in a table.
        label: what the table calls it.
        images: ``[N, 784]`` (or ``[N, 1, 28, 28]``) pixels in [0, 1].
        chapter: the book page that shows it.
    """
    pool = torch.as_tensor(images).detach().float().reshape(len(images), -1).cpu()  # [N, D]
    if len(pool) == 0:
        raise ValueError(f"images_entry {name!r}: no images given")

    def sample(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if n <= len(pool):
            return pool[torch.randperm(len(pool), generator=generator)[:n]]
        return pool[torch.randint(len(pool), (n,), generator=generator)]

    return Entry(name=name, label=label, chapter=chapter, load=_no_weights, sampler=lambda checkpoint: sample)


def _no_weights(device: str = "cpu", verbose: bool = True) -> Checkpoint:
    return Checkpoint(modules={})


# --- memorisation -----------------------------------------------------------------------------------------------


def nearest_train_distance(x: torch.Tensor, train_x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Euclidean pixel distance from each image of ``x`` to its nearest training image: ``min_i ||x_j - t_i||``.

    A model that copies training digits gives 0; new real digits (the test split) give the typical distance of a
    digit the model has not seen. The nearest image is found in float32 (a near-tie, closer than about 1e-4, may
    pick the runner-up) and its distance computed directly in float64, so that a copy gives exactly 0.

    Args:
        x: images ``[M, D]`` (or ``[M, 1, 28, 28]``).
        train_x: training images ``[N, D]``.
        chunk: rows of ``x`` per distance matrix (bounds the memory, not the result).

    Returns:
        ``[M]`` distances, float64, on the CPU.
    """
    x = torch.as_tensor(x).detach().reshape(len(x), -1).double().cpu()
    t = torch.as_tensor(train_x).detach().reshape(len(train_x), -1).double().cpu()
    if len(x) == 0 or len(t) == 0 or x.shape[1] != t.shape[1]:
        raise ValueError(
            f"expected two non-empty batches of images of the same size, got shapes {tuple(x.shape)} and "
            f"{tuple(t.shape)}"
        )
    out, t32 = [], t.float()
    for i in range(0, len(x), chunk):
        xb = x[i : i + chunk]
        # the nearest training image by the fast matrix-product form of cdist (float32), then its distance computed
        # directly in float64, so that a copy is at distance exactly 0 (the fast form leaves ~1e-4)
        nearest = torch.cdist(xb.float(), t32).argmin(1)  # [m]
        out.append((xb - t[nearest]).norm(dim=1))
    return torch.cat(out)


# --- the table ----------------------------------------------------------------------------------------------------


def _samples(entry: Entry, checkpoint: Checkpoint, n: int, seed: int) -> torch.Tensor:
    x = entry.sampler(checkpoint)(n, torch.Generator().manual_seed(seed))
    x = torch.as_tensor(x).detach().cpu().float()
    x = x.reshape(len(x), -1) if x.ndim > 1 else x
    if x.ndim != 2 or len(x) != n:
        raise ValueError(f"the sampler of {entry.name!r} returned shape {tuple(x.shape)}, expected [{n}, 784]")
    if not torch.isfinite(x).all() or x.min() < -1e-4 or x.max() > 1 + 1e-4:
        raise ValueError(
            f"the sampler of {entry.name!r} must return pixels in [0, 1] (got values from {x.min().item():.3g} to "
            f"{x.max().item():.3g}); map a tanh output with (x + 1) / 2"
        )
    return x.clamp(0, 1)


def comparison_table(
    entries=None,
    classifier: torch.nn.Module | None = None,
    test: Split | torch.Tensor | None = None,
    n_samples: int = 1000,
    seed: int = 0,
    *,
    families=None,
    train: Split | torch.Tensor | None = None,
    k: int = 5,
    log_likelihood: bool = True,
    device: str = "cpu",
    cache: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """One row per model: sample quality and diversity on classifier features, memorisation, log-likelihood.

    Every model draws ``n_samples`` samples with the noise of ``torch.Generator().manual_seed(seed)`` and is
    measured against the same ``test`` digits by :func:`dgmlab.metrics.sample_metrics`. A model that is not in the
    cache is trained first (through its entry's ``load``).

    Args:
        entries: entries or zoo names (see :func:`select`); ``None``: every entry of ``families``.
        classifier: the course's MNIST classifier (default :func:`dgmlab.train.load_classifier`).
        test: the grey test digits (a :class:`~dgmlab.data.Split`, or ``[N, 784]`` images in [0, 1]; default
            ``load_mnist("test")``). A ``Split`` is also what the entries' log-likelihoods are evaluated on.
        n_samples: samples per model, the same for all (the Frechet distance is biased upwards for small ones).
        seed: seed of every model's noise.
        families: zoo families to show, instead of ``entries`` (default: all of :data:`dgmlab.zoo.FAMILIES`).
        train: the training digits; when given, the column ``nn_train_ratio`` is the median distance of the
            samples to their nearest training digit divided by that of the test digits (0: copies of the training
            set; about 1: as far from the training set as new real digits).
        k: neighbours of the k-NN metrics (precision, recall, density, coverage).
        log_likelihood: compute each entry's log-likelihood estimate where it has one (the slow part).
        device: where the models are loaded (the metrics run on the CPU).
        cache: reuse a row computed before for the same weights, settings, classifier and data, and save new rows
            (under ``cache_dir() / "tables"``), so that later chapters showing the same models do not measure them
            again. A row is keyed by a hash of every tensor it depends on, so a retrained model gets a new row;
            entries without weights (:func:`images_entry`) are always measured.
        progress: a progress bar over the models.

    Returns:
        A DataFrame indexed by entry name with the columns ``label``, ``family``, ``chapter``, ``n_samples``,
        ``fd``, ``precision``, ``recall``, ``density``, ``coverage``, ``classes_covered``, ``kl_to_uniform``,
        ``mean_image_distance``, ``nn_train_ratio`` (NaN without ``train``), ``log_likelihood``,
        ``log_likelihood_se`` and ``log_likelihood_kind`` (missing, NaN, for a model without one).
        :func:`display_table` prints it.
    """
    chosen = select(entries, families)
    if not chosen:
        raise ValueError("no models to compare: the entries or families given hold none")
    if n_samples < 2 * k + 2:
        raise ValueError(f"n_samples={n_samples} is too small for the k-NN metrics with k={k}; use at least 100")
    if classifier is None:
        from dgmlab.train import load_classifier

        classifier = load_classifier()
    if test is None:
        from dgmlab.data import load_mnist

        test = load_mnist("test")
    if isinstance(test, Split) and test.binarize in ("static", "static-sample"):
        raise ValueError("pass the grey test digits (load_mnist('test')): the samples are grey levels")
    test_x = test.x if isinstance(test, Split) else torch.as_tensor(test)
    train_x = None if train is None else (train.x if isinstance(train, Split) else torch.as_tensor(train))
    test_nn = None if train_x is None else nearest_train_distance(test_x, train_x).median().item()
    families_of = _family_of()
    settings = {"n_samples": n_samples, "seed": seed, "k": k, "log_likelihood": log_likelihood}
    data_key = _hash_tensors([test_x] + ([] if train_x is None else [train_x]) + list(classifier.state_dict().values()))
    rows = []
    bar = tqdm(chosen, disable=not progress, desc="comparison table")
    for entry in bar:
        bar.set_postfix(model=entry.name)
        if entry.sampler is None:
            raise ValueError(f"{entry.name!r} does not generate (its entry has no sampler); leave it out")
        checkpoint = entry.load(device=device, verbose=progress)
        path = _row_path(entry, checkpoint, settings, data_key) if cache and checkpoint.modules else None
        if path is not None and path.is_file():
            try:
                rows.append({**json.loads(path.read_text()), "label": entry.label, "chapter": entry.chapter})
                continue
            except (OSError, ValueError):
                pass  # a damaged file is measured again below
        x = _samples(entry, checkpoint, n_samples, seed)
        row = {
            "name": entry.name,
            "label": entry.label,
            "family": families_of.get(entry.name, "-"),
            "chapter": entry.chapter,
            "n_samples": n_samples,
        }
        row.update(sample_metrics(classifier, test_x, x, k=k))
        row["nn_train_ratio"] = (
            math.nan if train_x is None else nearest_train_distance(x, train_x).median().item() / test_nn
        )
        mean, se, kind = math.nan, math.nan, None
        if log_likelihood and entry.log_likelihood is not None:
            mean, se = entry.log_likelihood(checkpoint, test)
            kind = entry.log_likelihood_kind
        row.update({"log_likelihood": float(mean), "log_likelihood_se": float(se), "log_likelihood_kind": kind})
        rows.append(row)
        if path is not None:
            try:
                atomic_write_text(path, json.dumps({key: _plain(v) for key, v in row.items()}))
            except OSError:
                pass  # a read-only cache only costs the time to measure again
    return pd.DataFrame(rows).set_index("name")


def _hash_tensors(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = torch.as_tensor(t).detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def _row_path(entry: Entry, checkpoint: Checkpoint, settings: dict, data_key: str):
    """Where the row of this entry's weights, measured with these settings on these data, is cached."""
    weights = [t for m in checkpoint.modules.values() for t in m.state_dict().values()]
    key = json.dumps([entry.name, entry.log_likelihood_kind, settings, data_key, _hash_tensors(weights)])
    return cache_dir() / "tables" / f"{entry.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def _plain(v):
    """A value of a row as plain JSON data (numpy and torch scalars to Python numbers)."""
    return v.item() if hasattr(v, "item") else v


def display_table(table: pd.DataFrame, columns=None, digits: int = 3) -> pd.DataFrame:
    """The table with readable column names (:data:`COLUMNS`), numbers rounded, indexed by the models' labels.

    Args:
        table: what :func:`comparison_table` returned.
        columns: which columns of :data:`COLUMNS` to keep (default: all that the table has, dropping those that are
            empty for every row).
        digits: decimals of the rounded numbers (the Frechet distance and the log-likelihood get one).
    """
    columns = [c for c in (columns or COLUMNS) if c in table.columns and c != "label"]
    if not table.empty:
        columns = [c for c in columns if table[c].notna().any()]
    out = table.set_index("label")[columns].copy()
    for c in out.columns:
        if pd.api.types.is_float_dtype(out[c]):
            out[c] = out[c].round(1 if c in ("fd", "log_likelihood") else digits)
    out.index.name = COLUMNS["label"]
    return out.rename(columns=COLUMNS)
