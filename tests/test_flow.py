"""RealNVP (dgmlab.models.flow): masks, squeeze, every layer's inverse and log-determinant against autograd's full
Jacobian, the change of variables, the dequantisation bound against quadrature, bits per dimension, the sampling
rule, training and checkpoints."""

import math

import numpy as np
import pytest
import torch

from dgmlab.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from dgmlab.data import Split
from dgmlab.distributions import log_standard_normal
from dgmlab.models.flow import (
    AffineCoupling,
    FlowStep,
    FlowTrainConfig,
    LogitTransform,
    RealNVP,
    RealNVPConfig,
    Squeeze,
    bits_per_dim,
    channel_mask,
    checkerboard_mask,
    dequantize,
    discrete_log_likelihood_bound,
    flow_bpd,
    squeeze,
    unsqueeze,
)
from dgmlab.train import fit

CB, CH, SQ = "checkerboard", "channel", "squeeze"
# a small flow with every kind of layer: D = 16
TINY = RealNVPConfig(shape=(1, 4, 4), layers=(CB, CB, SQ, CH, CH, CB), hidden=8, n_hidden=2)


def perturbed(module: torch.nn.Module, seed: int = 0, std: float = 0.5) -> torch.nn.Module:
    """The module in float64 with random weights: the zero-initialised last layers would make every coupling the
    identity, whose Jacobian tests nothing."""
    g = torch.Generator().manual_seed(seed)
    module = module.double()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * std)
    return module


def layer_cases():
    """(name, layer, input shape without the batch, input range) for every kind of layer."""
    torch.manual_seed(0)
    return [
        ("checkerboard-even", AffineCoupling(checkerboard_mask((1, 4, 4), 0), 8, 2), (1, 4, 4), "real"),
        ("checkerboard-odd-2ch", AffineCoupling(checkerboard_mask((2, 3, 4), 1), 8, 1), (2, 3, 4), "real"),
        ("channel-first", AffineCoupling(channel_mask((4, 2, 2), 0), 8, 2), (4, 2, 2), "real"),
        ("channel-second", AffineCoupling(channel_mask((4, 2, 3), 1), 8, 3), (4, 2, 3), "real"),
        ("squeeze", Squeeze(), (2, 4, 2), "real"),
        ("logit", LogitTransform(0.05), (1, 3, 3), "unit"),
    ]


CASES = layer_cases()


def _inputs(shape, kind, n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    if kind == "unit":
        return torch.rand((n, *shape), generator=g, dtype=torch.float64)
    return torch.randn((n, *shape), generator=g, dtype=torch.float64)


def _autograd_log_det(fn, x_one: torch.Tensor) -> float:
    """log |det J| of ``fn`` at one input, from the full Jacobian computed by autograd."""
    J = torch.autograd.functional.jacobian(lambda v: fn(v.reshape(1, *x_one.shape)).reshape(-1), x_one.reshape(-1))
    sign, logabsdet = torch.linalg.slogdet(J)
    assert sign != 0
    return logabsdet.item()


# --- masks and the squeeze ----------------------------------------------------------------------------------------


def test_masks():
    b = checkerboard_mask((1, 3, 4), 0)[0]
    expected = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0]], dtype=torch.float32)
    assert torch.equal(b, expected)
    assert torch.equal(checkerboard_mask((2, 3, 4), 1), 1 - checkerboard_mask((2, 3, 4), 0))
    c = channel_mask((4, 2, 2), 0)
    assert torch.equal(c[:2], torch.ones(2, 2, 2)) and torch.equal(c[2:], torch.zeros(2, 2, 2))
    assert torch.equal(channel_mask((4, 2, 2), 1), 1 - c)
    with pytest.raises(ValueError, match="even number of channels"):
        channel_mask((3, 2, 2))


def test_squeeze_places_pixels_as_documented():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    y = squeeze(x)
    assert y.shape == (2, 12, 2, 3)
    for c in range(3):
        for u in range(2):
            for v in range(2):
                for i in range(2):
                    for j in range(3):
                        assert y[:, 4 * c + 2 * u + v, i, j].tolist() == x[:, c, 2 * i + u, 2 * j + v].tolist()
    assert torch.equal(unsqueeze(y), x)


def test_config_errors_say_what_to_do():
    with pytest.raises(ValueError, match="put a 'squeeze' before it"):
        RealNVPConfig(layers=(CH,))
    with pytest.raises(ValueError, match="must be even"):
        RealNVPConfig(shape=(1, 3, 4), layers=(SQ,))
    with pytest.raises(ValueError, match="unknown layer kinds"):
        RealNVPConfig(layers=("glow",))
    assert RealNVPConfig().shapes()[-1] == (4, 14, 14) and RealNVPConfig().x_dim == 784


# --- every layer: inverse and log-determinant ----------------------------------------------------------------------


@pytest.mark.parametrize("name, layer, shape, kind", CASES, ids=[c[0] for c in CASES])
def test_layer_inverse_and_log_det_against_autograd(name, layer, shape, kind):
    layer = perturbed(layer)
    x = _inputs(shape, kind)
    y, log_det = layer(x)
    assert y.shape[0] == 3 and y.numel() == x.numel() and log_det.shape == (3,)
    assert torch.allclose(layer.inverse(y), x, rtol=0, atol=1e-12)  # x -> y -> x
    for i in range(len(x)):
        expected = _autograd_log_det(lambda v: layer(v)[0], x[i])
        assert log_det[i].item() == pytest.approx(expected, abs=1e-10)
    if name.startswith(("checkerboard", "channel")):
        s, _ = layer._s_t(layer.b * x)
        assert s.abs().max() > 0.05  # the test above tested a real scaling, not the identity


@pytest.mark.parametrize("name, layer, shape, kind", CASES[:4], ids=[c[0] for c in CASES[:4]])
def test_coupling_jacobian_is_triangular(name, layer, shape, kind):
    """Masked entries are copied (identity rows); each transformed entry depends on itself only through exp(s)."""
    layer = perturbed(layer, seed=3)
    x = _inputs(shape, kind, n=1)[0]
    J = torch.autograd.functional.jacobian(lambda v: layer(v.reshape(1, *shape))[0].reshape(-1), x.reshape(-1))
    b = layer.b.reshape(-1).bool()
    assert torch.equal(J[b], torch.eye(len(b), dtype=J.dtype)[b])
    block = J[~b][:, ~b]  # transformed outputs against transformed inputs
    assert torch.equal(block, torch.diag(torch.diagonal(block)))
    s, _ = layer._s_t(layer.b * x[None])
    assert torch.allclose(torch.diagonal(block), s.reshape(-1)[~b].exp(), rtol=1e-12, atol=0)


def test_whole_flow_inverse_and_log_det_against_autograd():
    model = perturbed(RealNVP(TINY), seed=1, std=0.3)
    x = _inputs((16,), "unit", n=4)
    z, log_det = model(x)
    assert z.shape == (4, 16)
    assert torch.allclose(model.inverse(z), x, rtol=0, atol=1e-12)
    for i in range(len(x)):
        assert log_det[i].item() == pytest.approx(_autograd_log_det(lambda v: model(v)[0], x[i]), abs=1e-9)
    # the log-determinant of the composition is the sum over the layers, the logit's included
    h, total = x.reshape(4, 1, 4, 4), torch.zeros(4, dtype=torch.float64)
    for layer in model.layers:
        h, ld = layer(h)
        total += ld
    assert torch.allclose(total, log_det, rtol=0, atol=1e-10)
    assert isinstance(model.layers[0], LogitTransform) and model.layers[0](h.new_full((1, 2), 0.5))[1].item() != 0


def test_float32_flow_inverts_mnist_sized_images():
    torch.manual_seed(0)
    model = perturbed(RealNVP(RealNVPConfig(hidden=8)), std=0.05).float()
    x = torch.rand(5, 784, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z, _ = model(x)
        assert torch.allclose(model.inverse(z), x, rtol=0, atol=1e-4)


# --- densities ----------------------------------------------------------------------------------------------------


def test_log_prob_is_the_change_of_variables():
    """log_prob against log N(z) + log |det J| with J from autograd, computed outside the model."""
    model = perturbed(RealNVP(TINY), seed=2, std=0.3)
    x = _inputs((16,), "unit", n=3, seed=5)
    for i in range(len(x)):
        z = model(x[i : i + 1])[0]
        expected = log_standard_normal(z).item() + _autograd_log_det(lambda v: model(v)[0], x[i])
        assert model.log_prob(x[i : i + 1]).item() == pytest.approx(expected, abs=1e-9)


def _gauss_legendre(lo: float, hi: float, n: int):
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return (hi - lo) / 2 * nodes + (hi + lo) / 2, (hi - lo) / 2 * weights


def _cell_probabilities(model, levels: int, n: int = 48):
    """P(k) = integral of p over each of the levels^2 cells of a two-pixel flow, by Gauss-Legendre quadrature."""
    probs = np.zeros((levels, levels))
    for k1 in range(levels):
        u1, w1 = _gauss_legendre(k1 / levels, (k1 + 1) / levels, n)
        for k2 in range(levels):
            u2, w2 = _gauss_legendre(k2 / levels, (k2 + 1) / levels, n)
            grid = torch.tensor(np.stack(np.meshgrid(u1, u2, indexing="ij"), -1).reshape(-1, 2))
            with torch.no_grad():
                p = model.log_prob(grid).exp().numpy().reshape(n, n)
            probs[k1, k2] = w1 @ p @ w2
    return probs


def test_density_integrates_to_one_and_dequantisation_bounds_the_discrete_likelihood():
    torch.manual_seed(0)
    model = perturbed(RealNVP(RealNVPConfig(shape=(1, 1, 2), layers=(CB, CB, CB), hidden=8)), seed=4, std=0.4)
    levels = 4
    P = _cell_probabilities(model, levels)
    # the logit preprocessing maps [0, 1] onto [logit(alpha), logit(1 - alpha)], not onto the real line, so p
    # integrates over [0, 1]^2 to the prior mass m = P(f^-1(z) in [0, 1]^2) < 1, estimated here from prior samples
    z = torch.randn(200_000, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        inside = ((x := model.inverse(z)) >= 0).all(1) & (x <= 1).all(1)
    m, se_m = inside.double().mean().item(), inside.double().std().item() / math.sqrt(len(z))
    assert 0.5 < m < 0.99 and P.sum() == pytest.approx(m, abs=4 * se_m)
    # the dequantisation bound E_u[log p((k + u) / L)] - D log L, by Monte Carlo, for every cell k
    g = torch.Generator().manual_seed(0)
    S = 10_000
    for k1 in range(levels):
        for k2 in range(levels):
            x = torch.tensor([[k1, k2]], dtype=torch.float64).expand(S, 2) / (levels - 1)  # the grid k / (L - 1)
            y = dequantize(x, levels, generator=g)
            assert torch.equal(torch.floor(y * levels), x * (levels - 1))  # y lies in the cell of k
            with torch.no_grad():
                bound = discrete_log_likelihood_bound(model.log_prob(y), 2, levels)
            se = bound.std().item() / math.sqrt(S)
            log_P = math.log(P[k1, k2])
            gap = log_P - bound.mean().item()  # Jensen's gap: log E[p] - E[log p] >= 0
            assert gap > -3 * se, (k1, k2, gap, se)
            # and the gap is what Jensen's inequality says it is: log E_u[p] - E_u[log p], from the same samples
            log_mean_p = (torch.logsumexp(bound, 0) - math.log(S)).item()
            assert log_mean_p == pytest.approx(log_P, abs=max(5 * se, 0.02))


def test_dequantize_fills_each_cell_uniformly():
    x = torch.tensor([[0.0, 1 / 255, 128 / 255, 1.0]]).expand(50_000, 4)
    y = dequantize(x, generator=torch.Generator().manual_seed(0))
    k = torch.tensor([0, 1, 128, 255.0])
    assert torch.equal(torch.floor(y * 256), k.expand_as(y))
    frac = y * 256 - k  # U[0, 1): mean 1/2, variance 1/12
    assert frac.mean(0).sub(0.5).abs().max() < 0.01 and frac.var(0).sub(1 / 12).abs().max() < 0.003
    # binarised data: two levels
    b = dequantize(torch.tensor([[0.0, 1.0]]), levels=2, generator=torch.Generator().manual_seed(1))
    assert 0 <= b[0, 0] < 0.5 <= b[0, 1] < 1


def test_bits_per_dim():
    D = 784
    # the uniform density on [0, 1]^D has log p = 0: every 8-bit image has P = 256^-D, 8 bits per pixel
    uniform = discrete_log_likelihood_bound(torch.zeros(3), D, 256)
    assert torch.allclose(bits_per_dim(uniform, D), torch.full((3,), 8.0))
    assert torch.allclose(bits_per_dim(torch.tensor([-D * math.log(2)]), D), torch.tensor([1.0]))
    nats = torch.tensor([-700.0])
    assert bits_per_dim(nats, D).item() == pytest.approx(-math.log2(math.exp(-700.0 / D)))


def test_flow_bpd_is_the_bound_in_bits():
    model = perturbed(RealNVP(TINY), seed=6, std=0.2)
    x = torch.randint(0, 256, (5, 16), generator=torch.Generator().manual_seed(0)).double() / 255
    bpd = flow_bpd(model, x, torch.Generator().manual_seed(3))
    y = dequantize(x, 256, torch.Generator().manual_seed(3))
    expected = -(model.log_prob(y) - 16 * math.log(256)) / (16 * math.log(2))
    assert torch.allclose(bpd, expected, rtol=1e-12, atol=0)


# --- sampling, training, checkpoints -------------------------------------------------------------------------------


def test_sampling_rule():
    torch.manual_seed(0)
    model = RealNVP(TINY)
    model.train()
    a = model.sample(6, torch.Generator().manual_seed(0))
    assert model.training  # the mode is restored
    b = model.sample(6, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (6, 16) and a.device.type == "cpu"
    assert a.min() >= 0 and a.max() <= 1 and not a.requires_grad
    # temperature T: the inverse of T * eps, with eps from the CPU generator
    cold = model.sample(6, torch.Generator().manual_seed(0), temperature=0.5)
    eps = torch.randn(6, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(cold, model.inverse(0.5 * eps).clamp(0, 1))
    with pytest.raises(ValueError, match="temperature"):
        model.sample(2, temperature=0.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sampling_on_cuda_matches_cpu():
    model = RealNVP(TINY)
    a = model.sample(4, torch.Generator().manual_seed(0))
    b = model.to("cuda").sample(4, torch.Generator().manual_seed(0))
    assert b.device.type == "cuda" and torch.allclose(a, b.cpu(), atol=1e-5)


def _tiny_split(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 16), generator=g).float() / 255
    x[:, ::2] = x[:, ::2] * 0.1  # some structure to learn
    return Split(x, torch.zeros(n, dtype=torch.long), "toy/flow16", "tensor")


def test_step_trains_and_reaches_every_parameter():
    torch.manual_seed(0)
    model = RealNVP(TINY)
    config = FlowTrainConfig(epochs=6, batch_size=16, lr=3e-3, device="cpu")
    step = FlowStep(model, config)
    train, val = _tiny_split(), _tiny_split(32, seed=1)
    before = step.evaluate(val)["bpd"]
    history = fit(step, train, val=val, progress=False)
    assert [row["epoch"] for row in history] == list(range(1, 7))
    assert all(math.isfinite(row["train_bpd"]) for row in history)
    assert history[-1]["val_bpd"] < before - 0.1
    assert step.evaluate(val) == step.evaluate(val)  # a fixed dequantisation
    model.zero_grad()
    flow_bpd(model, train.x[:8]).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_checkpoint_round_trip(tmp_path):
    model = perturbed(RealNVP(TINY), std=0.1).float()
    path = save_checkpoint(tmp_path / "flow.pt", model, history=[{"epoch": 1}], train_config=FlowTrainConfig())
    loaded = load_checkpoint(path)
    assert isinstance(loaded.model, RealNVP) and loaded.model.config == model.config
    x = torch.rand(3, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.model.log_prob(x), model.log_prob(x))
    assert torch.equal(
        loaded.model.sample(2, torch.Generator().manual_seed(1)), model.sample(2, torch.Generator().manual_seed(1))
    )


def test_zoo_entry_functions_on_an_untrained_flow():
    from dgmlab.zoo import flow as zoo_flow

    (entry,) = [e for e in zoo_flow.ENTRIES if e.name == "realnvp"]
    assert entry.chapter == "book/14_realnvp" and "dequantis" in entry.log_likelihood_kind
    torch.manual_seed(0)
    checkpoint = Checkpoint({"model": RealNVP(RealNVPConfig(hidden=4, layers=(SQ, CB, CH)))})
    images = entry.sampler(checkpoint)(5, torch.Generator().manual_seed(0))
    assert images.shape == (5, 784) and images.device.type == "cpu" and 0 <= images.min() <= images.max() <= 1
    x = torch.randint(0, 256, (40, 784), generator=torch.Generator().manual_seed(0)).float() / 255
    split = Split(x, torch.zeros(40, dtype=torch.long), "toy/784", "tensor")
    mean, se = entry.log_likelihood(checkpoint, split)
    # an untrained flow is the logit map composed with N(0, I): close to, but not, the uniform density's -D log 256
    bpd = -mean / (784 * math.log(2))
    assert 8 < bpd < 12 and 0 < se < 0.05 * abs(mean)
