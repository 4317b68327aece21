"""Diagrams of the book, drawn by matplotlib at build time (no files, no network).

Three figures: the graphical model of a VAE (:func:`graphical_model`), the computation graph before and after the
reparameterisation (:func:`reparameterization_graph`, assignment question 1.11) and an overview of the VAE's
encoder, sampling step and decoder (:func:`vae_overview`).

Every node is a patch whose ``gid`` is ``"node:<name>"`` and every arrow a ``FancyArrowPatch`` whose ``gid`` is
``"edge:<from>-><to>"``, so that tests (and readers of the code) can check what is drawn without looking at pixels.

References:
    Kingma & Welling (2014), *Auto-Encoding Variational Bayes*, figure 1 (the graphical model) and section 2.4
    (the reparameterisation trick).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Rectangle

__all__ = ["graphical_model", "reparameterization_graph", "vae_overview", "drawn_nodes", "drawn_edges"]

RANDOM = "#fde0c5"  # fill of a random node
OBSERVED = "#bdbdbd"  # fill of an observed random node
DETERMINISTIC = "#deebf7"  # fill of a deterministic node


def _axes(ax: Axes | None, size: tuple[float, float], xlim: tuple[float, float], ylim: tuple[float, float]) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=size)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal")
    ax.axis("off")
    return ax


def _node(ax: Axes, name: str, xy: tuple[float, float], label: str, kind: str = "deterministic", r: float = 0.42):
    """A circle for a random variable (shaded if observed), a rounded box for a deterministic value."""
    if kind in ("random", "observed"):
        patch = Circle(xy, r, facecolor=OBSERVED if kind == "observed" else RANDOM, edgecolor="k", lw=1.4)
    else:
        patch = FancyBboxPatch(
            (xy[0] - r * 1.15, xy[1] - r * 0.75), 2.3 * r, 1.5 * r, boxstyle="round,pad=0.05",
            facecolor=DETERMINISTIC, edgecolor="k", lw=1.2,
        )  # fmt: skip
    patch.set_gid(f"node:{name}")
    ax.add_patch(patch)
    ax.text(*xy, label, ha="center", va="center", fontsize=12)
    return patch


def _edge(ax: Axes, a: str, b: str, start, end, label: str = "", dashed: bool = False, color: str = "k",
          rad: float = 0.0, label_offset: tuple[float, float] = (0.0, 0.18)):  # fmt: skip
    arrow = FancyArrowPatch(
        start, end, arrowstyle="-|>", mutation_scale=14, lw=1.5, color=color, linestyle="--" if dashed else "-",
        connectionstyle=f"arc3,rad={rad}", shrinkA=0, shrinkB=0,
    )  # fmt: skip
    arrow.set_gid(f"edge:{a}->{b}")
    ax.add_patch(arrow)
    if label:
        mid = ((start[0] + end[0]) / 2 + label_offset[0], (start[1] + end[1]) / 2 + label_offset[1])
        ax.text(*mid, label, ha="center", va="center", fontsize=10, color=color)
    return arrow


def drawn_nodes(ax: Axes) -> set[str]:
    """Names of the nodes drawn on ``ax`` (from the patches' gids)."""
    return {p.get_gid()[5:] for p in ax.patches if (p.get_gid() or "").startswith("node:")}


def drawn_edges(ax: Axes) -> dict[tuple[str, str], FancyArrowPatch]:
    """The arrows drawn on ``ax``, keyed by ``(from, to)``."""
    edges = {}
    for p in ax.patches:
        gid = p.get_gid() or ""
        if gid.startswith("edge:"):
            a, b = gid[5:].split("->")
            edges[(a, b)] = p
    return edges


def graphical_model(ax: Axes | None = None) -> Axes:
    """The VAE as a directed graphical model: latent ``z`` -> observed ``x`` (the decoder, parameters theta),
    inside a plate over the ``N`` images, and the encoder's dashed arrow ``x`` -> ``z`` (parameters phi): the
    approximate posterior q_phi(z | x) used for inference, not part of the generative model."""
    ax = _axes(ax, (4.6, 3.4), (-2.7, 2.7), (-1.7, 1.7))
    z, x = (0.0, 0.85), (0.0, -0.85)
    ax.add_patch(Rectangle((-1.0, -1.55), 2.0, 3.1, fill=False, lw=1.0, gid="plate:N"))
    ax.text(0.85, -1.42, "$N$", ha="right", va="bottom", fontsize=11)
    _node(ax, "z", z, "$z$", "random")
    _node(ax, "x", x, "$x$", "observed")
    _edge(ax, "z", "x", (z[0] - 0.12, z[1] - 0.42), (x[0] - 0.12, x[1] + 0.42), r"$\theta$", rad=0.0,
          label_offset=(-0.3, 0.0))  # fmt: skip
    _edge(ax, "x", "z", (x[0] + 0.38, x[1] + 0.2), (z[0] + 0.38, z[1] - 0.2), r"$\phi$", dashed=True, rad=0.45,
          label_offset=(0.62, 0.0))  # fmt: skip
    ax.text(1.15, 0.0, "encoder\n$q_\\phi(z \\mid x)$", ha="left", va="center", fontsize=9)
    ax.text(-1.15, 0.0, "decoder\n$p_\\theta(x \\mid z)$", ha="right", va="center", fontsize=9)
    return ax


def reparameterization_graph(axes: tuple[Axes, Axes] | None = None) -> tuple[Axes, Axes]:
    """The computation graph of the loss before (left) and after (right) the reparameterisation
    ``z = mu + sigma * eps``. Circles are random nodes, boxes deterministic ones; red dashed arrows are the paths
    along which back-propagation reaches ``mu`` and ``sigma``. Before, ``z`` is a random node drawn from
    N(mu, sigma^2) and no gradient passes through it; after, the randomness sits in ``eps``, a leaf that needs no
    gradient, and ``z`` is a deterministic function of ``mu``, ``sigma`` and ``eps``."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(9.0, 3.4))
    titles = ("before: $z \\sim \\mathcal{N}(\\mu, \\sigma^2)$", "after: $z = \\mu + \\sigma \\odot \\epsilon$")
    for ax, title, after in zip(axes, titles, (False, True)):
        _axes(ax, (4.5, 3.4), (-0.8, 6.2), (-1.9, 2.3))
        ax.set_title(title, fontsize=11)
        mu, sigma, z, f, eps = (0.0, 1.1), (0.0, -0.6), (2.3, 0.25), (4.0, 0.25), (2.3, -1.35)
        _node(ax, "mu", mu, "$\\mu$")
        _node(ax, "sigma", sigma, "$\\sigma$")
        _node(ax, "z", z, "$z$", "deterministic" if after else "random")
        _node(ax, "loss", f, "$f(z)$")
        _edge(ax, "mu", "z", (0.5, 1.0), (1.85, 0.4))
        _edge(ax, "sigma", "z", (0.5, -0.5), (1.85, 0.1))
        _edge(ax, "z", "loss", (2.78, 0.25), (3.5, 0.25))
        if after:
            _node(ax, "eps", eps, "$\\epsilon$", "random")
            ax.text(eps[0] + 0.55, eps[1], "$\\sim \\mathcal{N}(0, I)$", ha="left", va="center", fontsize=9)
            _edge(ax, "eps", "z", (eps[0], eps[1] + 0.42), (z[0], z[1] - 0.35))
            # back-propagation reaches mu and sigma
            _edge(ax, "loss", "mu", (3.7, 0.6), (0.5, 1.3), r"$\partial f / \partial \mu$", color="C3",
                  dashed=True, rad=0.2, label_offset=(0.0, 0.6))  # fmt: skip
            _edge(ax, "loss", "sigma", (3.7, -0.05), (0.5, -0.85), r"$\partial f / \partial \sigma$", color="C3",
                  dashed=True, rad=-0.1, label_offset=(-0.75, -0.75))  # fmt: skip
        else:
            ax.text(2.3, -1.0, "random node:\nno gradient\npasses through $z$", ha="center", va="center",
                    fontsize=9, color="C3")  # fmt: skip
    return tuple(axes)


def vae_overview(ax: Axes | None = None) -> Axes:
    """A VAE from input to loss: the encoder maps ``x`` to ``mu`` and ``logvar``; the sampling step draws
    ``eps ~ N(0, I)`` and sets ``z = mu + exp(logvar / 2) * eps``; the decoder maps ``z`` to the logits ``x_logits``;
    the loss adds the reconstruction term ``-log p(x | z)`` and the KL term, which depends on ``mu`` and ``logvar``
    only."""
    ax = _axes(ax, (10.5, 4.2), (-0.7, 13.0), (-2.9, 2.4))
    pos = {
        "x": (0.0, 0.0), "encoder": (1.9, 0.0), "mu": (3.8, 0.8), "logvar": (3.8, -0.8), "z": (6.0, 0.0),
        "eps": (6.0, 1.7), "decoder": (7.9, 0.0), "x_logits": (9.8, 0.0), "recon": (12.0, 0.0), "kl": (3.8, -2.3),
    }  # fmt: skip
    _node(ax, "x", pos["x"], "$x$", "observed")
    _node(ax, "encoder", pos["encoder"], "encoder\n$\\phi$", r=0.55)
    _node(ax, "mu", pos["mu"], "$\\mu$")
    _node(ax, "logvar", pos["logvar"], "$\\log \\sigma^2$")
    _node(ax, "z", pos["z"], "$z$", r=0.48)
    _node(ax, "eps", pos["eps"], "$\\epsilon$", "random", r=0.36)
    _node(ax, "decoder", pos["decoder"], "decoder\n$\\theta$", r=0.55)
    _node(ax, "x_logits", pos["x_logits"], "$\\ell$", r=0.42)
    _node(ax, "recon", pos["recon"], "$-\\log p_\\theta(x \\mid z)$", r=0.85)
    _node(ax, "kl", pos["kl"], "KL$(q \\,\\|\\, p)$", r=0.72)
    ax.text(6.0, -0.62, "$z = \\mu + \\sigma \\odot \\epsilon$", ha="center", va="top", fontsize=9)
    ax.text(6.45, 1.7, "$\\sim \\mathcal{N}(0, I)$", ha="left", va="center", fontsize=9)
    ax.text(11.0, -1.5, "loss = $-\\log p_\\theta(x \\mid z)$ + $\\beta$ KL", ha="center", va="center", fontsize=10)

    def e(a, b, da=(0.55, 0.0), db=(-0.55, 0.0), **kw):
        (xa, ya), (xb, yb) = pos[a], pos[b]
        return _edge(ax, a, b, (xa + da[0], ya + da[1]), (xb + db[0], yb + db[1]), **kw)

    e("x", "encoder", da=(0.42, 0), db=(-0.7, 0))
    e("encoder", "mu", da=(0.7, 0.2), db=(-0.5, -0.1))
    e("encoder", "logvar", da=(0.7, -0.2), db=(-0.5, 0.1))
    e("mu", "z", da=(0.5, -0.1), db=(-0.55, 0.15))
    e("logvar", "z", da=(0.5, 0.1), db=(-0.55, -0.15))
    e("eps", "z", da=(0.0, -0.36), db=(0.0, 0.37))
    e("z", "decoder", da=(0.55, 0), db=(-0.7, 0))
    e("decoder", "x_logits", da=(0.7, 0), db=(-0.49, 0))
    e("x_logits", "recon", da=(0.49, 0.0), db=(-0.99, 0.0))
    e("mu", "kl", da=(0.5, -0.25), db=(0.84, 0.15), rad=-0.55, color="0.4")
    e("logvar", "kl", da=(0.0, -0.35), db=(0.0, 0.55), color="0.4")
    return ax
