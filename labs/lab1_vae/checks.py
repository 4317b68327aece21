"""Lab 1 hidden checks: run in the GRADER's process on the data a submission exported. Never sent to a kernel.

Each check raises ``Fail`` with a message for the student (what is wrong, never the reference values) or returns.
The points of each check are in ``rubric.yml``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import norm

from dgmlab.grading.judge import (
    Fail,
    as_tensor,
    check,
    expect_budget,
    expect_close,
    expect_finite,
    expect_shape,
    expect_snapshots,
    load_state_dict,
    scalar,
)
from dgmlab.models.vae import VAE, VAEConfig

LAB_CONFIG = {"x_dim": 784, "hidden_dims": [512], "z_dim": 2, "likelihood": "bernoulli"}
VAL_THRESHOLD = 235.0  # nats; correct solutions reach about 200-215 under the grading budget (labs/GRADING.md)


# --- the grader's inputs (written to the run folder, read by export.py) -----------------------------------------


def grader_inputs() -> dict[str, np.ndarray]:
    g = torch.Generator().manual_seed(20181017)
    out = {
        "reparam_mu": torch.randn(6000, 3, generator=g) * 2,
        "reparam_logvar": torch.rand(6000, 3, generator=g) * 5 - 3,
        "reparam_w": torch.randn(6000, 3, generator=g),
        "kl_mu": torch.randn(64, 4, generator=g) * 2,
        "kl_logvar": torch.rand(64, 4, generator=g) * 8 - 4,
        "elbo_x": (torch.rand(32, 784, generator=g) > 0.7).float(),
        "elbo_logits": torch.randn(32, 784, generator=g) * 3,
        "elbo_mu": torch.randn(32, 2, generator=g),
        "elbo_logvar": torch.randn(32, 2, generator=g) * 0.5,
        "step_x": (torch.rand(64, 784, generator=g) < torch.linspace(0.05, 0.6, 784)).float(),
        "probe_W": torch.randn(784, 2, generator=g) * 2,
        "probe_b": torch.randn(784, generator=g),
    }
    signs = torch.randint(0, 2, (32, 784), generator=g).float() * 2 - 1
    out["elbo_logits_extreme"] = 60.0 * signs  # half agree with x very confidently, half disagree
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        init = VAE(VAEConfig(z_dim=2, hidden_dims=(64,))).state_dict()
    out.update({f"step_init.{k}": v for k, v in init.items()})
    return {k: v.numpy() for k, v in out.items()}


# --- reference quantities (grader only) --------------------------------------------------------------------------


def _kl(mu, logvar):
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(-1)


def _neg_elbo(x, logits, mu, logvar):
    return ((F.softplus(logits) - x * logits).sum(-1) + _kl(mu, logvar)).mean()


def _vae_loss(model: VAE, x: torch.Tensor, samples: int = 10, seed: int = 0) -> float:
    """Mean one-sample negative ELBO over ``samples`` draws of eps (fixed seed), evaluated with the reference."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        mu, logvar = model.encode(x)
        total = 0.0
        for _ in range(samples):
            z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=g)
            total += _neg_elbo(x, model.decode(z), mu, logvar).item()
    return total / samples


def _inputs(ctx, *names):
    return [ctx.inputs[n].to(torch.float64) for n in names]


# --- 1. reparameterize -----------------------------------------------------------------------------------------


@check("reparam", "shape")
def _(data, ctx):
    z = as_tensor(data.get("reparam"), "the result of reparameterize(mu, logvar)")
    expect_shape(z, tuple(ctx.inputs["reparam_mu"].shape), "z")
    expect_finite(z, "z")


@check("reparam", "distribution")
def _(data, ctx):
    mu, logvar = _inputs(ctx, "reparam_mu", "reparam_logvar")
    z = as_tensor(data.get("reparam"), "z")
    expect_shape(z, tuple(mu.shape), "z")
    eps = (z - mu) / torch.exp(0.5 * logvar)  # standard normal if z was drawn correctly
    if eps.std() < 1e-3:
        raise Fail("z does not vary: it should include fresh noise eps ~ N(0, I)")
    if abs(eps.mean().item()) > 0.05 or abs(eps.std().item() - 1) > 0.05:
        raise Fail(
            f"(z - mu) / exp(logvar / 2) should be standard normal; it has mean {eps.mean().item():.2f} and "
            f"standard deviation {eps.std().item():.2f} (is sigma = exp(logvar / 2)?)"
        )
    if abs(torch.corrcoef(torch.stack([eps.flatten(), logvar.flatten()]))[0, 1].item()) > 0.05:
        raise Fail("the spread of z does not scale with exp(logvar / 2)")


@check("reparam", "gradient")
def _(data, ctx):
    mu, logvar, w = _inputs(ctx, "reparam_mu", "reparam_logvar", "reparam_w")
    z = as_tensor(data.get("reparam"), "z")
    g_mu, g_logvar = (as_tensor(g, "gradient") for g in data.get("reparam_grad"))
    expect_close(g_mu, w, "the gradient of z with respect to mu", atol=1e-3, rtol=1e-3)
    expect_close(g_logvar, w * 0.5 * (z - mu), "the gradient of z with respect to logvar", atol=1e-3, rtol=1e-3)


# --- 2. kl_divergence ------------------------------------------------------------------------------------------


@check("kl", "shape")
def _(data, ctx):
    kl = as_tensor(data.get("kl"), "the result of kl_divergence(mu, logvar)")
    expect_shape(kl, (ctx.inputs["kl_mu"].shape[0],), "the KL (one value per row, summed over dimensions)")


@check("kl", "values")
def _(data, ctx):
    mu, logvar = _inputs(ctx, "kl_mu", "kl_logvar")
    kl = as_tensor(data.get("kl"), "the KL")
    want = _kl(mu, logvar)
    if kl.shape == want.shape and (kl < -1e-4).any():
        raise Fail("some KL values are negative; a KL divergence is never negative")
    expect_close(kl, want, "the KL", atol=1e-3, rtol=1e-4, hint="check the closed form, the variance exp(logvar)")


@check("kl", "gradient")
def _(data, ctx):
    mu, logvar = _inputs(ctx, "kl_mu", "kl_logvar")
    g_mu, g_logvar = (as_tensor(g, "gradient") for g in data.get("kl_grad"))
    expect_close(g_mu, mu, "the gradient of the KL with respect to mu", atol=1e-3, rtol=1e-3)
    expect_close(g_logvar, 0.5 * (logvar.exp() - 1), "the gradient with respect to logvar", atol=1e-3, rtol=1e-3)


# --- 3. negative_elbo ------------------------------------------------------------------------------------------


@check("elbo", "scalar")
def _(data, ctx):
    loss = as_tensor(data.get("elbo"), "the result of negative_elbo(...)")
    if loss.dim() != 0:
        raise Fail(f"the loss should be a 0-d tensor (the batch mean); it has shape {list(loss.shape)}")
    expect_finite(loss, "the loss")


@check("elbo", "values")
def _(data, ctx):
    x, logits, mu, logvar = _inputs(ctx, "elbo_x", "elbo_logits", "elbo_mu", "elbo_logvar")
    got = scalar(data.get("elbo"), "the loss")
    want = _neg_elbo(x, logits, mu, logvar).item()
    if not math.isfinite(got):
        raise Fail("the loss is not finite")
    if abs(got - want) > 1e-3 * abs(want):
        hint = ""
        if abs(got / want - x.shape[0]) < 0.01 * x.shape[0]:
            hint = ": it looks summed over the batch; average it"
        elif got < 0:
            hint = ": a negative ELBO of binary images is positive; check the signs"
        raise Fail(f"the loss is off by {abs(got - want) / abs(want):.1%} on the grader's batch{hint}")


@check("elbo", "stable")
def _(data, ctx):
    x, logits, mu, logvar = _inputs(ctx, "elbo_x", "elbo_logits_extreme", "elbo_mu", "elbo_logvar")
    got = scalar(data.get("elbo_extreme"), "the loss for large logits")
    want = _neg_elbo(x, logits, mu, logvar).item()
    if not math.isfinite(got):
        raise Fail("with logits of +-60 the loss is NaN or infinite: compute log p(x|z) from the logits (softplus)")
    if abs(got - want) > 1e-3 * abs(want):
        raise Fail(
            f"with logits of +-60 the loss is off by {abs(got - want) / abs(want):.1%} (clamped log-probabilities, "
            "as in binary_cross_entropy on sigmoid outputs, are not exact: use the logits)"
        )


@check("elbo", "gradient")
def _(data, ctx):
    x, logits = _inputs(ctx, "elbo_x", "elbo_logits")
    (g,) = data.get("elbo_grad")
    want = (torch.sigmoid(logits) - x) / x.shape[0]
    what = "the gradient of the loss with respect to the logits"
    expect_close(as_tensor(g, "gradient"), want, what, atol=1e-5, rtol=1e-3)


# --- 4. train_step ---------------------------------------------------------------------------------------------


def _step_models(data, ctx) -> tuple[VAE, VAE]:
    init = {k[len("step_init.") :]: v for k, v in ctx.inputs.items() if k.startswith("step_init.")}
    before = VAE(VAEConfig(z_dim=2, hidden_dims=(64,)))
    before.load_state_dict(init)
    after = VAE(VAEConfig(z_dim=2, hidden_dims=(64,)))
    load_state_dict(after, data.get("step_final"), "the model after train_step")
    return before, after


@check("train_step", "returns_loss")
def _(data, ctx):
    losses = data.get("step_loss")
    values = [scalar(v, "the value returned by train_step") for v in losses]
    if not all(math.isfinite(v) for v in values):
        raise Fail("train_step returned a NaN or infinite loss")
    before, _ = _step_models(data, ctx)
    want = _vae_loss(before, ctx.inputs["step_x"], samples=20)
    if abs(values[0] - want) > 0.05 * want:
        off = abs(values[0] - want) / want
        raise Fail(f"the first loss train_step returned is {off:.0%} away from the model's negative ELBO")


@check("train_step", "updates_all")
def _(data, ctx):
    before, after = _step_models(data, ctx)
    a = after.state_dict()
    still = [k for k, v in before.state_dict().items() if torch.equal(v, a[k])]
    if still:
        raise Fail(f"after 10 calls of train_step these parameters never changed: {still[:4]}")


@check("train_step", "improves")
def _(data, ctx):
    before, after = _step_models(data, ctx)
    x = ctx.inputs["step_x"]
    l0, l1 = _vae_loss(before, x), _vae_loss(after, x)
    if not l1 < 0.9 * l0:
        raise Fail(
            f"10 calls of train_step with Adam (lr 1e-2) on one batch moved the negative ELBO from {l0:.1f} to "
            f"{l1:.1f}; "
            "it should go down (does the step minimise your negative_elbo, and zero the gradients?)"
        )


# --- 5. training under the grading budget -----------------------------------------------------------------------


@check("training", "budget")
def _(data, ctx):
    expect_budget(data.get("history"), ctx.budget)


def _trained(data) -> VAE:
    state = data.get("trained_state")
    config = data.get("trained_config")
    wanted = {k: config.get(k) for k in LAB_CONFIG} if isinstance(config, dict) else None
    if wanted != LAB_CONFIG:
        raise Fail(f"the trained model is not the lab's VAE(VAEConfig(z_dim=2, hidden_dims=(512,))): {wanted}")
    return load_state_dict(VAE(VAEConfig(z_dim=2, hidden_dims=(512,))), state, "the trained model")


@check("training", "val_elbo")
def _(data, ctx):
    from dgmlab.data import load_mnist

    model = _trained(data).eval()
    if "val" not in ctx.cache:
        ctx.cache["val"] = load_mnist("val", source="embedded", binarize="static", verbose=False).x
    loss = _vae_loss(model, ctx.cache["val"])
    if not loss < VAL_THRESHOLD:
        raise Fail(
            f"your trained model's negative ELBO on the grader's validation images is {loss:.1f} nats; with the "
            f"grading budget a correct implementation gets below {VAL_THRESHOLD:g}"
        )


@check("samples", "three_snapshots")
def _(data, ctx):
    snaps = data.get("snapshots")
    epochs = expect_snapshots(snaps, ctx.budget["epochs"])
    if torch.equal(snaps[str(epochs[0])], snaps[str(epochs[-1])]):
        raise Fail("the samples before and after training are identical")


# --- 6. manifold_grid ------------------------------------------------------------------------------------------

N_GRID = 5


def _grid(data):
    img = as_tensor(data.get("manifold"), "the result of manifold_grid(decode, 5)")
    while img.dim() > 2 and img.shape[0] == 1:
        img = img[0]
    return img


@check("manifold", "shape")
def _(data, ctx):
    expect_shape(_grid(data), (N_GRID * 28, N_GRID * 28), "the manifold image for n=5")


def _grid_points(data) -> torch.Tensor:
    calls = as_tensor(data.get("manifold_calls"), "the points passed to decode")
    if calls.shape[0] != N_GRID**2 or len({tuple(r) for r in calls.tolist()}) != N_GRID**2:
        n = calls.shape[0]
        raise Fail(f"decode should be called on {N_GRID**2} distinct latent points for n={N_GRID}; got {n}")
    for d in range(2):
        values = calls[:, d].unique()
        if len(values) != N_GRID:
            raise Fail(f"latent coordinate {d + 1} takes {len(values)} values; a {N_GRID} x {N_GRID} grid has {N_GRID}")
        q = torch.tensor(norm.cdf(values.numpy()))
        steps = q.diff()
        if (steps - steps.mean()).abs().max() > 1e-3 or (q + q.flip(0) - 1).abs().max() > 1e-3:
            raise Fail(f"the values of coordinate {d + 1} are not at evenly spaced quantiles of N(0, 1) (use norm.ppf)")
        if q[0] > 0.25 or q[-1] < 0.75:
            raise Fail("the grid covers too little of the prior: use quantiles spread over (0, 1)")
    pairs = {tuple(r) for r in calls.tolist()}
    v1, v2 = calls[:, 0].unique().tolist(), calls[:, 1].unique().tolist()
    if pairs != {(a, b) for a in v1 for b in v2}:
        raise Fail("the latent points are not all pairs of the grid values")
    return calls


@check("manifold", "ppf_grid")
def _(data, ctx):
    _grid_points(data)


@check("manifold", "layout")
def _(data, ctx):
    calls = _grid_points(data)
    img = _grid(data)
    expect_shape(img, (N_GRID * 28, N_GRID * 28), "the manifold image")
    decoded = torch.sigmoid(calls @ ctx.inputs["probe_W"].to(torch.float64).T + ctx.inputs["probe_b"].to(torch.float64))
    tiles = img.reshape(N_GRID, 28, N_GRID, 28).permute(0, 2, 1, 3).reshape(N_GRID, N_GRID, 784)
    where = torch.zeros(N_GRID, N_GRID, 2, dtype=torch.float64)
    for i in range(N_GRID):
        for j in range(N_GRID):
            err = (decoded - tiles[i, j]).abs().amax(-1)
            k = int(err.argmin())
            if err[k] > 1e-3:
                raise Fail(
                    f"tile ({i}, {j}) of the image is not the decoded image of any grid point "
                    "(check the reshape and permute)"
                )
            where[i, j] = calls[k]
    rows_fixed = [(where[:, :, d].std(dim=1).max() < 1e-6).item() for d in range(2)]  # coordinate constant along rows
    cols_fixed = [(where[:, :, d].std(dim=0).max() < 1e-6).item() for d in range(2)]
    if not ((rows_fixed[0] and cols_fixed[1]) or (rows_fixed[1] and cols_fixed[0])):
        raise Fail(
            "the tiles are not arranged as a grid: one coordinate should change along rows, the other along columns"
        )


# --- 7. short answers ------------------------------------------------------------------------------------------


@check("answers", "kl_value")
def _(data, ctx):
    value = data.get("answer_kl")
    if not isinstance(value, (int, float)):
        raise Fail("answer_kl should be a number")
    if abs(value - 0.5 * (4 + 1 - 1 - math.log(4))) > 0.01:
        raise Fail("answer_kl is not right (to two decimals); remember 4 is the variance")


def _choice(data, name):
    value = data.get(name)
    letter = value.strip().lower().strip("()") if isinstance(value, str) else ""
    if len(letter) != 1 or letter not in "abcd":
        raise Fail(f"{name} should be one of the letters a, b, c, d")
    return letter


@check("answers", "gap")
def _(data, ctx):
    if _choice(data, "answer_gap") != "b":
        raise Fail("answer_gap is not right")


@check("answers", "monte_carlo")
def _(data, ctx):
    if _choice(data, "answer_mc") != "b":
        raise Fail("answer_mc is not right")
