"""Small shared helpers: devices, seeds, noise, train/eval modes, the fast-mode switch, cache folders and atomic
writes."""

from __future__ import annotations

import contextlib
import io
import os
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

FAST_ENV = "DGMLAB_FAST"


def get_device(device: str | torch.device = "auto") -> torch.device:
    """Resolve a device name.

    Args:
        device: ``"auto"`` (CUDA if available, else CPU), or anything ``torch.device`` accepts.

    Returns:
        The ``torch.device`` to use.

    Raises:
        ValueError: when CUDA is asked for but not available.
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available here; use device='auto' or 'cpu'")
    return dev


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); CPU for a module that has neither."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def randn(*shape: int, generator: torch.Generator | None = None, device="cpu") -> torch.Tensor:
    """Standard normal noise drawn on the CPU, then moved to ``device``: the one sampling rule of dgmlab.

    Drawing on the CPU makes a seeded ``generator`` give the same numbers whatever device the model is on.

    Args:
        shape: the shape, e.g. ``randn(n, z_dim)``.
        generator: a CPU ``torch.Generator`` (``None``: PyTorch's global CPU generator).
        device: where the noise goes.

    Raises:
        ValueError: when ``generator`` lives on another device than the CPU.
    """
    check_cpu_generator(generator)
    return torch.randn(shape, generator=generator).to(device)


def check_cpu_generator(generator: torch.Generator | None) -> None:
    """Raise ``ValueError`` unless ``generator`` is ``None`` or a CPU generator (dgmlab draws all noise on the CPU)."""
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(
            f"dgmlab draws noise on the CPU, but the generator given lives on {generator.device}; "
            "pass torch.Generator().manual_seed(seed) (a CPU generator) instead"
        )


@contextlib.contextmanager
def eval_mode(*modules: torch.nn.Module) -> Iterator[None]:
    """Put ``modules`` in eval mode (dropout off, batch norm on its running statistics) without gradients, and
    restore the train/eval mode each had afterwards, also when the body raises."""
    was = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        with torch.no_grad():
            yield
    finally:
        for m, mode in zip(modules, was):
            m.train(mode)


def glue(name: str, value, display: bool = True):
    """``myst_nb.glue`` for the book's chapters, with numpy scalars and 0-d tensors turned into Python numbers first.

    myst-nb formats a glued number (``{glue:text}`name:.2f```) from the value's ``repr``, and numpy 2 writes
    ``np.float64(0.5)``, which it cannot format: the page would show the raw text and the build (``-W``) fails.
    """
    from myst_nb import glue as myst_glue

    if isinstance(value, np.generic) or (isinstance(value, torch.Tensor) and value.dim() == 0):
        value = value.item()
    return myst_glue(name, value, display=display)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's global generators (call once, in a notebook's setup cell).

    The library itself never seeds global state: its functions take a ``seed`` or a ``generator``.
    """
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (seeding the legacy global RNG is the point here)
    torch.manual_seed(seed)


def fast_mode() -> bool:
    """True when the environment variable ``DGMLAB_FAST`` is set to a true value (``1``, ``true``, ``yes``).

    Every chapter and lab reads this one switch to use fewer epochs and samples (tests and CI use it).
    """
    return os.environ.get(FAST_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def cache_dir() -> Path:
    """Folder for cached checkpoints and downloads: ``$DGMLAB_CACHE``, else ``~/.cache/dgmlab``."""
    root = os.environ.get("DGMLAB_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "dgmlab")
    return Path(root)


def data_root() -> Path:
    """Folder holding full datasets in torchvision's layout: ``$DGMLAB_DATA``, else ``cache_dir() / "data"``."""
    root = os.environ.get("DGMLAB_DATA")
    return Path(root) if root else cache_dir() / "data"


def checkpoint_path(name: str) -> Path:
    """Where the book and the labs cache a trained model called ``name``.

    ``cache_dir() / "checkpoints" / f"{name}.pt"``, with ``-fast`` added in fast mode so the two never mix.
    Point ``DGMLAB_CACHE`` at an empty folder to force fresh training (the test suite does).
    """
    suffix = "-fast" if fast_mode() else ""
    return cache_dir() / "checkpoints" / f"{name}{suffix}.pt"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename.

    A reader never sees a half-written file, and an interrupted write leaves the old file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically (serialise in memory, then :func:`atomic_write_bytes`)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())
