"""Training loops and checkpoints.

``train_vae`` is a plain loop a student can read: for each epoch, for each batch, compute the loss, step the
optimiser; then evaluate the validation ELBO, record one history row, and call the callbacks.
Checkpoints hold the model class, its config, its weights and the history, are written atomically and load
back with ``torch.load(weights_only=True)`` (no arbitrary unpickling).
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dgmlab.data import Split
from dgmlab.evaluate import evaluate_elbo
from dgmlab.utils import atomic_torch_save, get_device

CHECKPOINT_FORMAT = "dgmlab-checkpoint-v1"
# model class name -> "module:Class"; each class has a ``config_class`` dataclass and a ``config`` attribute
MODEL_CLASSES = {
    "VAE": "dgmlab.models.vae:VAE",
    "Generator": "dgmlab.models.gan:Generator",
    "Discriminator": "dgmlab.models.gan:Discriminator",
    "Classifier": "dgmlab.models.classifier:Classifier",
}

Callback = Callable[[int, torch.nn.Module, list], None]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message gives the epoch, the batch and what to try."""


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt or not a dgmlab checkpoint; the message names the path."""


@dataclass
class TrainConfig:
    """Settings of :func:`train_vae`.

    Attributes:
        epochs: passes over the training set.
        batch_size: examples per step.
        lr: Adam learning rate.
        seed: seeds the batch order, dynamic binarisation and the reparameterisation noise (not the weights:
            seed before building the model).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        beta: weight of the KL term (1 = VAE, >1 = beta-VAE).
    """

    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    beta: float = 1.0

    def __post_init__(self):
        if self.epochs < 0 or self.batch_size < 1 or not self.lr > 0 or self.beta < 0:
            raise ValueError(f"epochs >= 0, batch_size >= 1, lr > 0 and beta >= 0 are required, got {self}")


def _as_split(data, name: str) -> Split:
    if isinstance(data, Split):
        return data
    if isinstance(data, torch.Tensor):
        return Split(data, torch.zeros(len(data), dtype=torch.long), name, "tensor")
    raise TypeError(f"{name} must be a dgmlab.data.Split or a tensor [N, D], got {type(data).__name__}")


def train_vae(
    model: torch.nn.Module,
    train: Split | torch.Tensor,
    val: Split | torch.Tensor | None = None,
    config: TrainConfig | None = None,
    callbacks: Iterable[Callback] = (),
    progress: bool = True,
) -> list[dict]:
    """Train a VAE by maximising the one-sample ELBO with Adam.

    Args:
        model: a :class:`dgmlab.models.vae.VAE` (anything with ``loss(x, beta, generator)``).
        train, val: :class:`~dgmlab.data.Split` objects (or plain ``[N, D]`` tensors).
        config: a :class:`TrainConfig` (defaults if ``None``).
        callbacks: called as ``cb(epoch, model, history)`` once before training (epoch 0) and after every epoch.
        progress: show a tqdm progress bar over batches.

    Returns:
        The history: one dict per epoch with ``epoch``, ``train_elbo``, ``train_recon``, ``train_kl``,
        ``val_elbo``, ``val_recon``, ``val_kl`` (nats per example, averaged over the epoch) and ``seconds``.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite (with the epoch and batch).
    """
    config = config or TrainConfig()
    device = get_device(config.device)
    train, val = _as_split(train, "train"), None if val is None else _as_split(val, "val")
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    batches = train.batches(config.batch_size, shuffle=True, device=device, seed=config.seed)
    noise = torch.Generator(device=device).manual_seed(config.seed)
    history: list[dict] = []
    for cb in callbacks:
        cb(0, model, history)
    bar = tqdm(total=config.epochs * len(batches), disable=not progress, desc="train VAE", unit="batch")
    for epoch in range(1, config.epochs + 1):
        model.train()
        start, sums, n = time.perf_counter(), {"elbo": 0.0, "recon": 0.0, "kl": 0.0}, 0
        for i, (x, _) in enumerate(batches, start=1):
            terms = model.loss(x, beta=config.beta, generator=noise)
            if not torch.isfinite(terms.loss):
                raise NonFiniteLossError(
                    f"the loss became {terms.loss.item()} at epoch {epoch}, batch {i} of {len(batches)}; "
                    f"try a smaller learning rate (lr={config.lr}) or check the data for NaNs"
                )
            optimizer.zero_grad(set_to_none=True)
            terms.loss.backward()
            optimizer.step()
            for key in sums:
                sums[key] += getattr(terms, key).detach().sum().item()
            n += x.shape[0]
            bar.update(1)
        row = {"epoch": epoch, **{f"train_{k}": v / n for k, v in sums.items()}}
        if val is not None:
            row.update({f"val_{k}": v for k, v in evaluate_elbo(model, val, config.batch_size).items()})
        row["seconds"] = time.perf_counter() - start
        history.append(row)
        elbos = {k: f"{row.get(k, math.nan):.1f}" for k in ("train_elbo", "val_elbo")}
        bar.set_postfix(epoch=epoch, **elbos)
        for cb in callbacks:
            cb(epoch, model, history)
    bar.close()
    model.eval()
    return history


class SampleSnapshots:
    """Callback that keeps ``n`` samples from the prior at chosen epochs (the same z each time).

    Example: ``snaps = SampleSnapshots.before_half_after(20)``; ``train_vae(..., callbacks=[snaps])``;
    then ``snaps.images`` maps ``{0: [25, 784], 10: ..., 20: ...}``.
    """

    def __init__(self, epochs: Iterable[int], n: int = 25, seed: int = 0):
        self.epochs, self.n, self.seed = set(epochs), n, seed
        self.images: dict[int, torch.Tensor] = {}

    @classmethod
    def before_half_after(cls, total_epochs: int, n: int = 25, seed: int = 0) -> SampleSnapshots:
        """Snapshots before training, half way through, and after the last epoch."""
        return cls({0, total_epochs // 2, total_epochs}, n, seed)

    def __call__(self, epoch: int, model, history) -> None:
        if epoch in self.epochs:
            self.images[epoch] = model.sample(self.n, generator=_cpu_seeded(self.seed, model)).cpu()


def _cpu_seeded(seed: int, model) -> torch.Generator:
    device = next(model.parameters()).device
    return torch.Generator(device=device).manual_seed(seed)


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------------


def save_checkpoint(path: str | Path, model: torch.nn.Module, history: list | None = None, extra: dict | None = None):
    """Save model class, config, weights (on CPU), history and ``extra`` to ``path`` atomically.

    ``extra`` must hold plain data (numbers, strings, lists, dicts, tensors) so that the file loads with
    ``weights_only=True``.
    """
    name = type(model).__name__
    if name not in MODEL_CLASSES:
        raise CheckpointError(f"cannot checkpoint a {name}: known model classes are {sorted(MODEL_CLASSES)}")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_class": name,
        "config": asdict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "history": list(history or []),
        "extra": dict(extra or {}),
    }
    return atomic_torch_save(payload, path)


def _model_class(name: str):
    module, cls = MODEL_CLASSES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, list, dict]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Returns:
        ``(model, history, extra)`` with the model in eval mode on ``device``.

    Raises:
        CheckpointError: the file is missing, truncated, or not a dgmlab checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (train one with `dgmlab train vae --out DIR`)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for damaged files
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e}); retrain it") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a {CHECKPOINT_FORMAT} file; it was not written by dgmlab.save_checkpoint")
    if payload["model_class"] not in MODEL_CLASSES:
        raise CheckpointError(f"{path} holds an unknown model class {payload['model_class']!r}")
    cls = _model_class(payload["model_class"])
    model = cls(cls.config_class(**payload["config"]))
    model.load_state_dict(payload["state_dict"])
    model.to(get_device(device)).eval()
    return model, payload["history"], payload["extra"]


def load_or_train(
    path: str | Path,
    build: Callable[[], torch.nn.Module],
    train: Callable[[torch.nn.Module], list],
    extra: Callable[[torch.nn.Module], dict] | None = None,
    device: str = "auto",
) -> tuple[torch.nn.Module, list, dict]:
    """Load the checkpoint at ``path`` if it is there, else ``build()`` a model, ``train(model)`` it and save it.

    This is how chapters reuse long training: the first build trains and saves, later builds load.
    A checkpoint that cannot be read, or whose config differs from what ``build()`` makes, is retrained.

    Returns:
        ``(model, history, extra)`` as :func:`load_checkpoint`.
    """
    path = Path(path)
    fresh = build()
    if path.is_file():
        try:
            model, history, saved = load_checkpoint(path, device)
            if type(model) is type(fresh) and asdict(model.config) == asdict(fresh.config):
                return model, history, saved
            print(f"dgmlab: {path} was trained with another config; training again")
        except CheckpointError as e:
            print(f"dgmlab: {e}; training again")
    history = train(fresh)
    saved = extra(fresh) if extra else {}
    save_checkpoint(path, fresh, history, saved)
    return fresh.to(get_device(device)).eval(), history, saved
