"""Plots: the ppf grid, the manifold image, grids and curves draw without error and have the right geometry."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
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


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


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


def test_show_images_draws_the_inputs_tiled_with_white_padding():
    x = torch.rand(6, 784, generator=torch.Generator().manual_seed(0))
    ax = show_images(x, nrow=4, title="x")
    drawn = ax.images[0].get_array()
    # 2 rows of 4 cells of 28 px, 2 px of white (1.0) around each; the two empty cells stay white
    expected = np.ones((2 * 30 + 2, 4 * 30 + 2), dtype=np.float32)
    for i in range(6):
        r, c = divmod(i, 4)
        expected[2 + 30 * r : 30 + 30 * r, 2 + 30 * c : 30 + 30 * c] = x[i].reshape(28, 28).numpy()
    np.testing.assert_array_equal(drawn, expected)
    assert ax.images[0].get_clim() == (0, 1) and ax.images[0].get_cmap().name == "gray"
    assert ax.get_title() == "x" and not ax.axison
    # default layout: ceil(sqrt(9)) = 3 per row; on a given axes, that same axes comes back
    _, given = plt.subplots()
    assert show_images(torch.rand(9, 28, 28), ax=given) is given
    assert given.images[0].get_array().shape == (92, 92)


def test_plot_latent_scatter_puts_each_mean_at_its_place_in_its_digit_colour():
    g = torch.Generator().manual_seed(1)
    mu, y = torch.randn(50, 2, generator=g), torch.randperm(50, generator=g) % 10
    ax = plot_latent_scatter(mu, y)
    ax.figure.canvas.draw()  # maps the labels to colours
    (points,) = ax.collections
    np.testing.assert_array_equal(points.get_offsets(), mu.numpy())
    colours = points.get_facecolors()
    assert colours.shape == (50, 4)
    tab10 = np.array(matplotlib.colormaps["tab10"].colors)
    np.testing.assert_allclose(colours[:, :3], tab10[y.numpy()])  # digit k gets the k-th tab10 colour
    assert len({tuple(c) for c in colours}) == 10
    (colorbar_ax,) = [a for a in ax.figure.axes if a is not ax]
    assert colorbar_ax.get_ylabel() == "digit"
    assert list(colorbar_ax.get_yticks()) == list(range(10))
    assert ax.get_xlabel() == "$z_1$" and ax.get_ylabel() == "$z_2$" and ax.get_title() == "posterior means by digit"
    # a digit keeps its colour when only some digits are present (e.g. a batch of 2s and 7s)
    some = plot_latent_scatter(mu[:4], torch.tensor([2, 7, 7, 2]), title=None)
    some.figure.canvas.draw()
    np.testing.assert_allclose(some.collections[0].get_facecolors()[:, :3], tab10[[2, 7, 7, 2]])


def test_figures_draw():
    torch.manual_seed(0)
    model = VAE(VAEConfig(hidden_dims=(16,), z_dim=2))
    history = [{"epoch": 1, "train_elbo": -200, "val_elbo": -190}, {"epoch": 2, "train_elbo": -150, "val_elbo": -149}]
    ax = plot_history(history)
    assert [line.get_label() for line in ax.get_lines()] == ["train elbo", "val elbo"]
    ax = plot_manifold(model, n=4)
    assert ax.images[0].get_array().shape == (122, 122)
    with pytest.raises(ValueError, match="2-d latent space"):
        plot_manifold(VAE(VAEConfig(hidden_dims=(16,), z_dim=3)))
