"""Checkpoints of model groups: ``{"G": generator, "D": discriminator}``, or one ``{"model": vae}``.

A checkpoint holds, for every module, its class name, its config and its weights (on the CPU); the training config;
a description of the training data; the history; and free-form ``extra`` data. It is written atomically (a reader
never sees half a file) and read back with ``torch.load(weights_only=True)``, so loading runs no pickled code.

:func:`load_or_train` is how the book and the labs reuse long training runs: it loads a checkpoint only when every
model config, the training config and the data match what the caller asks for, and otherwise trains again and says
why in one line.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from dgmlab.utils import atomic_torch_save, get_device

CHECKPOINT_FORMAT = "dgmlab-checkpoint-v2"
# class name -> "module:Class"; every class has a ``config_class`` dataclass and a ``config`` attribute
MODEL_CLASSES = {
    "VAE": "dgmlab.models.vae:VAE",
    "Generator": "dgmlab.models.gan:Generator",
    "Discriminator": "dgmlab.models.gan:Discriminator",
    "DCGenerator": "dgmlab.models.dcgan:DCGenerator",
    "DCDiscriminator": "dgmlab.models.dcgan:DCDiscriminator",
    "Classifier": "dgmlab.models.classifier:Classifier",
    "RealNVP": "dgmlab.models.flow:RealNVP",
    "RBM": "dgmlab.models.rbm:RBM",
    "AAE": "dgmlab.models.aae:AAE",
    "Translator": "dgmlab.models.cyclegan:Translator",
}
# training-config fields that change how a model is trained, not what it learns: a mismatch does not retrain
IGNORED_TRAIN_FIELDS = ("device", "compile")

Modules = nn.Module | Mapping[str, nn.Module]


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt or not a dgmlab checkpoint; the message names the path."""


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` and :func:`load_or_train` return.

    Attributes:
        modules: name -> module, in eval mode on the requested device (``{"model": vae}`` for a single model).
        history: one dict per epoch, as :func:`dgmlab.train.fit` returns it.
        train_config: the training config as a dict (``None`` if none was saved).
        data: the description of the training data (:func:`data_signature`), or ``None``.
        extra: free-form data saved with the models (snapshots, test numbers, ...).
    """

    modules: dict[str, nn.Module]
    history: list[dict] = field(default_factory=list)
    train_config: dict | None = None
    data: dict | None = None
    extra: dict = field(default_factory=dict)

    @property
    def model(self) -> nn.Module:
        """The module of a one-model checkpoint (for a group, index it: ``checkpoint["G"]``)."""
        if len(self.modules) != 1:
            raise CheckpointError(f"this checkpoint holds {sorted(self.modules)}; pick one with checkpoint[name]")
        return next(iter(self.modules.values()))

    def __getitem__(self, name: str) -> nn.Module:
        if name not in self.modules:
            raise KeyError(f"no module {name!r} in this checkpoint; it holds {sorted(self.modules)}")
        return self.modules[name]


def as_modules(modules: Modules) -> dict[str, nn.Module]:
    """A module or a mapping of modules as a dict ``name -> module`` (a single module is called ``"model"``)."""
    if isinstance(modules, nn.Module):
        return {"model": modules}
    if isinstance(modules, Mapping) and modules and all(isinstance(m, nn.Module) for m in modules.values()):
        return dict(modules)
    raise TypeError(f"expected an nn.Module or a non-empty dict of them, got {type(modules).__name__}")


def config_dict(config) -> dict | None:
    """A dataclass config (or a dict, or ``None``) as a plain dict that ``torch.load(weights_only=True)`` accepts."""
    if config is None:
        return None
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    if isinstance(config, Mapping):
        return dict(config)
    raise TypeError(f"a config must be a dataclass or a dict, got {type(config).__name__}")


def data_signature(data) -> dict | None:
    """What identifies training data for :func:`load_or_train`: its name, source, size and binarisation.

    Accepts a :class:`dgmlab.data.Split`, a tensor (described by its shape only), a dict (taken as is) or ``None``.
    """
    if data is None or isinstance(data, Mapping):
        return None if data is None else dict(data)
    if isinstance(data, torch.Tensor):
        return {"name": "tensor", "source": "tensor", "n": int(data.shape[0]), "shape": list(data.shape[1:])}
    if hasattr(data, "signature"):
        return data.signature()
    raise TypeError(f"cannot describe training data of type {type(data).__name__}; pass a Split, a tensor or a dict")


def _class_name(module: nn.Module) -> str:
    name = type(module).__name__
    if name not in MODEL_CLASSES or not hasattr(module, "config"):
        raise CheckpointError(f"cannot checkpoint a {name}: known model classes are {sorted(MODEL_CLASSES)}")
    return name


def save_checkpoint(
    path: str | Path,
    modules: Modules,
    history: list | None = None,
    train_config=None,
    data=None,
    extra: dict | None = None,
) -> Path:
    """Save a group of modules with their configs, the training config, the data's description, the history and
    ``extra`` to ``path``, atomically.

    Args:
        path: the file to write (its folder is created).
        modules: one module (saved as ``"model"``) or a dict such as ``{"G": G, "D": D}``.
        history: the list of per-epoch dicts from :func:`dgmlab.train.fit`.
        train_config: the training config (a dataclass or a dict).
        data: the training data (see :func:`data_signature`).
        extra: plain data only (numbers, strings, lists, dicts, tensors), so the file loads with ``weights_only=True``.

    Returns:
        ``path``.
    """
    entries = {}
    for name, module in as_modules(modules).items():
        entries[name] = {
            "class": _class_name(module),
            "config": config_dict(module.config),
            "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        }
    payload = {
        "format": CHECKPOINT_FORMAT,
        "modules": entries,
        "train_config": config_dict(train_config),
        "data": data_signature(data),
        "history": list(history or []),
        "extra": dict(extra or {}),
    }
    return atomic_torch_save(payload, path)


def _model_class(name: str):
    module, cls = MODEL_CLASSES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def load_checkpoint(path: str | Path, device: str = "cpu") -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint`; every module comes back in eval mode on ``device``.

    Raises:
        CheckpointError: the file is missing, truncated, from an older dgmlab, or not a dgmlab checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (train one with `dgmlab train vae --out DIR`)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for damaged files
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e}); retrain it") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else None
        why = f"it is a {found} file from an older dgmlab" if found else "it was not written by dgmlab"
        raise CheckpointError(f"{path} is not a {CHECKPOINT_FORMAT} file ({why}); retrain it")
    device = get_device(device)
    modules = {}
    for name, entry in payload["modules"].items():
        if entry["class"] not in MODEL_CLASSES:
            raise CheckpointError(f"{path}: module {name!r} has an unknown class {entry['class']!r}")
        cls = _model_class(entry["class"])
        try:
            module = cls(cls.config_class(**entry["config"]))
            module.load_state_dict(entry["state_dict"])
        except (TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path}: module {name!r} does not match its class {entry['class']}: {e}") from None
        modules[name] = module.to(device).eval()
    return Checkpoint(modules, payload["history"], payload["train_config"], payload["data"], payload["extra"])


def _first_difference(saved: dict | None, wanted: dict | None, ignore: tuple[str, ...] = ()) -> str | None:
    """``"key: saved -> wanted"`` for the first differing key, or ``None`` when the two agree."""
    saved, wanted = dict(saved or {}), dict(wanted or {})
    for key in sorted(set(saved) | set(wanted)):
        if key in ignore:
            continue
        a, b = saved.get(key, "(none)"), wanted.get(key, "(none)")
        if isinstance(a, list | tuple) and isinstance(b, list | tuple):
            a, b = list(a), list(b)
        if a != b:
            return f"{key}: {a} -> {b}"
    return None


def mismatch(checkpoint: Checkpoint, modules: Modules, train_config=None, data=None) -> str | None:
    """Why ``checkpoint`` cannot stand in for training ``modules`` with ``train_config`` on ``data`` (one line), or
    ``None`` when the module classes and configs, the training config and the data all match."""
    wanted = as_modules(modules)
    if sorted(checkpoint.modules) != sorted(wanted):
        return f"it holds the modules {sorted(checkpoint.modules)}, not {sorted(wanted)}"
    for name, module in wanted.items():
        saved = checkpoint.modules[name]
        if type(saved) is not type(module):
            return f"module {name} is a {type(saved).__name__}, not a {type(module).__name__}"
        diff = _first_difference(config_dict(saved.config), config_dict(module.config))
        if diff:
            return f"the config of {name} differs ({diff})"
    diff = _first_difference(checkpoint.train_config, config_dict(train_config), IGNORED_TRAIN_FIELDS)
    if diff:
        return f"the training config differs ({diff})"
    diff = _first_difference(checkpoint.data, data_signature(data))
    if diff:
        return f"the training data differ ({diff})"
    return None


def load_or_train(
    path: str | Path,
    build: Callable[[], Modules],
    train: Callable,
    config=None,
    data=None,
    extra: Callable | None = None,
    device: str = "auto",
    verbose: bool = True,
) -> Checkpoint:
    """Load the checkpoint at ``path`` if it was trained the way the caller asks; else build, train and save.

    Args:
        path: the checkpoint file (see :func:`dgmlab.utils.checkpoint_path`).
        build: makes the untrained modules (one module, or a dict such as ``{"G": G, "D": D}``); it is always
            called, so that its configs can be compared with the saved ones.
        train: ``train(modules) -> history``, called with what ``build`` returned.
        config: the training config (epochs, lr, beta, seed, ...; ``device`` and ``compile`` are not compared).
        data: the training data (a :class:`~dgmlab.data.Split`; compared by name, source, size and binarisation).
        extra: ``extra(modules) -> dict`` of plain data to save beside the models (snapshots, test numbers).
        device: where the returned modules live.
        verbose: print one line saying why a checkpoint is not reused.

    Returns:
        A :class:`Checkpoint` with the modules in eval mode on ``device``.
    """
    path = Path(path)
    built = build()
    modules = as_modules(built)
    if path.is_file():
        try:
            checkpoint = load_checkpoint(path, device)
            why = mismatch(checkpoint, modules, config, data)
            if why is None:
                return checkpoint
        except CheckpointError as e:
            why = str(e)
        if verbose:
            print(f"dgmlab: not reusing {path}: {why}; training again")
    history = train(built)
    saved = extra(built) if extra else {}
    try:
        save_checkpoint(path, modules, history, config, data, saved)
    except OSError as e:  # a read-only cache costs the training next time, not this run's result
        print(f"dgmlab: could not save {path} ({e}); the model is trained but not cached")
    device = get_device(device)
    for module in modules.values():
        module.to(device).eval()
    return Checkpoint(modules, list(history or []), config_dict(config), data_signature(data), dict(saved))
