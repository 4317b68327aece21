"""Judging in the grader's own process: loading a submission's exported data without pickle, and the small
vocabulary the labs' hidden checks are written in.

A lab's ``checks.py`` (kept beside the lab, never sent to the kernel) defines functions decorated with
:func:`check`. Each receives the :class:`ExportData` of one submission and a :class:`Context`, and either returns
(pass) or raises :class:`Fail` with a message for the student. Messages describe what is wrong, never the
reference values.
"""

from __future__ import annotations

import io
import json
import math
import os
import stat
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dgmlab.grading.kernel import MANIFEST
from dgmlab.grading.safeio import UnsafeFile, read_capped

CHECKS_REGISTRY = "__dgmlab_checks__"
MAX_MANIFEST_BYTES = 2 * 2**20
MAX_ARRAYS_BYTES = 256 * 2**20


class Fail(Exception):
    """A hidden check failed; the message is shown to the student."""


def check(question: str, name: str) -> Callable:
    """Mark a function as the hidden check ``name`` of ``question`` (points come from the lab's rubric)."""

    def mark(fn: Callable) -> Callable:
        fn._dgmlab_check = (question, name)
        # registered in the defining module, so checks may all be called ``_``
        fn.__globals__.setdefault(CHECKS_REGISTRY, []).append(fn)
        return fn

    return mark


@dataclass
class Context:
    """What a check may use besides the data: the grading budget, the inputs the grader chose (its own copy,
    whatever the kernel did to its copy) and a per-process cache for reference data."""

    budget: dict
    cache: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)


def _safe_npz(path: Path) -> dict[str, np.ndarray]:
    """Load an ``.npz`` written by the kernel: a regular file (not a link), size-limited on disk and unpacked,
    every array's header checked against the bytes it really holds, never with pickle."""
    raw = io.BytesIO(read_capped(path, MAX_ARRAYS_BYTES))
    with zipfile.ZipFile(raw) as z:
        infos = z.infolist()
        total = sum(info.file_size for info in infos)
        if total > MAX_ARRAYS_BYTES or len(infos) > 10_000:
            raise ValueError(f"{path.name} holds {total / 2**20:.0f} MiB of arrays, more than the grader accepts")
        for info in infos:  # a header may declare a shape far larger than the data: refused before allocating
            with z.open(info) as f:
                version = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else _header_2
                shape, _, dtype = read_header(f)
                if dtype.hasobject:
                    raise ValueError(f"{info.filename} is an object array (it would need pickle)")
                if math.prod(shape) * dtype.itemsize > info.file_size:
                    raise ValueError(f"{info.filename} declares more data than it holds")
    raw.seek(0)
    with np.load(raw, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


class ExportData:
    """The data one submission exported, read from a folder written by :class:`dgmlab.grading.kernel.Exporter`.

    Args:
        folder: the export folder (None when nothing was exported).
        nonce: the token the grader put in this run's export cell; a manifest without it is ignored.
        missing_reason: what to tell the student for every item when the export is absent or incomplete.
    """

    def __init__(self, folder: Path | None, nonce: str, missing_reason: str = ""):
        self.folder = folder
        self.items: dict[str, dict] = {}
        self.guard_events: list[dict] = []
        self.complete = False
        self.export_error = ""
        self.problem = ""
        self._arrays: dict[str, dict[str, np.ndarray]] = {}
        manifest = folder / MANIFEST if folder else None
        if manifest is None or not _is_real_folder(folder) or not os.path.lexists(manifest):
            self.problem = missing_reason or "the grader's export cell never ran"
            return
        try:
            raw = json.loads(read_capped(manifest, MAX_MANIFEST_BYTES))
            if not isinstance(raw, dict) or raw.get("nonce") != nonce:
                raise ValueError("manifest from another run")
            self.items = {str(k): v for k, v in dict(raw.get("items", {})).items() if isinstance(v, dict)}
            self.guard_events = [e for e in list(raw.get("guard_events", [])) if isinstance(e, dict)]
            self.complete = raw.get("complete") is True
            self.export_error = str(raw.get("export_error", ""))
        except (ValueError, TypeError, RecursionError, UnsafeFile) as e:
            self.problem = f"the exported data could not be read ({e})"
            return
        if not self.complete:
            self.problem = missing_reason or "the export cell was interrupted before it finished"

    def status(self, key: str) -> str:
        """``ok``, ``error``, ``missing`` (function not defined) or ``absent`` (never produced)."""
        return str(self.items.get(key, {}).get("status", "absent"))

    def message(self, key: str) -> str:
        entry = self.items.get(key)
        if entry is None:
            return f"not produced: {self.problem}" if self.problem else "not produced by your notebook"
        return str(entry.get("message", ""))

    def get(self, key: str):
        """The value recorded under ``key`` (tensors as ``torch.Tensor``), or raise :class:`Fail` saying why not."""
        entry = self.items.get(key)
        if entry is None or entry.get("status") != "ok":
            raise Fail(self.message(key))
        arrays: dict[str, np.ndarray] = {}
        if "file" in entry:
            file = str(entry["file"])
            if file not in self._arrays:
                path = self.folder / file
                if "/" in file or "\\" in file or file.startswith(".") or not os.path.lexists(path):
                    raise Fail("the exported data file is missing")
                try:
                    self._arrays[file] = _safe_npz(path)
                except Exception as e:
                    raise Fail(f"the exported data could not be read ({type(e).__name__})") from None
            arrays = self._arrays[file]
        return _from_data(entry.get("data"), arrays)


def _header_2(f):
    return np.lib.format.read_array_header_2_0(f)


def _is_real_folder(path: Path) -> bool:
    """A folder itself, not a symbolic link to one (the kernel made the export folder)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _from_data(node, arrays: dict[str, np.ndarray]):
    if not isinstance(node, dict):
        raise Fail("the exported data is malformed")
    if "tensor" in node or "ndarray" in node:
        name = "a" + str(node.get("tensor", node.get("ndarray")))
        if name not in arrays:
            raise Fail("the exported data is malformed (an array is missing)")
        a = arrays[name]
        t = torch.from_numpy(np.array(a, copy=True))
        return t
    if "value" in node:
        v = node["value"]
        if isinstance(v, str) and v in ("nan", "inf", "-inf"):
            return float(v)
        return v
    if "sequence" in node:
        return [_from_data(x, arrays) for x in node["sequence"]]
    if "mapping" in node:
        return {k: _from_data(v, arrays) for k, v in node["mapping"].items()}
    raise Fail("the exported data is malformed")


# --- vocabulary for checks ------------------------------------------------------------------------------------


def as_tensor(value, what: str) -> torch.Tensor:
    """``value`` as a float64 tensor, or :class:`Fail` if it is not a tensor or number."""
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bool:
            raise Fail(f"{what} is a boolean tensor; expected floating-point numbers")
        return value.to(torch.float64)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(float(value), dtype=torch.float64)
    raise Fail(f"{what} is a {type(value).__name__}; expected a tensor")


def expect_shape(t: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise Fail(f"{what} has shape {list(t.shape)}; expected {list(shape)}")


def expect_finite(t: torch.Tensor, what: str) -> None:
    bad = (~torch.isfinite(t)).sum().item()
    if bad:
        raise Fail(f"{what} contains {bad} NaN or infinite value(s) out of {t.numel()}")


def expect_close(
    got: torch.Tensor, want: torch.Tensor, what: str, atol: float = 1e-4, rtol: float = 1e-4, hint: str = ""
) -> None:
    """Fail with the size of the error (not the reference values) when ``got`` and ``want`` differ."""
    got, want = got.to(torch.float64), want.to(torch.float64)
    if got.shape != want.shape:
        raise Fail(f"{what} has shape {list(got.shape)}; expected {list(want.shape)}")
    expect_finite(got, what)
    err = (got - want).abs()
    bad = err > atol + rtol * want.abs()
    if bad.any():
        share = bad.float().mean().item()
        raise Fail(
            f"{what} is wrong on {share:.0%} of the grader's inputs (largest error {err.max().item():.3g})"
            + (f"; {hint}" if hint else "")
        )


def scalar(value, what: str) -> float:
    """A Python float from a number or a one-element tensor, or :class:`Fail`."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise Fail(f"{what} should be a single number (a 0-d tensor or float); it has shape {list(value.shape)}")
        return float(value.reshape(()))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise Fail(f"{what} is a {type(value).__name__}; expected a number")


def finite(x: float) -> bool:
    return isinstance(x, float) and math.isfinite(x)


def load_state_dict(module: torch.nn.Module, value, what: str) -> torch.nn.Module:
    """Load an exported ``{name: tensor}`` mapping into the grader's own ``module`` (shapes checked)."""
    if not isinstance(value, dict) or not all(isinstance(v, torch.Tensor) for v in value.values()):
        raise Fail(f"{what} is not a state dict of tensors")
    own = module.state_dict()
    if set(value) != set(own):
        missing, extra = sorted(set(own) - set(value)), sorted(set(value) - set(own))
        raise Fail(f"{what} does not match the lab's architecture (missing {missing[:3]}, unexpected {extra[:3]})")
    for k, v in value.items():
        if v.shape != own[k].shape:
            raise Fail(f"{what}: parameter {k} has shape {list(v.shape)}; the lab's model has {list(own[k].shape)}")
        expect_finite(v.to(torch.float64), f"{what}: parameter {k}")
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in value.items()})
    return module


def expect_budget(history, budget: dict) -> None:
    """The training ``history`` (one dict per epoch) ran with the grading budget: its epochs, n_train and seed."""
    if len(history) != budget["epochs"]:
        raise Fail(f"the history has {len(history)} epochs; the grading budget is {budget['epochs']}")
    for h in history:
        if h.get("n_train") != budget["n_train"] or h.get("seed") != budget["seed"]:
            raise Fail(
                f"an epoch ran with n_train={h.get('n_train')}, seed={h.get('seed')}; the grading budget is "
                f"n_train={budget['n_train']}, seed={budget['seed']}"
            )


def expect_snapshots(snaps, last_epoch: int, shape: tuple[int, ...] = (25, 784)) -> list[int]:
    """Sample snapshots ``{epoch: images}`` taken before (epoch 0), half way and after training (``last_epoch``),
    each of ``shape`` with pixels in [0, 1]. Returns the sorted epochs."""
    if not isinstance(snaps, dict):
        raise Fail("the snapshots are not a dict {epoch: images}")
    epochs = sorted(int(k) for k in snaps)
    if len(epochs) < 3 or epochs[0] != 0 or epochs[-1] != last_epoch or not any(0 < e < last_epoch for e in epochs):
        raise Fail(f"snapshots should be taken before, half way and after training; found epochs {epochs}")
    for k, v in snaps.items():
        v = as_tensor(v, f"snapshot {k}")
        expect_shape(v, shape, f"snapshot {k}")
        if v.min() < 0 or v.max() > 1:
            raise Fail(f"snapshot {k} has pixel values outside [0, 1]")
    return epochs
