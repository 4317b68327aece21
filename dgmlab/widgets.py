"""Interactive figures for the notebooks, each with a static fallback for the printed page.

Two widgets, built from `ipywidgets <https://ipywidgets.readthedocs.io>`_:

- :func:`latent_explorer`: sliders for ``z1`` and ``z2`` and the digit the decoder draws at ``z = (z1, z2)``
  (the 2-d VAE of Kingma & Welling 2014, figure 4). Static fallback: :func:`latent_explorer_static`, the
  decoded ppf grid of :func:`dgmlab.plot.manifold_grid`.
- :func:`interpolation_slider`: one slider that walks along a strip of images, for instance the decodings of
  ``z_t = (1 - t) z_0 + t z_1``. Static fallback: :func:`interpolation_strip`, the whole strip in one figure.

Why precomputed images: the rendered book has no Python kernel, so a slider cannot call ``decode``.
Instead the widgets decode every slider position once, keep the images in ``ipywidgets.Stack`` containers
and tie each slider to its stack with ``jsdlink`` (a link that runs in the browser). The widget state saved
in the executed notebook then works in the static HTML too: moving a slider in the book changes the digit,
with no kernel at all.
``latent_explorer(..., live=True)`` instead decodes on every move (continuous sliders, needs a kernel).
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

__all__ = [
    "latent_explorer",
    "latent_explorer_static",
    "interpolation_slider",
    "interpolation_strip",
    "ppf_values",
    "to_png",
]

Decode = Callable[[torch.Tensor], torch.Tensor]

# CSS classes put on the outer widgets, so the book's browser test (and a reader's stylesheet) can find them.
LATENT_EXPLORER_CLASS = "dgmlab-latent-explorer"
INTERPOLATION_CLASS = "dgmlab-interpolation-slider"


def _widgets():
    """Import ipywidgets with an error that says how to get it."""
    try:
        import ipywidgets
    except ImportError as err:  # pragma: no cover - ipywidgets is in requirements.txt
        raise ImportError(
            "dgmlab.widgets needs ipywidgets; install it with `pip install ipywidgets` "
            "(or use the static fallbacks latent_explorer_static / interpolation_strip)"
        ) from err
    return ipywidgets


def ppf_values(n: int) -> np.ndarray:
    """Slider positions: :func:`dgmlab.plot.ppf_values` (equal prior mass per step), the very points the static
    manifold figure shows. ``n`` must be at least 2 (a slider needs two stops)."""
    from dgmlab.plot import ppf_values as values

    if n < 2:
        raise ValueError(f"n must be at least 2, got {n}")
    return values(n)


def _as_images(x: torch.Tensor | np.ndarray, image_shape: tuple[int, int] | None, what: str) -> np.ndarray:
    """Bring a batch of images to a uint8 array [n, H, W] or [n, H, W, 3], checking values are in [0, 1]."""
    a = x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)
    if a.ndim == 2:  # [n, H*W]: flat images
        if image_shape is None:
            side = math.isqrt(a.shape[1])
            if side * side != a.shape[1]:
                raise ValueError(
                    f"{what} gave flat images of length {a.shape[1]}, which is not a square; "
                    "pass image_shape=(height, width)"
                )
            image_shape = (side, side)
        if image_shape[0] * image_shape[1] != a.shape[1]:
            raise ValueError(f"image_shape={image_shape} does not match flat images of length {a.shape[1]}")
        a = a.reshape(a.shape[0], *image_shape)  # [n, H, W]
    elif a.ndim == 4:  # [n, C, H, W]
        if a.shape[1] == 1:
            a = a[:, 0]  # [n, H, W]
        elif a.shape[1] == 3:
            a = a.transpose(0, 2, 3, 1)  # [n, H, W, 3]
        else:
            raise ValueError(f"{what} gave images with {a.shape[1]} channels; expected 1 or 3")
    elif a.ndim != 3:
        raise ValueError(
            f"{what} gave an array of shape {tuple(a.shape)}; expected [n, H*W], [n, H, W] or [n, C, H, W]"
        )
    if not np.isfinite(a).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())
    if lo < -1e-4 or hi > 1 + 1e-4:
        raise ValueError(
            f"{what} has values in [{lo:.3g}, {hi:.3g}], outside [0, 1]: images must be pixel means, e.g. "
            "decode=lambda z: model.mean(model.decode(z)) for a dgmlab VAE, whose decode returns logits"
        )
    return np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)


def to_png(image: np.ndarray, scale: int = 1) -> bytes:
    """Encode one uint8 image [H, W] (grey) or [H, W, 3] (RGB) as PNG, enlarged ``scale`` times (nearest).

    Enlarging in the PNG keeps pixels sharp in every browser (a browser blurs a small image it stretches).
    """
    from PIL import Image

    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    big = image.repeat(scale, axis=0).repeat(scale, axis=1)
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _resolve_decode(decode, device) -> tuple[Decode, torch.device]:
    """The function to call and the device to build z on.

    A dgmlab VAE (an ``nn.Module`` with ``decode`` and ``mean``) is turned into ``z -> model.mean(model.decode(z))``
    on the model's device; for a bound method of a module, the module's device; else ``device`` or the CPU.
    """
    owner = getattr(decode, "__self__", decode)
    dev = None
    if isinstance(owner, torch.nn.Module):
        dev = next((p.device for p in owner.parameters()), None)
    if isinstance(decode, torch.nn.Module) and hasattr(decode, "decode") and hasattr(decode, "mean"):
        model = decode

        def decode(z: torch.Tensor) -> torch.Tensor:
            return model.mean(model.decode(z))

    if device is not None:
        dev = torch.device(device)
    return decode, dev or torch.device("cpu")


def _decode_grid(decode: Decode, z: torch.Tensor, image_shape, what: str) -> np.ndarray:
    with torch.no_grad():
        out = decode(z)
    if not isinstance(out, torch.Tensor | np.ndarray):
        raise TypeError(f"{what} must return a tensor of images, got {type(out).__name__}")
    if out.shape[0] != z.shape[0]:
        raise ValueError(f"{what} returned {out.shape[0]} images for {z.shape[0]} latent points")
    return _as_images(out, image_shape, what)


def _check_dims(dims: tuple[int, int], z_dim: int) -> tuple[int, int]:
    d1, d2 = dims
    if not (0 <= d1 < z_dim and 0 <= d2 < z_dim) or d1 == d2:
        raise ValueError(f"dims={dims} must be two different coordinates in [0, {z_dim}) (z_dim={z_dim})")
    return d1, d2


def _image_widget(image: np.ndarray, scale: int):
    """An ``ipywidgets.Image`` showing a uint8 image [H, W(, 3)] at ``scale`` screen pixels per pixel."""
    w = _widgets()
    height, width = image.shape[0] * scale, image.shape[1] * scale
    layout = w.Layout(width=f"{width}px", height=f"{height}px")
    return w.Image(value=to_png(image, scale), format="png", layout=layout)


def latent_explorer(
    decode: Decode,
    values: Sequence[float] | np.ndarray | None = None,
    n: int = 11,
    *,
    dims: tuple[int, int] = (0, 1),
    z_dim: int = 2,
    live: bool = False,
    image_shape: tuple[int, int] | None = None,
    scale: int = 4,
    device: torch.device | str | None = None,
    title: str | None = "Decoded digit at z = (z1, z2)",
):
    """Sliders for two latent coordinates and the image the decoder draws there.

    With ``live=False`` (default) every slider position is decoded once, here, into ``n * n`` images kept in
    nested ``Stack`` widgets that the sliders select through browser-side links: it works in Jupyter, in
    VS Code and in the static book (no kernel needed). With ``live=True`` the sliders are continuous and each
    move calls ``decode`` (a kernel is needed; the static book shows the first image only).

    Args:
        decode: a function mapping a tensor [m, z_dim] to images with values in [0, 1] ([m, H*W], [m, H, W]
            or [m, C, H, W]), or a dgmlab VAE itself (then ``z -> model.mean(model.decode(z))`` on its device).
        values: slider positions, shared by both coordinates; default ``ppf_values(n)`` (equal prior mass).
        n: number of positions per slider when ``values`` is not given.
        dims: the two latent coordinates the sliders move; the other ones stay at 0 (the prior mean).
        z_dim: latent dimension D of ``decode``'s input.
        live: decode on every move instead of precomputing (continuous sliders in [-3, 3]).
        image_shape: (H, W) of flat images, if not square.
        scale: each image pixel is shown as ``scale x scale`` screen pixels.
        device: where to build ``z``; default the device of the module behind ``decode``, else CPU.
        title: text above the widget, or ``None``.

    Returns:
        An ``ipywidgets.VBox`` (display it, or make it the last expression of a cell).

    References:
        Kingma & Welling (2014), Auto-Encoding Variational Bayes, figure 4.
    """
    w = _widgets()
    d1, d2 = _check_dims(dims, z_dim)
    decode, dev = _resolve_decode(decode, device)
    values = ppf_values(n) if values is None else np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) < 2:
        raise ValueError(f"values must be a 1-d sequence of at least 2 numbers, got shape {values.shape}")
    start = int(np.argmin(np.abs(values)))  # the position closest to the prior mean

    def z_at(a: np.ndarray, b: np.ndarray) -> torch.Tensor:
        z = torch.zeros(len(a), z_dim, device=dev)  # [m, D]
        z[:, d1] = torch.as_tensor(a, dtype=torch.float32, device=dev)
        z[:, d2] = torch.as_tensor(b, dtype=torch.float32, device=dev)
        return z

    header = [w.HTML(f"<b>{html.escape(title)}</b>")] if title else []

    if live:
        s1 = w.FloatSlider(value=0.0, min=-3.0, max=3.0, step=0.05, description=f"z{d1 + 1}")
        s2 = w.FloatSlider(value=0.0, min=-3.0, max=3.0, step=0.05, description=f"z{d2 + 1}")

        def draw() -> np.ndarray:  # [H, W(, 3)] uint8
            z = z_at(np.array([s1.value]), np.array([s2.value]))  # [1, D]
            return _decode_grid(decode, z, image_shape, "decode")[0]

        first = draw()
        image = _image_widget(first, scale)

        def on_change(_change) -> None:
            image.value = to_png(draw(), scale)

        s1.observe(on_change, names="value")
        s2.observe(on_change, names="value")
        box = w.VBox([*header, w.HBox([image, w.VBox([s1, s2])])])
        box.add_class(LATENT_EXPLORER_CLASS)
        return box

    # z grid [n * n, D]: row i is z1 = values[i], column j is z2 = values[j]
    a = np.repeat(values, len(values))
    b = np.tile(values, len(values))
    imgs = _decode_grid(decode, z_at(a, b), image_shape, "decode")  # [n*n, H, W(, 3)]
    options = [(f"{v:+.2f}", i) for i, v in enumerate(values)]
    s1 = w.SelectionSlider(options=options, index=start, description=f"z{d1 + 1}", continuous_update=True)
    s2 = w.SelectionSlider(options=options, index=start, description=f"z{d2 + 1}", continuous_update=True)
    rows = []
    for i in range(len(values)):
        cells = [_image_widget(imgs[i * len(values) + j], scale) for j in range(len(values))]
        row = w.Stack(children=cells, selected_index=start)
        w.jsdlink((s2, "index"), (row, "selected_index"))  # z2 picks the column inside every row
        rows.append(row)
    grid = w.Stack(children=rows, selected_index=start)
    w.jsdlink((s1, "index"), (grid, "selected_index"))  # z1 picks the row
    box = w.VBox([*header, w.HBox([grid, w.VBox([s1, s2])])])
    box.add_class(LATENT_EXPLORER_CLASS)
    return box


def latent_explorer_static(
    decode: Decode,
    n: int = 20,
    *,
    dims: tuple[int, int] = (0, 1),
    z_dim: int = 2,
    side: int = 28,
    device: torch.device | str | None = None,
    ax=None,
    title: str | None = "decoded images on a ppf grid of z",
):
    """Static fallback of :func:`latent_explorer`: every slider position at once, as one ``n x n`` image.

    The grid is :func:`dgmlab.plot.manifold_grid` (columns: z1 increasing to the right; rows: z2 decreasing
    downwards); the other latent coordinates stay at 0.

    Args:
        decode: as in :func:`latent_explorer` (maps [m, z_dim] to images in [0, 1]).
        n: grid points per axis.
        dims, z_dim, device: as in :func:`latent_explorer`.
        side: image side in pixels (flat images of ``side * side`` values).
        ax: matplotlib axes to draw on; default a new figure.
        title: axes title, or ``None``.

    Returns:
        The matplotlib axes.
    """
    import matplotlib.pyplot as plt

    from dgmlab import plot

    d1, d2 = _check_dims(dims, z_dim)
    decode, dev = _resolve_decode(decode, device)

    def decode_2d(z2: torch.Tensor) -> torch.Tensor:  # [m, 2] -> [m, side*side] on the CPU
        z = torch.zeros(len(z2), z_dim, device=dev)  # [m, D]
        z[:, d1], z[:, d2] = z2[:, 0].to(dev), z2[:, 1].to(dev)
        out = decode(z)
        _as_images(out, (side, side), "decode")  # same checks (shape, range) as the widget
        return torch.as_tensor(out).detach().float().cpu().reshape(len(z), side * side)

    image = plot.manifold_grid(decode_2d, n, side=side)  # [H, W]
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(image.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def interpolation_slider(
    images: torch.Tensor | np.ndarray,
    labels: Sequence[str] | None = None,
    *,
    image_shape: tuple[int, int] | None = None,
    scale: int = 4,
    description: str = "t",
    title: str | None = None,
):
    """A slider that walks along a strip of images (a latent interpolation, training snapshots, ...).

    The images are encoded once and kept in a ``Stack`` that the slider selects with a browser-side link, so
    the widget also works in the static book, without a kernel.

    Args:
        images: [n, H*W], [n, H, W] or [n, C, H, W] with values in [0, 1], in slider order.
        labels: one label per image shown as the slider's readout; default ``t`` from 0 to 1 in ``n`` steps.
        image_shape: (H, W) of flat images, if not square.
        scale: each image pixel is shown as ``scale x scale`` screen pixels.
        description: the slider's name.
        title: text above the widget, or ``None``.

    Returns:
        An ``ipywidgets.VBox``.
    """
    w = _widgets()
    imgs = _as_images(images, image_shape, "images")
    n = len(imgs)
    if n < 2:
        raise ValueError(f"an interpolation needs at least 2 images, got {n}")
    if labels is None:
        labels = [f"{t:.2f}" for t in np.linspace(0.0, 1.0, n)]
    if len(labels) != n:
        raise ValueError(f"got {len(labels)} labels for {n} images")
    stack = w.Stack(children=[_image_widget(im, scale) for im in imgs], selected_index=0)
    slider = w.SelectionSlider(
        options=[(str(lab), i) for i, lab in enumerate(labels)],
        index=0,
        description=description,
        continuous_update=True,
    )
    w.jsdlink((slider, "index"), (stack, "selected_index"))
    header = [w.HTML(f"<b>{html.escape(title)}</b>")] if title else []
    box = w.VBox([*header, stack, slider])
    box.add_class(INTERPOLATION_CLASS)
    return box


def interpolation_strip(images: torch.Tensor | np.ndarray, ax=None, title: str | None = None, **kwargs):
    """Static fallback of :func:`interpolation_slider`: all the images side by side in one row.

    Args:
        images: as in :func:`interpolation_slider`.
        ax: matplotlib axes to draw on; default a new figure.
        title: axes title.
        **kwargs: passed on to :func:`dgmlab.plot.show_images`.

    Returns:
        What :func:`dgmlab.plot.show_images` returns (the matplotlib axes).
    """
    from dgmlab import plot

    x = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    _as_images(x, None, "images")  # the same shape and [0, 1] checks as the widget
    return plot.show_images(x, nrow=len(x), ax=ax, title=title, **kwargs)
