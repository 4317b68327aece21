"""The course's trained models, one entry each: how it is built and trained, in one place.

A chapter that trains a model the rest of the course compares against does not keep its recipe in the notebook:
the recipe (the model config, the training config, the data, the checkpoint name) lives in a module of this package,
one per family (``dgmlab.zoo.vae``, ``dgmlab.zoo.gan``, ...), and the chapter, the comparison table of
"Measuring generative models" and later parts all load it through the same entry. The first call trains (through
:func:`dgmlab.checkpoint.load_or_train`, so a matching checkpoint in the cache is reused); in fast mode
(``DGMLAB_FAST=1``) every recipe trains a short run under its own checkpoint name.

Each family module defines ``ENTRIES``: a tuple of :class:`Entry`. Add a family by writing its module and naming it
in :data:`FAMILIES`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from dgmlab.checkpoint import Checkpoint
from dgmlab.data import Split

__all__ = ["Entry", "FAMILIES", "BINARIZE_SEED", "binary_test_digits", "entries", "get"]

# family modules, in the order of the book; each defines ENTRIES
FAMILIES: tuple[str, ...] = ("vae", "gan", "gan_cures", "flow", "rbm", "aae")


# the one fixed binarisation of the test digits, as load_mnist("test", binarize="static-sample", seed=0)
BINARIZE_SEED = 0


def binary_test_digits(test) -> torch.Tensor:
    """The test digits as every binary-likelihood entry scores them: binarised once with :data:`BINARIZE_SEED`, or
    as they are when the split is binarised already. ``[N, D]``."""
    x = test.x if isinstance(test, Split) else torch.as_tensor(test)
    if isinstance(test, Split) and test.binarize in ("static", "static-sample"):
        return x
    return torch.bernoulli(x, generator=torch.Generator().manual_seed(BINARIZE_SEED))


@dataclass(frozen=True)
class Entry:
    """One trained model of the course.

    Attributes:
        name: short unique id (``"vae-z20"``, ``"mlp-gan"``), also the stem of its checkpoint file.
        label: what a table calls it (``"VAE, J = 20"``).
        chapter: the book page that trains and discusses it (``"book/06_training_vae"``).
        load: ``load(device="cpu", verbose=True) -> Checkpoint``: the trained model, from the cache or trained now.
        sampler: ``sampler(checkpoint) -> f`` with ``f(n, generator) -> images [n, 784]`` in [0, 1] on the CPU,
            or ``None`` for a model that does not generate.
        log_likelihood: ``log_likelihood(checkpoint, test_split) -> (mean nats per image, standard error)``: an
            estimate (or bound) of ``log p(x)`` on the test images, or ``None`` where the model has none.
        log_likelihood_kind: what that number is (``"IWAE, K = 500"``, ``"exact"``, ``"AIS"``...).
    """

    name: str
    label: str
    chapter: str
    load: Callable[..., Checkpoint]
    sampler: Callable[[Checkpoint], Callable[[int, torch.Generator | None], torch.Tensor]] | None = None
    log_likelihood: Callable | None = None
    log_likelihood_kind: str | None = None


def entries() -> list[Entry]:
    """Every entry of every family in :data:`FAMILIES`, in the book's order."""
    found: list[Entry] = []
    for family in FAMILIES:
        found.extend(_family_entries(family))
    names = [e.name for e in found]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise RuntimeError(f"dgmlab.zoo: entry names must be unique, repeated: {duplicated}")
    return found


def _family_entries(family: str) -> tuple[Entry, ...]:
    try:
        return importlib.import_module(f"dgmlab.zoo.{family}").ENTRIES
    except Exception as error:  # name the family, so that one broken recipe is found at once
        raise RuntimeError(f"dgmlab.zoo: the family module dgmlab.zoo.{family} failed to load: {error!r}") from error


def get(name: str) -> Entry:
    """The entry called ``name``; the error lists the names there are.

    The families are imported in the book's order only until the entry is found, so a chapter of part I does not
    import (or depend on) the families of later parts."""
    seen: list[str] = []
    for family in FAMILIES:
        for entry in _family_entries(family):
            if entry.name == name:
                return entry
            seen.append(entry.name)
    raise KeyError(f"no model {name!r} in dgmlab.zoo; there are: {', '.join(seen) or 'none yet'}")
