"""What a training step is: the config every step reads, the protocol :func:`dgmlab.train.fit` drives, and the
optimiser the steps share.

A **step** is a small object that owns its networks and their optimisers. Each model family writes one, beside its
model (``VAEStep`` in :mod:`dgmlab.models.vae`, ``GANStep`` in :mod:`dgmlab.models.gan`, ...):

- ``step.modules``: ``{"model": vae}`` or ``{"G": G, "D": D}``, the networks it trains (saved in checkpoints);
- ``step.config``: its :class:`TrainConfig` (or a subclass adding the family's own settings, such as ``beta``);
- ``step.device``: where the networks and the batches live;
- ``step(x, y) -> dict[str, Tensor]``: one update on a batch; returns the batch means of its named terms as
  detached 0-d tensors (not floats: converting every batch would stop a GPU once per batch);
- optionally ``step.evaluate(split) -> dict[str, float]`` (validation terms, usually through
  :func:`held_out_means`) and ``step.sample(n, generator)``.

Model modules import this module, never the trainer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn


@dataclass
class TrainConfig:
    """Settings of a training run, read by :func:`dgmlab.train.fit` and by the step; saved in checkpoints.

    Attributes:
        epochs: passes over the training set.
        batch_size: examples per step.
        lr: Adam learning rate.
        betas: Adam's decay rates of the first and second moment estimates.
        seed: seeds the batch order, dynamic binarisation and the step's noise (not the weights: seed before
            building the model).
        device: ``"auto"`` (CUDA when there is one), ``"cpu"``, ``"cuda"``...
        compile: compile the step's networks or loss with ``torch.compile`` (pays off on long runs only:
            compiling takes about half a minute on a laptop CPU; see ``benchmarks/bench_vae_epoch.py --compile``).
    """

    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    seed: int = 0
    device: str = "auto"
    compile: bool = False

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        if self.epochs < 0 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"epochs >= 0, batch_size >= 1 and lr > 0 are required, got {self}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")


@runtime_checkable
class Step(Protocol):
    """The interface :func:`dgmlab.train.fit` drives (see the module docstring)."""

    modules: dict[str, nn.Module]
    config: TrainConfig
    device: torch.device

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]: ...


def adam(params: Iterable[nn.Parameter], config: TrainConfig) -> torch.optim.Adam:
    """Adam with the config's ``lr`` and ``betas``, using PyTorch's fused kernel (one kernel for all parameters,
    on the CPU as on CUDA) where the parameters allow it."""
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    return torch.optim.Adam(params, lr=config.lr, betas=config.betas, fused=fused or None)


def batch_mean(value: torch.Tensor) -> torch.Tensor:
    """A term for the history: its mean over the batch, detached (kept on the device: no synchronisation)."""
    return value.detach().mean()


def held_out_means(
    data, terms: Callable[[torch.Tensor], dict[str, torch.Tensor | float]], batch_size: int, device, seed: int
) -> dict[str, float]:
    """What a step's ``evaluate`` reports: the example-weighted means over ``data`` of ``terms(x)``, a dict of the
    batch means of named terms, for batches in order (not shuffled). ``data`` is a :class:`~dgmlab.data.Split`
    (batches on ``device``; ``seed`` fixes a dynamic binarisation) or a tensor of examples (batched as they are,
    moved to ``device``). The caller sets the networks' mode (``with eval_mode(...)``: eval mode, no gradients)."""
    if hasattr(data, "batches"):
        batches = (x for x, _ in data.batches(batch_size, shuffle=False, device=device, seed=seed))
    else:
        batches = (x.to(device) for x in torch.split(torch.as_tensor(data), batch_size))
    sums: dict[str, float] = {}
    n = 0
    for x in batches:
        for key, value in terms(x).items():
            sums[key] = sums.get(key, 0.0) + float(value) * len(x)
        n += len(x)
    if n == 0:
        raise ValueError("evaluate: the split holds no examples")
    return {key: value / n for key, value in sums.items()}


def compiled(fn, config: TrainConfig):
    """``torch.compile(fn)`` when ``config.compile`` is set, else ``fn`` itself."""
    return torch.compile(fn) if config.compile else fn
