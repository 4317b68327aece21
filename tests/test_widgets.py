"""Tests for dgmlab.widgets: structure and images of the widgets, their errors, their static fallbacks, and the
widgets rendered without a kernel by the vendored ipywidgets bundle in headless Chromium (sliders moved with the
keyboard, pixels read back)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from dgmlab import widgets as W

matplotlib.use("Agg")
ipywidgets = pytest.importorskip("ipywidgets")

REPO_WIDGETS_JS = Path(__file__).resolve().parents[1] / "book" / "_static" / "widgets"  # vendored bundle


def blob_decode(z: torch.Tensor) -> torch.Tensor:
    """A stand-in decoder: a bright Gaussian blob whose position follows z. [m, 2] -> [m, 784] in (0, 1]."""
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")  # [28, 28]
    cx = 14 + 5 * z[:, 0, None, None]  # [m, 1, 1]
    cy = 14 + 5 * z[:, 1, None, None]
    return torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 18).reshape(len(z), 784)


def png_pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def expected_pixels(z1: float, z2: float, scale: int) -> np.ndarray:
    img = blob_decode(torch.tensor([[z1, z2]], dtype=torch.float32))[0].reshape(28, 28).numpy()
    img = np.rint(img * 255).astype(np.uint8)
    return img.repeat(scale, 0).repeat(scale, 1)


def find(widget, cls):
    """All descendants of ``widget`` (itself included) that are instances of ``cls``, depth first."""
    out = [widget] if isinstance(widget, cls) else []
    for child in getattr(widget, "children", ()):
        out += find(child, cls)
    return out


def links_from(source) -> list[tuple[str, str, str]]:
    """(source attribute, target model id, target attribute) of every jsdlink whose source is ``source``."""
    state = ipywidgets.Widget.get_manager_state(drop_defaults=False)["state"]
    out = []
    for s in state.values():
        if s["model_name"] == "DirectionalLinkModel":
            (src, src_attr), (tgt, tgt_attr) = s["state"]["source"], s["state"]["target"]
            if src == f"IPY_MODEL_{source.model_id}":
                out.append((src_attr, tgt.removeprefix("IPY_MODEL_"), tgt_attr))
    return out


# ------------------------------------------------------------------------------------------------ ppf values
def test_ppf_values_match_the_manifold_grid():
    from dgmlab.plot import ppf_grid

    v = W.ppf_values(7)
    assert v.shape == (7,) and np.all(np.diff(v) > 0)
    np.testing.assert_allclose(v, -v[::-1], atol=1e-12)  # symmetric around the prior mean
    # the sliders stop exactly at the points of the static ppf figure
    np.testing.assert_allclose(np.unique(ppf_grid(7)[:, 0].numpy()), v, atol=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        W.ppf_values(1)


# ---------------------------------------------------------------------------------------------- the explorer
def test_latent_explorer_precomputes_every_slider_position():
    n, scale = 5, 3
    box = W.latent_explorer(blob_decode, n=n, scale=scale)
    assert W.LATENT_EXPLORER_CLASS in box._dom_classes
    s1, s2 = find(box, ipywidgets.SelectionSlider)
    assert (s1.description, s2.description) == ("z1", "z2")
    values = W.ppf_values(n)
    assert s1._options_labels == tuple(f"{v:+.2f}" for v in values)
    assert s1.index == s2.index == n // 2  # starts at the prior mean
    grid = find(box, ipywidgets.Stack)[0]
    assert len(grid.children) == n and all(len(row.children) == n for row in grid.children)
    for i in (0, 2, 4):
        for j in (0, 3):
            shown = png_pixels(grid.children[i].children[j].value)
            np.testing.assert_array_equal(shown, expected_pixels(values[i], values[j], scale))
    # z1 selects the row, z2 the column in every row, both through browser-side links
    assert links_from(s1) == [("index", grid.model_id, "selected_index")]
    assert sorted(t for _, t, _ in links_from(s2)) == sorted(row.model_id for row in grid.children)


def test_latent_explorer_moves_only_the_chosen_dims_of_a_larger_latent():
    seen = []

    def decode(z):
        seen.append(z.clone())
        return blob_decode(z[:, [3, 1]])

    W.latent_explorer(decode, values=[-1.0, 0.0, 1.0], z_dim=5, dims=(3, 1))
    z = seen[0]  # [9, 5]
    assert z.shape == (9, 5)
    assert torch.all(z[:, [0, 2, 4]] == 0)
    assert sorted(set(z[:, 3].tolist())) == [-1.0, 0.0, 1.0] and sorted(set(z[:, 1].tolist())) == [-1.0, 0.0, 1.0]


def test_latent_explorer_live_mode_redraws_on_slider_moves():
    box = W.latent_explorer(blob_decode, live=True, scale=2)
    s1, s2 = find(box, ipywidgets.FloatSlider)
    (image,) = find(box, ipywidgets.Image)
    np.testing.assert_array_equal(png_pixels(image.value), expected_pixels(0.0, 0.0, 2))
    s1.value, s2.value = 1.0, -0.5
    np.testing.assert_array_equal(png_pixels(image.value), expected_pixels(1.0, -0.5, 2))


def test_latent_explorer_accepts_a_dgmlab_vae():
    from dgmlab.models.vae import VAE, VAEConfig

    torch.manual_seed(0)
    model = VAE(VAEConfig(hidden_dims=(16,), z_dim=2))
    box = W.latent_explorer(model, n=3, scale=1)
    grid = find(box, ipywidgets.Stack)[0]
    z = torch.tensor([[W.ppf_values(3)[0], W.ppf_values(3)[2]]], dtype=torch.float32)
    with torch.no_grad():
        want = np.rint(model.mean(model.decode(z))[0].reshape(28, 28).numpy() * 255).astype(np.uint8)
    np.testing.assert_array_equal(png_pixels(grid.children[0].children[2].value), want)


@pytest.mark.parametrize(
    ("decode", "kwargs", "match"),
    [
        (lambda z: 4 * blob_decode(z) - 2, {}, r"outside \[0, 1\].*model.mean"),  # logits, not pixel means
        (lambda z: blob_decode(z)[:1], {}, "returned 1 images for"),
        (lambda z: torch.rand(len(z), 780), {}, "not a square"),
        (lambda z: blob_decode(z) * float("nan"), {}, "NaN"),
        (blob_decode, {"dims": (0, 0)}, "two different coordinates"),
        (blob_decode, {"values": [0.5]}, "at least 2"),
    ],
)
def test_latent_explorer_errors_say_what_is_wrong(decode, kwargs, match):
    with pytest.raises(ValueError, match=match):
        W.latent_explorer(decode, n=3, **kwargs)


# ------------------------------------------------------------------------------------------ the interpolation
def test_interpolation_slider_shows_each_image_in_order():
    x = torch.rand(6, 1, 28, 28)
    box = W.interpolation_slider(x, scale=2, title="a < b")
    assert W.INTERPOLATION_CLASS in box._dom_classes
    assert "a &lt; b" in find(box, ipywidgets.HTML)[0].value  # the title is escaped
    (slider,) = find(box, ipywidgets.SelectionSlider)
    assert slider._options_labels == ("0.00", "0.20", "0.40", "0.60", "0.80", "1.00")
    stack = find(box, ipywidgets.Stack)[0]
    assert links_from(slider) == [("index", stack.model_id, "selected_index")]
    for k, child in enumerate(stack.children):
        want = np.rint(x[k, 0].numpy() * 255).astype(np.uint8).repeat(2, 0).repeat(2, 1)
        np.testing.assert_array_equal(png_pixels(child.value), want)


def test_interpolation_slider_errors():
    with pytest.raises(ValueError, match="at least 2 images"):
        W.interpolation_slider(torch.rand(1, 784))
    with pytest.raises(ValueError, match="3 labels for 2 images"):
        W.interpolation_slider(torch.rand(2, 784), labels=["a", "b", "c"])
    with pytest.raises(ValueError, match="channels"):
        W.interpolation_slider(torch.rand(2, 2, 28, 28))


# ---------------------------------------------------------------------------------------- static fallbacks
def test_static_fallbacks_draw_the_same_images():
    import matplotlib.pyplot as plt

    from dgmlab.plot import manifold_grid

    ax = W.latent_explorer_static(blob_decode, n=4)
    shown = ax.get_images()[0].get_array()
    np.testing.assert_allclose(shown, manifold_grid(blob_decode, 4).numpy(), atol=1e-6)
    plt.close(ax.figure)
    strip = torch.rand(5, 784)
    ax = W.interpolation_strip(strip, title="strip")
    img = ax.get_images()[0].get_array()
    assert img.shape[1] > 4 * img.shape[0]  # one row of five digits
    assert ax.get_title() == "strip"
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="outside"):
        W.latent_explorer_static(lambda z: blob_decode(z) + 1, n=3)


# ----------------------------------------------------------------------- rendered without a kernel, in Chromium
@pytest.mark.browser
def test_widgets_work_without_a_kernel_in_chromium(tmp_path, open_page, serve):
    """The saved widget state, rendered by the vendored html-manager bundle: the sliders move the images."""
    from ipywidgets.embed import embed_minimal_html

    n, scale = 5, 3
    explorer = W.latent_explorer(blob_decode, n=n, scale=scale)
    strip = blob_decode(torch.linspace(-1, 1, 4)[:, None].repeat(1, 2))
    interp = W.interpolation_slider(strip, scale=scale)
    shutil.copytree(REPO_WIDGETS_JS, tmp_path / "widgets")
    # drop_defaults=False: the full state, as an executed notebook stores it (with the defaults dropped,
    # SelectionSlider's index 0 would go missing: ipywidgets' Python and JS defaults for it differ)
    embed_minimal_html(
        tmp_path / "page.html",
        views=[explorer, interp],
        title="widgets",
        requirejs=False,
        embed_url="widgets/embed.js",
        drop_defaults=False,
    )
    page_html = tmp_path / "page.html"  # no favicon.ico to ask the server for (a 404 is a console error)
    page_html.write_text(page_html.read_text().replace("<head>", '<head><link rel="icon" href="data:,">', 1))
    values = W.ppf_values(n)
    pixels_js = """root => {
        const img = root.querySelector('img');
        if (!img || !img.complete || img.naturalWidth === 0) return null;
        const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        const ctx = c.getContext('2d');
        ctx.drawImage(img, 0, 0);
        const d = ctx.getImageData(0, 0, c.width, c.height).data;
        const out = [];
        for (let i = 0; i < d.length; i += 4) out.push(d[i]);
        return [c.width, c.height, out];
    }"""

    def shown(page, selector):
        page.wait_for_function(
            f"() => {{ const i = document.querySelector('{selector} img');"
            " return i && i.complete && i.naturalWidth > 0; }"
        )
        w, h, red = page.eval_on_selector(selector, pixels_js)
        return np.array(red, dtype=np.uint8).reshape(h, w)

    with serve(tmp_path) as base:
        page, log = open_page(f"{base}/page.html")
        ex = f".{W.LATENT_EXPLORER_CLASS}"
        page.wait_for_selector(f"{ex} .noUi-handle")
        np.testing.assert_array_equal(shown(page, ex), expected_pixels(values[2], values[2], scale))
        handles = page.locator(f"{ex} .noUi-handle")
        handles.nth(0).focus()
        page.keyboard.press("ArrowRight")
        page.keyboard.press("ArrowRight")  # z1: index 2 -> 4
        handles.nth(1).focus()
        page.keyboard.press("ArrowLeft")  # z2: index 2 -> 1
        page.wait_for_function(
            f"() => document.querySelectorAll('{ex} .widget-readout')[0].textContent === '{values[4]:+.2f}'"
        )
        page.wait_for_timeout(200)
        np.testing.assert_array_equal(shown(page, ex), expected_pixels(values[4], values[1], scale))

        it = f".{W.INTERPOLATION_CLASS}"
        first = shown(page, it)
        page.locator(f"{it} .noUi-handle").focus()
        page.keyboard.press("End")  # to the last image
        page.wait_for_timeout(300)
        last = shown(page, it)
        want = [
            np.rint(strip[k].reshape(28, 28).numpy() * 255).astype(np.uint8).repeat(scale, 0).repeat(scale, 1)
            for k in (0, 3)
        ]
        np.testing.assert_array_equal(first, want[0])
        np.testing.assert_array_equal(last, want[1])
        assert not log.problems(), "\n".join(log.problems())
