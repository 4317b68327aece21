"""Lab 2 hidden checks: run in the GRADER's process on the data a submission exported. Never sent to a kernel."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

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
from dgmlab.metrics import mean_image_distance  # 1000 samples of G from seed 0 against x
from dgmlab.models.gan import Discriminator, GANConfig, Generator

SMALL = GANConfig(z_dim=8, g_hidden=(32,), d_hidden=(32,), batch_norm=False, dropout=0.0)
MEAN_IMAGE_THRESHOLD = 6.0  # L2 distance of the samples' mean image to the data's; see labs/GRADING.md


def grader_inputs() -> dict[str, np.ndarray]:
    g = torch.Generator().manual_seed(2014)
    out = {
        "real_logits": torch.randn(48, generator=g) * 3,
        "fake_logits": torch.randn(32, generator=g) * 3,
        "real_extreme": torch.tensor([100.0, -100.0, 80.0, -90.0]),
        "fake_extreme": torch.tensor([-100.0, 100.0, 95.0]),
        "fake_rejected": torch.full((16,), -40.0) + torch.rand(16, generator=g),
        "x_real": torch.rand(64, 784, generator=g) * (torch.rand(64, 784, generator=g) > 0.8),
        "z": torch.randn(64, 8, generator=g),
        "z0": torch.randn(64, generator=g),
        "z1": torch.randn(64, generator=g),
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        G, D = Generator(SMALL), Discriminator(SMALL)
    out.update({f"G.{k}": v for k, v in G.state_dict().items()})
    out.update({f"D.{k}": v for k, v in D.state_dict().items()})
    return {k: v.numpy() for k, v in out.items()}


def _d_loss(real, fake):
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def _g_loss(fake):
    return F.softplus(-fake).mean()


def _f64(ctx, *names):
    return [ctx.inputs[n].to(torch.float64) for n in names]


# --- 1. discriminator_loss -------------------------------------------------------------------------------------


@check("dloss", "scalar")
def _(data, ctx):
    loss = as_tensor(data.get("dloss"), "the result of discriminator_loss")
    if loss.dim() != 0:
        raise Fail(f"the loss should be a 0-d tensor; it has shape {list(loss.shape)}")
    expect_finite(loss, "the loss")


@check("dloss", "values")
def _(data, ctx):
    real, fake = _f64(ctx, "real_logits", "fake_logits")
    got, want = scalar(data.get("dloss"), "the loss"), _d_loss(real, fake).item()
    if abs(got - want) > 1e-4 * abs(want):
        hint = ""
        if abs(2 * got - want) < 1e-3 * want:
            hint = " (it is half the expected value: take the mean over the real logits plus the mean over the fakes)"
        raise Fail(f"the loss is off by {abs(got - want) / want:.1%} on the grader's logits{hint}")


@check("dloss", "gradient")
def _(data, ctx):
    real, fake = _f64(ctx, "real_logits", "fake_logits")
    g_real, g_fake = (as_tensor(g, "gradient") for g in data.get("dloss_grad"))
    expect_close(g_real, -torch.sigmoid(-real) / len(real), "the gradient w.r.t. the real logits", atol=1e-6, rtol=1e-3)
    expect_close(g_fake, torch.sigmoid(fake) / len(fake), "the gradient w.r.t. the fake logits", atol=1e-6, rtol=1e-3)


@check("dloss", "stable")
def _(data, ctx):
    real, fake = _f64(ctx, "real_extreme", "fake_extreme")
    got, want = scalar(data.get("dloss_extreme"), "the loss for logits of +-100"), _d_loss(real, fake).item()
    if not math.isfinite(got):
        raise Fail("for logits of +-100 the loss is NaN or infinite: write it with softplus")
    if abs(got - want) > 1e-3 * abs(want):
        raise Fail(f"for logits of +-100 the loss is off by {abs(got - want) / want:.0%} (clamped logs are not exact)")


# --- 2. generator_loss -----------------------------------------------------------------------------------------


@check("gloss", "values")
def _(data, ctx):
    (fake,) = _f64(ctx, "fake_logits")
    got, want = scalar(data.get("gloss"), "the result of generator_loss"), _g_loss(fake).item()
    if abs(got - want) > 1e-4 * abs(want):
        hint = ""
        if abs(got + F.softplus(fake).mean().item()) < 1e-3 * want:
            hint = " (this is the saturating minimax loss log(1 - D(G(z))))"
        raise Fail(f"the loss is off by {abs(got - want) / want:.1%} on the grader's logits{hint}")


@check("gloss", "gradient")
def _(data, ctx):
    (fake,) = _f64(ctx, "fake_logits")
    (g,) = data.get("gloss_grad")
    expect_close(as_tensor(g, "gradient"), -torch.sigmoid(-fake) / len(fake), "the gradient", atol=1e-6, rtol=1e-3)


@check("gloss", "not_saturating")
def _(data, ctx):
    (fake,) = _f64(ctx, "fake_rejected")
    got = scalar(data.get("gloss_rejected"), "the loss when D rejects the fakes")
    if not math.isfinite(got) or abs(got - _g_loss(fake).item()) > 1e-3 * _g_loss(fake).item():
        raise Fail("for logits near -40 (D rejects the fakes) the loss is not exact: write it with softplus")
    (g,) = data.get("gloss_rejected_grad")
    g = as_tensor(g, "gradient")
    if g.abs().min() < 0.5 / len(fake):
        raise Fail("the gradient vanishes when D rejects the fakes: the loss saturates")


# --- 3. the two steps ------------------------------------------------------------------------------------------


def _nets(state: dict | None, ctx, what: str):
    G, D = Generator(SMALL), Discriminator(SMALL)
    if state is None:
        G.load_state_dict({k[2:]: v for k, v in ctx.inputs.items() if k.startswith("G.")})
        D.load_state_dict({k[2:]: v for k, v in ctx.inputs.items() if k.startswith("D.")})
    else:
        if not isinstance(state, dict) or set(state) != {"G", "D"}:
            raise Fail(f"{what}: the networks were not exported")
        load_state_dict(G, state["G"], f"{what}: G")
        load_state_dict(D, state["D"], f"{what}: D")
    return G.eval(), D.eval()


def _losses(G, D, ctx):
    x, z = ctx.inputs["x_real"], ctx.inputs["z"]
    with torch.no_grad():
        fake = D(G(z))
        return _d_loss(D(x), fake).item(), _g_loss(fake).item()


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@check("steps", "returns_loss")
def _(data, ctx):
    G0, D0 = _nets(None, ctx, "")
    d0, _ = _losses(G0, D0, ctx)
    d_values = [scalar(v, "the value returned by discriminator_step") for v in data.get("dstep")]
    G1, D1 = _nets(data.get("dstep_after"), ctx, "after the discriminator steps")
    _, g1 = _losses(G1, D1, ctx)
    g_values = [scalar(v, "the value returned by generator_step") for v in data.get("gstep")]
    if abs(d_values[0] - d0) > 1e-3 * d0:
        raise Fail("the first value returned by discriminator_step is not the discriminator loss before the step")
    if abs(g_values[0] - g1) > 1e-3 * g1:
        raise Fail("the first value returned by generator_step is not the generator loss before the step")


@check("steps", "d_step")
def _(data, ctx):
    G0, D0 = _nets(None, ctx, "")
    G1, D1 = _nets(data.get("dstep_after"), ctx, "after the discriminator steps")
    data.get("dstep")  # fails with the student's error if the step raised
    if not _same(G0, G1):
        raise Fail("discriminator_step changed the generator's parameters; only D may be updated")
    if _same(D0, D1):
        raise Fail("discriminator_step did not change the discriminator")
    before, after = _losses(G0, D0, ctx)[0], _losses(G1, D1, ctx)[0]
    if not after < before - 1e-3:
        raise Fail(f"5 discriminator steps moved D's loss from {before:.3f} to {after:.3f}; it should go down")


@check("steps", "g_step")
def _(data, ctx):
    G1, D1 = _nets(data.get("dstep_after"), ctx, "after the discriminator steps")
    G2, D2 = _nets(data.get("gstep_after"), ctx, "after the generator steps")
    data.get("gstep")
    if not _same(D1, D2):
        raise Fail("generator_step changed the discriminator's parameters; only G may be updated")
    if _same(G1, G2):
        raise Fail("generator_step did not change the generator")
    before, after = _losses(G1, D1, ctx)[1], _losses(G2, D2, ctx)[1]
    if not after < before - 1e-3:
        raise Fail(f"5 generator steps moved G's loss from {before:.3f} to {after:.3f}; it should go down")


# --- 4. training -----------------------------------------------------------------------------------------------


@check("training", "budget")
def _(data, ctx):
    expect_budget(data.get("history"), ctx.budget)


@check("training", "samples_quality")
def _(data, ctx):
    from dgmlab.data import load_mnist

    state = data.get("trained_G")
    config = data.get("trained_config")
    want = {k: list(v) if isinstance(v, tuple) else v for k, v in GANConfig().__dict__.items()}
    if config != want:
        raise Fail("the trained generator is not the lab's Generator(GANConfig())")
    G = load_state_dict(Generator(GANConfig()), state, "the trained generator").eval()
    if "val" not in ctx.cache:
        ctx.cache["val"] = load_mnist("val", source="embedded", verbose=False).x
    dist = mean_image_distance(G, ctx.cache["val"])
    if not dist < MEAN_IMAGE_THRESHOLD:
        raise Fail(
            f"the mean of 1000 samples of your generator is {dist:.2f} away (L2) from the mean validation image; "
            f"with the grading budget a correct implementation gets below {MEAN_IMAGE_THRESHOLD:g} "
            "(an untrained generator is about 11 away)"
        )


@check("snapshots", "three_snapshots")
def _(data, ctx):
    expect_snapshots(data.get("snapshots"), ctx.budget["epochs"])


# --- 5. interpolate --------------------------------------------------------------------------------------------


def _path(data, key, steps):
    path = as_tensor(data.get(key), f"the result of interpolate(z0, z1, steps={steps})")
    expect_shape(path, (steps + 2, 64), f"the path for steps={steps}")
    expect_finite(path, "the path")
    return path


@check("interpolate", "shape")
def _(data, ctx):
    _path(data, "interp7", 7)
    _path(data, "interp3", 3)


@check("interpolate", "endpoints")
def _(data, ctx):
    z0, z1 = _f64(ctx, "z0", "z1")
    for key, steps in (("interp7", 7), ("interp3", 3)):
        path = _path(data, key, steps)
        expect_close(path[0], z0, "the first point (it should be z0)", atol=1e-5)
        expect_close(path[-1], z1, "the last point (it should be z1)", atol=1e-5)


@check("interpolate", "evenly_spaced")
def _(data, ctx):
    z0, z1 = _f64(ctx, "z0", "z1")
    for key, steps in (("interp7", 7), ("interp3", 3)):
        path = _path(data, key, steps)
        t = torch.linspace(0, 1, steps + 2, dtype=torch.float64).unsqueeze(1)
        expect_close(path, (1 - t) * z0 + t * z1, "the points", atol=1e-4, hint="they should lie evenly on the segment")


# --- 6. answers ------------------------------------------------------------------------------------------------


@check("answers", "value")
def _(data, ctx):
    value = data.get("answer_value")
    if not isinstance(value, (int, float)):
        raise Fail("answer_value should be a number")
    if abs(value + math.log(4)) > 0.01:
        raise Fail("answer_value is not right (evaluate both expectations with D = 1/2)")


@check("answers", "saturation")
def _(data, ctx):
    value = data.get("answer_saturation")
    letter = value.strip().lower().strip("()") if isinstance(value, str) else ""
    if len(letter) != 1 or letter not in "abcd":
        raise Fail("answer_saturation should be one of the letters a, b, c, d")
    if letter != "c":
        raise Fail("answer_saturation is not right")
