"""Normalizing flows: the RealNVP of "Normalizing flows: RealNVP" (``book/14_realnvp``).

One entry, ``"realnvp"``: a :class:`~dgmlab.models.flow.RealNVP` trained by maximum likelihood on uniformly
dequantised grey-level MNIST (8-bit levels, ``x = k / 255``). Its log-likelihood is the dequantisation bound
``E_u[log p((k + u) / 256)] - D log 256 <= log P(k)`` computed with the flow's exact density, one dequantisation
sample per test image.
"""

from __future__ import annotations

import math

import torch

from dgmlab.checkpoint import Checkpoint, load_or_train
from dgmlab.data import load_mnist
from dgmlab.models.flow import (
    FlowStep,
    FlowTrainConfig,
    RealNVP,
    RealNVPConfig,
    dequantize,
    discrete_log_likelihood_bound,
)
from dgmlab.train import fit
from dgmlab.utils import checkpoint_path, eval_mode, fast_mode, module_device
from dgmlab.zoo import Entry

__all__ = ["ENTRIES", "REALNVP_CONFIG", "realnvp_train_config", "load_realnvp", "log_likelihood", "sampler"]

_C, _H, _S = "checkerboard", "channel", "squeeze"
# squeeze first: a 3 x 3 convolution over 4 channels at 14 x 14 costs the CPU far less than over 1 channel at 28 x 28
# for the same arithmetic, and a checkerboard at 14 x 14 still alternates which 2 x 2 blocks are transformed
REALNVP_CONFIG = RealNVPConfig(shape=(1, 28, 28), layers=(_S, _C, _C, _C, _C, _H, _H, _H, _H), hidden=32, n_hidden=2)


def realnvp_train_config(device: str = "auto") -> FlowTrainConfig:
    """The training run of the ``"realnvp"`` entry (a short one in fast mode)."""
    return FlowTrainConfig(epochs=1 if fast_mode() else 15, batch_size=64, lr=1e-3, seed=0, device=device)


def load_realnvp(device: str = "cpu", verbose: bool = True, progress: bool = False) -> Checkpoint:
    """The trained RealNVP, from the cache or trained now: 15 epochs on the training digits, about two minutes of CPU
    time; in fast mode one epoch on the first 1,000 of them."""
    train, val = load_mnist("train"), load_mnist("val")
    if fast_mode():
        train = train.subset(1000)
    config = realnvp_train_config(device)

    def build() -> RealNVP:
        torch.manual_seed(0)  # the initial weights
        return RealNVP(REALNVP_CONFIG)

    def train_fn(model: RealNVP) -> list[dict]:
        return fit(FlowStep(model, config), train, val=val, progress=progress)

    return load_or_train(checkpoint_path("realnvp"), build, train_fn, config, train, device=device, verbose=verbose)


def sampler(checkpoint: Checkpoint, temperature: float = 1.0):
    """``f(n, generator) -> images [n, 784]`` in [0, 1] on the CPU, drawn at ``temperature``."""
    model = checkpoint.model
    return lambda n, generator=None: model.sample(n, generator, temperature=temperature).cpu()


@torch.no_grad()
def log_likelihood(checkpoint: Checkpoint, split, seed: int = 0, batch_size: int = 500) -> tuple[float, float]:
    """The dequantisation bound on ``log P(x)`` of ``split``'s 8-bit images: (mean nats per image, standard error).

    One uniform dequantisation sample per image (a CPU generator seeded with ``seed``); the standard error is over
    the images and includes that noise.
    """
    model = checkpoint.model
    g, values = torch.Generator().manual_seed(seed), []
    with eval_mode(model):
        for x, _ in split.batches(batch_size, shuffle=False, device=module_device(model), seed=seed):
            log_p = model.log_prob(dequantize(x, 256, g))
            values.append(discrete_log_likelihood_bound(log_p, model.config.x_dim, 256).cpu())
    values = torch.cat(values).double()
    return values.mean().item(), values.std().item() / math.sqrt(len(values))


ENTRIES = (
    Entry(
        name="realnvp",
        label="RealNVP (8 couplings)",
        chapter="book/14_realnvp",
        load=load_realnvp,
        sampler=sampler,
        log_likelihood=log_likelihood,
        log_likelihood_kind="exact density, dequantisation bound (8-bit grey levels)",
    ),
)
