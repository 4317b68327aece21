"""Figures used across the book and the labs: image grids, ELBO curves, the latent manifold, latent scatters."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy.stats import norm
from torchvision.utils import make_grid


def image_grid(x: torch.Tensor, nrow: int | None = None, padding: int = 2, side: int = 28) -> torch.Tensor:
    """Tile images into one grey-level image with ``torchvision.utils.make_grid``.

    Args:
        x: ``[N, side*side]`` flat images or ``[N, side, side]`` / ``[N, 1, side, side]``, values in [0, 1].
        nrow: images per row (default: about sqrt(N)).

    Returns:
        ``[H, W]`` tensor in [0, 1].
    """
    x = torch.as_tensor(x).detach().float().cpu().reshape(-1, 1, side, side)
    nrow = nrow or max(1, int(np.ceil(np.sqrt(len(x)))))
    return make_grid(x, nrow=nrow, padding=padding, pad_value=1.0)[0]


def show_images(x: torch.Tensor, nrow: int | None = None, ax=None, title: str | None = None, side: int = 28):
    """Show images as a grid on ``ax`` (a new figure if ``None``); returns the axes."""
    if ax is None:
        n = len(x)
        cols = nrow or max(1, int(np.ceil(np.sqrt(n))))
        rows = int(np.ceil(n / cols))
        _, ax = plt.subplots(figsize=(min(0.6 * cols + 0.4, 12), 0.6 * rows + 0.4))
    ax.imshow(image_grid(x, nrow, side=side).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def plot_history(history: list[dict], keys=("train_elbo", "val_elbo"), ax=None, ylabel: str = "ELBO (nats)"):
    """Plot per-epoch curves from a training history (list of dicts); returns the axes."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2))
    epochs = [row["epoch"] for row in history]
    for key in keys:
        if history and key in history[0]:
            ax.plot(epochs, [row[key] for row in history], marker="o", ms=3, label=key.replace("_", " "))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


def ppf_values(n: int) -> np.ndarray:
    """``n`` latent coordinates equally spaced in probability under N(0, 1): ``Phi^{-1}((i + 1/2) / n)``, i = 0..n-1.

    Each value sits in the middle of a slice of prior mass 1/n (``scipy.stats.norm.ppf`` is the inverse CDF).
    Returns an increasing array of shape [n], symmetric around 0.
    """
    return norm.ppf((np.arange(n) + 0.5) / n)


def ppf_grid(n: int = 20, eps: float | None = None) -> torch.Tensor:
    """An ``n x n`` grid of 2-d latent points at the quantiles of N(0, 1) in each coordinate.

    The quantiles (i + 1/2) / n, i = 0..n-1, pass through ``scipy.stats.norm.ppf`` (the inverse CDF), so each grid
    cell carries the same prior mass: the grid covers the part of z-space that has significant density, as in
    Kingma & Welling (2014), figure 4b. Row 0 is the largest z2 (top of the picture).

    Returns:
        ``[n*n, 2]`` float32 tensor of (z1, z2) points, row-major.
    """
    values = ppf_values(n) if eps is None else norm.ppf(np.linspace(eps, 1 - eps, n))
    z1, z2 = np.meshgrid(values, values[::-1])
    return torch.tensor(np.stack([z1.ravel(), z2.ravel()], axis=1), dtype=torch.float32)


@torch.no_grad()
def manifold_grid(decode, n: int = 20, side: int = 28) -> torch.Tensor:
    """Decode a ppf grid of 2-d latent points and tile the images: the learned data manifold.

    Args:
        decode: maps ``[m, 2]`` latent points to ``[m, side*side]`` images in [0, 1] (e.g.
            ``lambda z: model.mean(model.decode(z))``).
        n: grid points per axis.

    Returns:
        ``[H, W]`` image tensor (``n`` rows and columns of digits).
    """
    z = ppf_grid(n)
    images = decode(z)
    return image_grid(images, nrow=n, side=side)


def plot_manifold(model, n: int = 20, ax=None, title: str | None = "decoder means on a ppf grid of z"):
    """Show :func:`manifold_grid` of a 2-d latent VAE; returns the axes."""
    if model.config.z_dim != 2:
        raise ValueError(f"the manifold plot needs a 2-d latent space, this model has z_dim={model.config.z_dim}")
    device = next(model.parameters()).device
    image = manifold_grid(lambda z: model.mean(model.decode(z.to(device))).cpu(), n)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 7))
    ax.imshow(image.numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def plot_latent_scatter(mu: torch.Tensor, y: torch.Tensor, ax=None, title: str | None = "posterior means by digit"):
    """Scatter 2-d latent means coloured by label (ten digits, a qualitative colour map); returns the axes."""
    mu, y = torch.as_tensor(mu).cpu().numpy(), torch.as_tensor(y).cpu().numpy()
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 5))
    points = ax.scatter(mu[:, 0], mu[:, 1], c=y, cmap="tab10", s=6, alpha=0.8, vmin=-0.5, vmax=9.5)
    plt.colorbar(points, ax=ax, ticks=range(10), label="digit")
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    if title:
        ax.set_title(title)
    return ax
