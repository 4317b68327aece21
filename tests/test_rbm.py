"""The RBM against brute force on tiny models: energy, free energy, both conditionals, the partition function, the
exact log-likelihood and its gradient; Gibbs sampling against the exact distribution; CD and PCD steps that raise
the likelihood; AIS within its standard error of the exact log Z; the sampling rule and checkpoints."""

import math
from types import SimpleNamespace

import pytest
import torch

from dgmlab.checkpoint import load_checkpoint, save_checkpoint
from dgmlab.models.rbm import (
    RBM,
    RBMConfig,
    RBMStep,
    RBMTrainConfig,
    ais_betas,
    ais_log_partition,
    all_binary,
    base_rate_bias,
    cd_loss,
    energy,
    free_energy,
    hidden_probs,
    log_partition_exact,
    visible_probs,
)
from dgmlab.train import fit

V, H = 12, 6  # 4,096 visible states, 64 hidden states, 262,144 joint states


def tiny(V=V, H=H, scale=0.8, seed=0):
    """A tiny RBM in float64 with weights large enough to make the distribution far from uniform."""
    g = torch.Generator().manual_seed(seed)
    rbm = RBM(RBMConfig(n_visible=V, n_hidden=H)).double()
    with torch.no_grad():
        rbm.W.copy_(scale * torch.randn(V, H, generator=g, dtype=torch.float64))
        rbm.b.copy_(0.5 * torch.randn(V, generator=g, dtype=torch.float64))
        rbm.c.copy_(0.5 * torch.randn(H, generator=g, dtype=torch.float64))
    return rbm


def joint_log_weights(rbm):
    """-E(v, h) for every joint state, [2^V, 2^H], by brute force on the energy (nothing summed analytically)."""
    vs = all_binary(rbm.config.n_visible, torch.float64)
    hs = all_binary(rbm.config.n_hidden, torch.float64)
    v_rep = vs[:, None, :].expand(-1, len(hs), -1).reshape(-1, vs.shape[1])
    h_rep = hs[None, :, :].expand(len(vs), -1, -1).reshape(-1, hs.shape[1])
    with torch.no_grad():
        return -energy(v_rep, h_rep, rbm.W, rbm.b, rbm.c).reshape(len(vs), len(hs)), vs, hs


def test_energy_is_the_formula_summed_over_units():
    rbm = tiny()
    g = torch.Generator().manual_seed(1)
    v = torch.bernoulli(torch.full((5, V), 0.5, dtype=torch.float64), generator=g)
    h = torch.bernoulli(torch.full((5, H), 0.5, dtype=torch.float64), generator=g)
    with torch.no_grad():
        loops = torch.tensor(
            [
                -sum(rbm.b[i] * v[n, i] for i in range(V))
                - sum(rbm.c[j] * h[n, j] for j in range(H))
                - sum(v[n, i] * rbm.W[i, j] * h[n, j] for i in range(V) for j in range(H))
                for n in range(5)
            ],
            dtype=torch.float64,
        )
        torch.testing.assert_close(rbm.energy(v, h), loops, rtol=1e-12, atol=1e-12)


def test_free_energy_matches_the_brute_force_sum_over_hidden_states():
    rbm = tiny()
    log_w, vs, _ = joint_log_weights(rbm)  # [2^V, 2^H]
    with torch.no_grad():
        torch.testing.assert_close(rbm.free_energy(vs), -torch.logsumexp(log_w, 1), rtol=1e-12, atol=1e-10)


def test_p_h_given_v_is_the_factorised_sigmoid_of_the_joint():
    rbm = tiny()
    log_w, vs, hs = joint_log_weights(rbm)
    rows = torch.tensor([0, 1, 777, 2048, 4095])  # a few visible states
    p_h = torch.softmax(log_w[rows], 1)  # p(h | v) over all 64 hidden states, [5, 64]
    with torch.no_grad():
        q = hidden_probs(vs[rows], rbm.W, rbm.c)  # [5, H]
    # the marginals p(h_j = 1 | v) by summing the joint, and the whole conditional as a product of Bernoullis
    torch.testing.assert_close(p_h @ hs, q, rtol=1e-10, atol=1e-12)
    product = torch.exp(hs @ torch.log(q).T + (1 - hs) @ torch.log1p(-q).T).T  # [5, 64]
    torch.testing.assert_close(p_h, product, rtol=1e-9, atol=1e-12)


def test_p_v_given_h_is_the_factorised_sigmoid_of_the_joint():
    rbm = tiny()
    log_w, vs, hs = joint_log_weights(rbm)
    cols = torch.tensor([0, 5, 31, 63])
    p_v = torch.softmax(log_w[:, cols].T, 1)  # p(v | h) over all 4096 visible states, [4, 4096]
    with torch.no_grad():
        q = visible_probs(hs[cols], rbm.W, rbm.b)  # [4, V]
    torch.testing.assert_close(p_v @ vs, q, rtol=1e-10, atol=1e-12)
    product = torch.exp(vs @ torch.log(q).T + (1 - vs) @ torch.log1p(-q).T).T
    torch.testing.assert_close(p_v, product, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("shape", [(12, 6), (5, 9)], ids=["hidden-smaller", "visible-smaller"])
def test_exact_log_partition_and_log_likelihood_match_brute_force(shape):
    rbm = tiny(*shape)
    log_w, vs, _ = joint_log_weights(rbm)
    log_z = torch.logsumexp(log_w.reshape(-1), 0)  # every joint state
    torch.testing.assert_close(rbm.log_partition_exact(), log_z, rtol=1e-13, atol=1e-10)
    # chunked enumeration gives the same number
    with torch.no_grad():
        torch.testing.assert_close(log_partition_exact(rbm.W, rbm.b, rbm.c, chunk=7), log_z, rtol=1e-13, atol=1e-10)
    log_p = torch.logsumexp(log_w, 1) - log_z  # log p(v) for every v
    torch.testing.assert_close(rbm.log_likelihood(vs, rbm.log_partition_exact()), log_p, rtol=1e-12, atol=1e-10)
    assert abs(torch.logsumexp(log_p, 0).item()) < 1e-10  # a distribution


def test_exact_partition_refuses_too_many_states():
    with pytest.raises(ValueError, match="ais_log_partition"):
        RBM(RBMConfig(n_visible=30, n_hidden=30)).log_partition_exact()


def exact_gradient(rbm, data):
    """The gradient of the mean exact log-likelihood of ``data``, by autograd through the enumerated log Z."""
    rbm.zero_grad()
    ll = (-rbm.free_energy(data) - log_partition_exact(rbm.W, rbm.b, rbm.c)).mean()
    ll.backward()
    return [p.grad.clone() for p in (rbm.W, rbm.b, rbm.c)], ll.item()


def data_set(n=40, seed=3):
    """Binary patterns with structure: two prototypes with 10% of the bits flipped."""
    g = torch.Generator().manual_seed(seed)
    proto = torch.tensor([[1.0] * 6 + [0.0] * 6, [0.0] * 6 + [1.0] * 6], dtype=torch.float64)
    x = proto[torch.randint(2, (n,), generator=g)]
    flip = torch.rand(x.shape, generator=g, dtype=torch.float64) < 0.1
    return torch.where(flip, 1 - x, x)


def test_data_term_minus_model_term_is_the_log_likelihood_gradient():
    rbm, data = tiny(), data_set()
    grads, _ = exact_gradient(rbm, data)
    vs = all_binary(V, torch.float64)
    with torch.no_grad():
        p_v = torch.softmax(-rbm.free_energy(vs), 0)  # the exact model distribution, [4096]
    # E_model[dF/dtheta] by enumeration: the gradient of sum_v p(v) F(v) with p held fixed
    rbm.zero_grad()
    (-(rbm.free_energy(data).mean() - (p_v * rbm.free_energy(vs)).sum())).backward()
    for exact, formula in zip(grads, (rbm.W.grad, rbm.b.grad, rbm.c.grad)):
        torch.testing.assert_close(formula, exact, rtol=1e-10, atol=1e-12)
    # and the closed forms: dlogp/dW = <v h^T>_data - <v h^T>_model, with h replaced by p(h = 1 | v)
    with torch.no_grad():
        data_term = data.T @ hidden_probs(data, rbm.W, rbm.c) / len(data)
        model_term = (vs * p_v[:, None]).T @ hidden_probs(vs, rbm.W, rbm.c)
    torch.testing.assert_close(grads[0], data_term - model_term, rtol=1e-10, atol=1e-12)


def test_cd_gradient_with_long_chains_matches_the_exact_gradient():
    """CD-k with k large: the chains forget the data and sample the model, so the CD gradient is unbiased; with many
    chains its Monte Carlo error is small. Compared with the exact gradient in units of that error."""
    rbm, data = tiny(scale=0.5), data_set()
    grads, _ = exact_gradient(rbm, data)
    n_rep = 500  # 500 chains per data point: 20,000 chains
    v_data = data.repeat(n_rep, 1)
    step = RBMStep(rbm, RBMTrainConfig(k=30, batch_size=len(v_data), device="cpu", seed=0))
    v_model, _ = step.negative_samples(v_data)
    rbm.zero_grad()
    (-cd_loss(rbm, v_data, v_model)).backward()
    cd = rbm.W.grad
    # the Monte Carlo error of the model term, from the per-chain terms v h^T
    with torch.no_grad():
        per_chain = v_model[:, :, None] * hidden_probs(v_model, rbm.W, rbm.c)[:, None, :]  # [N, V, H]
        se = per_chain.std(0) / math.sqrt(len(v_model))
    z = (cd - grads[0]) / se
    assert z.abs().max() < 5, z.abs().max()  # 72 entries: all within 5 standard errors
    assert z.pow(2).mean() < 2.0  # and on average within about one
    # CD-1 is biased: its gradient is much further from the exact one than the long chains' gradient
    step1 = RBMStep(rbm, RBMTrainConfig(k=1, batch_size=len(v_data), device="cpu", seed=0))
    v1, _ = step1.negative_samples(v_data)
    rbm.zero_grad()
    (-cd_loss(rbm, v_data, v1)).backward()
    assert (rbm.W.grad - grads[0]).norm() > 3 * (cd - grads[0]).norm()


@pytest.mark.parametrize("persistent", [False, True], ids=["CD-1", "PCD-1"])
def test_training_steps_raise_the_exact_likelihood_of_the_training_data(persistent):
    torch.manual_seed(0)
    rbm = RBM(RBMConfig(n_visible=V, n_hidden=H, init_std=0.1)).double()
    data = data_set()
    _, before = exact_gradient(rbm, data)
    config = RBMTrainConfig(epochs=1, batch_size=40, lr=0.05, k=1, persistent=persistent, device="cpu")
    step = RBMStep(rbm, config)
    grads, _ = exact_gradient(rbm, data)
    v_data = data.repeat(100, 1)  # 100 negative samples per data point: the expected CD direction, little noise
    v_model, _ = RBMStep(rbm, RBMTrainConfig(k=1, batch_size=len(v_data), persistent=persistent)).negative_samples(
        v_data
    )
    rbm.zero_grad()
    (-cd_loss(rbm, v_data, v_model)).backward()
    # the sign: the CD estimate points uphill, at an acute angle to the exact gradient
    cd = torch.cat([p.grad.reshape(-1) for p in (rbm.W, rbm.b, rbm.c)])
    exact = torch.cat([g.reshape(-1) for g in grads])
    assert torch.dot(cd, exact) > 0.5 * cd.norm() * exact.norm()
    # and steps taken by the step class raise the exact log-likelihood
    x = data.float().double()
    for _ in range(30):
        terms = step(x)
    _, after = exact_gradient(rbm, data)
    assert after > before + 1.0, (before, after)
    assert set(terms) == {"fe_gap", "free_energy", "recon_error"}


def test_gibbs_chains_sample_the_exact_distribution():
    rbm = tiny(V=4, H=3, scale=1.0)
    vs = all_binary(4, torch.float64)
    with torch.no_grad():
        p = torch.softmax(-rbm.free_energy(vs), 0)  # [16]
    g = torch.Generator().manual_seed(0)
    v = torch.zeros(40_000, 4, dtype=torch.float64)
    out = rbm.gibbs_chain(v, 40, g)["v"]
    index = (out @ (2 ** torch.arange(3, -1, -1, dtype=torch.float64))).long()
    freq = torch.bincount(index, minlength=16).double() / len(out)
    se = (p * (1 - p) / len(out)).sqrt()
    assert ((freq - p).abs() / se).max() < 4.5, (freq, p)


def test_ais_is_within_three_standard_errors_of_the_exact_log_z():
    rbm = tiny(scale=1.0)
    log_z = rbm.log_partition_exact().item()
    data = data_set(200)
    with torch.no_grad():
        result = ais_log_partition(
            rbm.W, rbm.b, rbm.c, n_betas=300, n_runs=400, base_bias=base_rate_bias(data),
            generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
    assert result.log_w.shape == (400,) and 0 < result.log_z_se < 0.1, result.log_z_se
    assert abs(result.log_z.item() - log_z) < 3 * result.log_z_se, (result.log_z.item(), log_z, result.log_z_se)
    # with a single annealing step AIS is plain importance sampling from the base model: still unbiased for Z,
    # with a larger error than the annealed run
    crude = ais_log_partition(rbm.W, rbm.b, rbm.c, n_betas=3, n_runs=400, generator=torch.Generator().manual_seed(1))
    assert crude.log_z_se > 2 * result.log_z_se


def test_ais_schedule():
    betas = ais_betas(290)
    assert betas[0] == 0 and betas[-1] == 1 and len(betas) == 291
    assert torch.all(betas[1:] > betas[:-1])
    assert (betas <= 0.5).sum() == 11 and (betas > 0.9).sum() == 200  # 1/29, 8/29, 20/29 of the steps


@pytest.mark.parametrize("mode", [True, False], ids=["train", "eval"])
def test_sample_follows_the_rule(mode):
    torch.manual_seed(0)
    rbm = RBM(RBMConfig(n_visible=20, n_hidden=7, init_std=0.5))
    rbm.train(mode)
    a = rbm.sample(6, torch.Generator().manual_seed(4), steps=5)
    assert rbm.training is mode and a.shape == (6, 20) and not a.requires_grad
    assert 0 <= a.min() and a.max() <= 1
    # the same as drawing the uniforms on the CPU generator by hand: start, then (h, v) five times
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        v = (torch.rand(6, 20, generator=g) < 0.5).float()
        for _ in range(5):
            h = (torch.rand(6, 7, generator=g) < torch.sigmoid(v @ rbm.W + rbm.c)).float()
            pv = torch.sigmoid(h @ rbm.W.T + rbm.b)
            v = (torch.rand(6, 20, generator=g) < pv).float()
    torch.testing.assert_close(a, pv, rtol=0, atol=0)
    with pytest.raises(ValueError, match="draws noise on the CPU"):
        rbm.sample(2, SimpleNamespace(device=torch.device("cuda")))


def test_one_epoch_of_fit_and_evaluate():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(64, 20, generator=g) < 0.3).float()
    torch.manual_seed(0)
    rbm = RBM(RBMConfig(n_visible=20, n_hidden=8))
    config = RBMTrainConfig(epochs=2, batch_size=16, k=2, persistent=True, device="cpu")
    step = RBMStep(rbm, config)
    history = fit(step, x, val=x[:32], progress=False)
    assert len(history) == 2 and {"train_fe_gap", "train_recon_error", "val_free_energy"} <= set(history[0])
    assert step.chains.shape == (16, 20)
    with pytest.raises(TypeError, match="RBMTrainConfig"):
        from dgmlab.step import TrainConfig

        RBMStep(rbm, TrainConfig())


def test_checkpoint_round_trip(tmp_path):
    rbm = tiny().float()
    path = save_checkpoint(tmp_path / "rbm.pt", rbm, train_config=RBMTrainConfig(k=3, persistent=True))
    loaded = load_checkpoint(path)
    assert type(loaded.model) is RBM and loaded.model.config == rbm.config
    assert loaded.train_config["k"] == 3 and loaded.train_config["persistent"] is True
    v = all_binary(V)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.free_energy(v), rbm.free_energy(v), rtol=0, atol=0)
        torch.testing.assert_close(free_energy(v, loaded.model.W, loaded.model.b, loaded.model.c), rbm(v))


def test_zoo_log_likelihood_reuses_the_saved_ais_and_combines_the_errors():
    from dgmlab.checkpoint import Checkpoint
    from dgmlab.zoo import rbm as zoo_rbm

    torch.manual_seed(0)
    model = RBM(RBMConfig(n_visible=784, n_hidden=8, init_std=0.05))
    K, M = zoo_rbm.ais_settings()
    saved = {"log_z": 123.0, "log_z_se": 0.3, "log_w": torch.zeros(M), "n_betas": K, "n_runs": M, "seed": 0}
    checkpoint = Checkpoint({"model": model}, extra={"ais": saved})
    v = (torch.rand(50, 784, generator=torch.Generator().manual_seed(1)) < 0.2).float()
    # a plain tensor of 0/1 pixels is "binarised" again by the entry, which leaves it unchanged
    result = zoo_rbm.test_log_likelihood(checkpoint, v)
    with torch.no_grad():
        ll = -model.free_energy(v) - 123.0
    torch.testing.assert_close(result["ll"], ll)
    se_digits = ll.std().item() / math.sqrt(len(ll))
    assert result["se"] == pytest.approx(math.hypot(se_digits, 0.3))
    entry = next(e for e in zoo_rbm.ENTRIES if e.name == "rbm")
    assert entry.log_likelihood(checkpoint, v) == (result["mean"], result["se"]) and "AIS" in entry.log_likelihood_kind
    assert checkpoint.extra["ais"] is saved  # reused, not recomputed
