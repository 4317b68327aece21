"""Plots: the ppf grid, the manifold image, grids and curves draw without error and have the right geometry."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from scipy.stats import norm

from dgmlab.models.vae import VAE, VAEConfig
from dgmlab.plot import (
    image_grid,
    manifold_grid,
    plot_history,
    plot_latent_scatter,
    plot_manifold,
    ppf_grid,
    show_images,
)


def test_ppf_grid_has_equal_prior_mass_per_cell():
    z = ppf_grid(10)
    assert z.shape == (100, 2)
    cdf = norm.cdf(z[:10, 0].numpy())
    np.testing.assert_allclose(np.diff(cdf), 0.1, atol=1e-6)
    assert z[0, 1] > z[-1, 1] and z[0, 0] < z[9, 0], "top-left is (small z1, large z2)"


def test_manifold_grid_decodes_every_grid_point():
    seen = []

    def decode(z):
        seen.append(z)
        return torch.sigmoid(z[:, :1]).expand(-1, 784)  # brightness follows z1

    image = manifold_grid(decode, n=5)
    assert image.shape == (5 * 30 + 2, 5 * 30 + 2)
    torch.testing.assert_close(seen[0], ppf_grid(5))
    left, right = image[2:30, 2:30].mean(), image[2:30, -30:-2].mean()
    assert left < right


def test_image_grid_shapes():
    assert image_grid(torch.rand(25, 784), nrow=5).shape == (152, 152)
    assert image_grid(torch.rand(7, 1, 28, 28)).shape == (92, 92)
    assert image_grid(torch.rand(7, 28, 28), nrow=4).shape == (62, 122)


def test_figures_draw():
    torch.manual_seed(0)
    model = VAE(VAEConfig(hidden_dims=(16,), z_dim=2))
    show_images(torch.rand(9, 784), title="x")
    history = [{"epoch": 1, "train_elbo": -200, "val_elbo": -190}, {"epoch": 2, "train_elbo": -150, "val_elbo": -149}]
    ax = plot_history(history)
    assert [line.get_label() for line in ax.get_lines()] == ["train elbo", "val elbo"]
    ax = plot_manifold(model, n=4)
    assert ax.images[0].get_array().shape == (122, 122)
    plot_latent_scatter(torch.randn(50, 2), torch.arange(50) % 10)
    with pytest.raises(ValueError, match="2-d latent space"):
        plot_manifold(VAE(VAEConfig(hidden_dims=(16,), z_dim=3)))
    matplotlib.pyplot.close("all")
