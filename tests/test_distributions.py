"""Hand-written log-densities and the closed-form KL, checked against direct formulas, quadrature and Monte Carlo."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from dgmlab import distributions
from dgmlab.distributions import (
    continuous_bernoulli_log_norm,
    continuous_bernoulli_mean,
    kl_normal_std_normal,
    log_bernoulli,
    log_continuous_bernoulli,
    log_mean_exp,
    log_normal_diag,
    log_standard_normal,
)

CASES = [(0.0, 1.0), (0.5, 0.7), (-2.0, 0.1), (3.0, 2.5), (1e-3, 1.001)]


@pytest.mark.parametrize("mu,sigma", CASES)
def test_kl_matches_quadrature(mu, sigma):
    q, p = stats.norm(mu, sigma), stats.norm(0, 1)
    lo, hi = mu - 12 * sigma, mu + 12 * sigma
    expected, _ = integrate.quad(lambda z: q.pdf(z) * (q.logpdf(z) - p.logpdf(z)), lo, hi, limit=200)
    f64 = torch.float64
    got = kl_normal_std_normal(torch.tensor([[mu]], dtype=f64), torch.tensor([[2 * math.log(sigma)]], dtype=f64))
    assert got.shape == (1,)
    assert got.item() == pytest.approx(expected, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("mu,sigma", CASES)
def test_kl_matches_monte_carlo(mu, sigma):
    g = torch.Generator().manual_seed(0)
    n = 400_000
    mu_t = torch.full((1, 3), mu, dtype=torch.float64)
    logvar = torch.full((1, 3), 2 * math.log(sigma), dtype=torch.float64)
    z = mu + sigma * torch.randn(n, 3, generator=g, dtype=torch.float64)
    log_ratio = log_normal_diag(z, mu_t, logvar) - log_standard_normal(z)
    mc, se = log_ratio.mean().item(), log_ratio.std().item() / math.sqrt(n)
    exact = kl_normal_std_normal(mu_t, logvar).item()
    assert abs(mc - exact) < 5 * se + 1e-9


def test_kl_is_zero_only_at_the_prior():
    assert kl_normal_std_normal(torch.zeros(4, 5), torch.zeros(4, 5)).abs().max().item() == 0.0
    assert (kl_normal_std_normal(torch.randn(100, 5), torch.randn(100, 5)) > 0).all()


@pytest.mark.parametrize("grey", [False, True], ids=["binary", "grey-levels"])
def test_log_bernoulli_matches_direct_formula(grey):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(16, 30, generator=g, dtype=torch.float64) * 3
    x = torch.bernoulli(torch.full((16, 30), 0.4, dtype=torch.float64), generator=g)
    if grey:  # the continuous Bernoulli and the grader's grey-level checks use x in [0, 1]
        x = torch.rand(16, 30, generator=g, dtype=torch.float64)
    p = torch.sigmoid(logits)
    direct = (x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum(-1)
    torch.testing.assert_close(log_bernoulli(x, logits), direct)


def test_log_bernoulli_broadcasts_like_the_formula():
    g = torch.Generator().manual_seed(2)
    x = torch.bernoulli(torch.full((3, 1, 10), 0.5, dtype=torch.float64), generator=g)  # [B, 1, D]
    logits = torch.randn(3, 4, 10, generator=g, dtype=torch.float64)  # [B, S, D]
    p = torch.sigmoid(logits)
    direct = (x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum(-1)  # [B, S]
    torch.testing.assert_close(log_bernoulli(x, logits), direct)
    one = x[0, 0]  # one image [D] against every logit vector
    torch.testing.assert_close(log_bernoulli(one, logits), (one * torch.log(p) + (1 - one) * torch.log(1 - p)).sum(-1))


def test_log_bernoulli_is_finite_for_extreme_logits():
    logits = torch.tensor([[-1e4, -100.0, 0.0, 100.0, 1e4]])
    for x in (torch.zeros_like(logits), torch.ones_like(logits)):
        out = log_bernoulli(x, logits.requires_grad_())
        assert torch.isfinite(out).all()
        out.sum().backward()
        assert torch.isfinite(logits.grad).all()
        logits.grad = None
    # a confident, correct prediction costs ~0 nats; a confident, wrong one costs ~|logit| nats
    assert log_bernoulli(torch.ones(1, 1), torch.tensor([[1e4]])).item() == pytest.approx(0.0, abs=1e-6)
    assert log_bernoulli(torch.zeros(1, 1), torch.tensor([[1e4]])).item() == pytest.approx(-1e4, rel=1e-6)


@pytest.fixture(params=[True, False], ids=["vectorised-softplus", "fused-kernel"])
def both_log_bernoullis(request, monkeypatch):
    """log_bernoulli as computed on CPUs with a slow log1p (AVX-512) and as PyTorch's fused kernel (AVX2, CUDA)."""
    monkeypatch.setattr(distributions, "_SLOW_CPU_LOG1P", request.param)
    return request.param


def test_log_bernoulli_keeps_float32_accuracy_where_log_of_one_plus_u_loses_it(both_log_bernoullis):
    """Every float32 digit, against float64: for x = 1 and a large logit the answer is -softplus(-l) ~ -e^(-l),
    which ``log(1 + e^(-l))`` written naively rounds to 0 (relative error 1). PyTorch's fused kernel does the same
    for e^(-|l|) below float32's eps (an absolute error under 1e-7 nats, harmless in a sum over pixels): it is held
    to that absolute bound, dgmlab's own softplus to the relative one."""
    logits = torch.linspace(-60.0, 60.0, 200_001)  # float32; e^-60 ~ 1e-26 is still a normal float32
    for x in (torch.ones_like(logits), torch.zeros_like(logits), torch.full_like(logits, 0.3)):
        got = log_bernoulli(x.unsqueeze(-1), logits.unsqueeze(-1)).double()
        l64, x64 = logits.double(), x.double()
        exact = x64 * l64 - torch.nn.functional.softplus(l64)  # float64 reference, exact to ~1e-16
        scale = (x64 * l64).abs() + torch.nn.functional.softplus(l64)  # x l and softplus(l) may cancel
        scale += 0 if both_log_bernoullis else 1  # the fused kernel: absolute error for tiny values
        err = (got - exact).abs() / scale
        assert err.max() <= 4 * torch.finfo(torch.float32).eps, f"{err.max():.2e} at l = {logits[err.argmax()]:.2f}"


def test_log_bernoulli_gradients_are_the_closed_form_and_differentiable_twice(both_log_bernoullis):
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(5, 3, 7, generator=g, dtype=torch.float64) * 4).requires_grad_()
    x = torch.rand(1, 3, 7, generator=g, dtype=torch.float64).requires_grad_()  # broadcast over the first dim
    log_bernoulli(x, logits).sum().backward()
    torch.testing.assert_close(logits.grad, x.detach() - torch.sigmoid(logits.detach()))  # d/dl [x l - softplus(l)]
    torch.testing.assert_close(x.grad, logits.detach().sum(0, keepdim=True))  # d/dx = l, summed over the broadcast
    small = (logits.detach()[:2, :2, :3].clone().requires_grad_(), x.detach()[:, :2, :3].clone().requires_grad_())
    assert torch.autograd.gradcheck(lambda l, y: log_bernoulli(y, l), small)
    assert torch.autograd.gradgradcheck(lambda l, y: log_bernoulli(y, l), small)


def test_log_bernoulli_uses_the_vectorised_softplus_only_on_the_cpu_where_log1p_is_slow(monkeypatch):
    calls = []
    original = distributions._LogBernoulli.apply
    monkeypatch.setattr(distributions._LogBernoulli, "apply", lambda *a: calls.append(1) or original(*a))
    x, logits = torch.rand(2, 5), torch.randn(2, 5)
    for slow, used in ((True, 1), (False, 0)):
        monkeypatch.setattr(distributions, "_SLOW_CPU_LOG1P", slow)
        calls.clear()
        log_bernoulli(x, logits)
        assert len(calls) == used
    avx2 = subprocess.run(
        [sys.executable, "-c", "import dgmlab.distributions as d; print(d._SLOW_CPU_LOG1P)"],
        env={**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}, capture_output=True, text=True, check=True,
    )
    assert avx2.stdout.strip() == "False"  # AVX2 kernels: PyTorch's own log1p is vectorised, the kernel is used


def test_log_normal_diag_matches_scipy():
    rng = np.random.default_rng(2)
    x, mu, sigma = rng.normal(size=(8, 4)), rng.normal(size=(8, 4)), rng.uniform(0.1, 3, size=(8, 4))
    expected = stats.norm(mu, sigma).logpdf(x).sum(-1)
    got = log_normal_diag(*(torch.tensor(a) for a in (x, mu, 2 * np.log(sigma))))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(log_standard_normal(torch.tensor(x)).numpy(), stats.norm().logpdf(x).sum(-1), rtol=1e-10)


def test_log_normal_diag_accepts_a_scalar_logvar():
    x, mu = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    full = log_normal_diag(x, mu, torch.full((3, 5), -1.0, dtype=torch.float64))
    torch.testing.assert_close(log_normal_diag(x, mu, torch.tensor(-1.0, dtype=torch.float64)), full)


def test_log_mean_exp_is_stable_and_correct():
    a = torch.tensor([[1000.0, 1000.0], [-1000.0, -1000.0 + math.log(3)]])
    torch.testing.assert_close(log_mean_exp(a, dim=1), torch.tensor([1000.0, -1000.0 + math.log(2.0)]))
    b = torch.randn(7, 3, dtype=torch.float64)
    torch.testing.assert_close(log_mean_exp(b, 0), torch.log(torch.exp(b).mean(0)))


@pytest.mark.parametrize("logit", [-20.0, -3.0, -0.5, -1e-3, 0.0, 2e-3, 0.7, 5.0, 20.0])
def test_continuous_bernoulli_normalises_and_has_the_right_mean(logit):
    logits = torch.tensor([[logit]], dtype=torch.float64)

    def density(x):
        return math.exp(log_continuous_bernoulli(torch.tensor([[x]], dtype=torch.float64), logits).item())

    mass, _ = integrate.quad(density, 0, 1, limit=200, points=[0.001, 0.01, 0.99, 0.999])
    mean, _ = integrate.quad(lambda x: x * density(x), 0, 1, limit=200, points=[0.001, 0.01, 0.99, 0.999])
    assert mass == pytest.approx(1.0, abs=1e-6)
    assert continuous_bernoulli_mean(logits).item() == pytest.approx(mean, abs=1e-6)


# The branch switch in continuous_bernoulli_log_norm: |l| < SWITCH uses the Taylor series, the rest the exact formula.
SWITCH = 1e-2


@pytest.fixture(scope="module")
def cb_log_norm_series():
    """Taylor coefficients of log C in the logit l, derived by sympy from the paper's C(lambda), lambda = sigmoid(l)."""
    sp = pytest.importorskip("sympy")
    l = sp.symbols("l", real=True)
    lam = 1 / (1 + sp.exp(-l))
    log_c = sp.log(2 * sp.atanh(1 - 2 * lam) / (1 - 2 * lam))  # Loaiza-Ganem & Cunningham (2019)
    series = sp.series(log_c, l, 0, 8).removeO()
    return [series.coeff(l, k) for k in range(8)], sp


def test_continuous_bernoulli_log_norm_series_matches_sympy(cb_log_norm_series):
    coeffs, sp = cb_log_norm_series
    assert coeffs[0] == sp.log(2)
    assert coeffs[2] == sp.Rational(1, 12) and coeffs[4] == sp.Rational(-7, 1440)
    assert all(c == 0 for c in coeffs[1::2]), "C is even in l"
    # the first term the code drops is a few ulp of log C at the switch
    assert abs(float(coeffs[6])) * SWITCH**6 < 4 * np.spacing(math.log(2))
    # recover the code's polynomial from values inside the Taylor branch: least squares in l^2 on [0, SWITCH)
    l = np.linspace(0, 0.999 * SWITCH, 201)
    y = continuous_bernoulli_log_norm(torch.tensor(l, dtype=torch.float64)).numpy() - math.log(2)
    c2, c4 = np.linalg.lstsq(np.stack([l**2, l**4], axis=1), y, rcond=None)[0]
    assert c2 == pytest.approx(float(coeffs[2]), rel=1e-9)
    assert c4 == pytest.approx(float(coeffs[4]), rel=1e-3)  # -l^4/360 gives c4 = -0.00278, not -0.00486


def _log_norm_reference(values):
    """log(l / tanh(l/2)) at each float64 value, in 50-digit arithmetic (0 -> log 2)."""
    import mpmath

    with mpmath.workdps(50):
        return np.array([
            float(mpmath.log(mpmath.mpf(float(v)) / mpmath.tanh(mpmath.mpf(float(v)) / 2))) if v != 0 else math.log(2)
            for v in values
        ])


def test_continuous_bernoulli_log_norm_is_accurate_and_continuous_across_the_switch():
    below = np.nextafter(SWITCH, 0)
    near = np.concatenate([
        SWITCH * (1 + np.linspace(-0.5, 0.5, 101)),  # both branches around the switch
        [below, SWITCH, np.nextafter(SWITCH, 1)],
        np.geomspace(1e-8, 1e4, 121),  # the rest of the range, through tanh(l/2) -> 1
        [0.0],
    ])
    l = np.concatenate([near, -near])
    got = continuous_bernoulli_log_norm(torch.tensor(l, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got, _log_norm_reference(l), rtol=1e-15, atol=0)
    # no step at the switch: over one ulp of l the code moves as little as the true function (~l/6 ulp), up to
    # rounding in each branch (the old -l^4/360 left a 3e-11 step)
    pair = continuous_bernoulli_log_norm(torch.tensor([below, SWITCH], dtype=torch.float64)).numpy()
    assert abs(np.diff(pair)[0] - np.diff(_log_norm_reference([below, SWITCH]))[0]) <= 4 * np.spacing(math.log(2))


def test_continuous_bernoulli_log_norm_in_float32_and_at_extremes():
    l = np.concatenate([SWITCH * (1 + np.linspace(-0.5, 0.5, 41)), [0.0, 0.3, 30.0, 1e4]])
    got = continuous_bernoulli_log_norm(torch.tensor(l, dtype=torch.float32))
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.double().numpy(), _log_norm_reference(l.astype(np.float32)), rtol=1e-6)
    x = torch.tensor([-1e4, -3.0, 0.0, 1e-3, 3.0, 1e4], dtype=torch.float64, requires_grad=True)
    continuous_bernoulli_log_norm(x).sum().backward()
    assert torch.isfinite(x.grad).all()
