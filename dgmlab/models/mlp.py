"""The multilayer perceptron that every network in ``dgmlab.models`` is built from."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn


def mlp(
    sizes: Sequence[int],
    activation: Callable[[], nn.Module],
    *,
    batch_norm: bool = False,
    dropout: float = 0.0,
) -> nn.Sequential:
    """Linear layers of the given sizes with ``[BatchNorm,] activation [, Dropout]`` between them (none after the last).

    ``activation`` is a class or factory called once per hidden layer, e.g. ``nn.ReLU`` or
    ``functools.partial(nn.LeakyReLU, 0.2)``.
    """
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            if batch_norm:
                layers.append(nn.BatchNorm1d(n_out))
            layers.append(activation())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)
