"""The book's diagrams draw the nodes and arrows they promise (checked through the artists' gids, not pixels)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from dgmlab import diagrams  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def texts(ax):
    return " ".join(t.get_text() for t in ax.texts) + " " + ax.get_title()


def test_graphical_model_has_z_to_x_and_the_dashed_encoder_arrow():
    ax = diagrams.graphical_model()
    assert diagrams.drawn_nodes(ax) == {"z", "x"}
    edges = diagrams.drawn_edges(ax)
    assert set(edges) == {("z", "x"), ("x", "z")}
    assert edges[("z", "x")].get_linestyle() == "-"
    assert edges[("x", "z")].get_linestyle() == "--"  # the encoder is inference, not generation
    observed = {p.get_gid(): p.get_facecolor() for p in ax.patches if p.get_gid() in ("node:x", "node:z")}
    assert observed["node:x"] != observed["node:z"]  # x is shaded (observed), z is not
    assert any(p.get_gid() == "plate:N" for p in ax.patches)
    for label in (r"$\theta$", r"$\phi$", "$N$"):
        assert label in texts(ax)


def test_reparameterization_graph_moves_the_randomness_into_eps():
    before, after = diagrams.reparameterization_graph()
    assert diagrams.drawn_nodes(before) == {"mu", "sigma", "z", "loss"}
    assert diagrams.drawn_nodes(after) == {"mu", "sigma", "z", "loss", "eps"}
    # z is a random node (a circle) before, a deterministic one (a box) after
    kind = {ax: type(next(p for p in ax.patches if p.get_gid() == "node:z")).__name__ for ax in (before, after)}
    assert kind[before] == "Circle" and kind[after] == "FancyBboxPatch"
    forward = {("mu", "z"), ("sigma", "z"), ("z", "loss")}
    assert set(diagrams.drawn_edges(before)) == forward
    edges_after = diagrams.drawn_edges(after)
    assert set(edges_after) == forward | {("eps", "z"), ("loss", "mu"), ("loss", "sigma")}
    # the gradient paths exist only after, and are drawn dashed
    assert {edges_after[("loss", w)].get_linestyle() for w in ("mu", "sigma")} == {"--"}
    assert "no gradient" in texts(before)


def test_vae_overview_goes_from_x_through_the_sampling_step_to_the_loss():
    ax = diagrams.vae_overview()
    names = {"x", "encoder", "mu", "logvar", "z", "eps", "decoder", "x_logits", "recon", "kl"}
    assert diagrams.drawn_nodes(ax) == names
    edges = set(diagrams.drawn_edges(ax))
    chain = [("x", "encoder"), ("encoder", "mu"), ("encoder", "logvar"), ("mu", "z"), ("logvar", "z"), ("eps", "z"),
             ("z", "decoder"), ("decoder", "x_logits"), ("x_logits", "recon")]  # fmt: skip
    assert set(chain) <= edges
    assert {("mu", "kl"), ("logvar", "kl")} <= edges  # the KL term depends on the encoder's outputs only
    assert not any(b == "kl" and a not in ("mu", "logvar") for a, b in edges)
    assert r"$z = \mu + \sigma \odot \epsilon$" in texts(ax)


def test_diagrams_draw_on_given_axes():
    fig, axes = plt.subplots(1, 4)
    assert diagrams.graphical_model(axes[0]) is axes[0]
    assert diagrams.reparameterization_graph((axes[1], axes[2])) == (axes[1], axes[2])
    assert diagrams.vae_overview(axes[3]) is axes[3]
    fig.canvas.draw()  # renders without error
