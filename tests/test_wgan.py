"""Tests of dgmlab.models.wgan: the interpolates, the critic's gradient norm against per-example autograd and a linear
critic's closed form, the penalty's gradient with respect to the critic's parameters against its closed form, the
losses, the step's schedule (which player moves on which batch) replayed with the pure functions, the checks on the
critic, short NaN-free runs on the ring toy and on MNIST-sized images, evaluate, and a checkpoint round trip."""

import copy
import math

import pytest
import torch
from torch import nn

from dgmlab.checkpoint import load_checkpoint, save_checkpoint
from dgmlab.data import Split
from dgmlab.models.dcgan import DCDiscriminator, DCGANConfig, DCGenerator
from dgmlab.models.gan import Discriminator, GANConfig, Generator, generator_step
from dgmlab.models.wgan import (
    WGANGPStep,
    WGANTrainConfig,
    critic_loss,
    critic_step,
    gradient_norm,
    gradient_penalty,
    interpolates,
    wasserstein_estimate,
    wgan_generator_loss,
)
from dgmlab.step import adam
from dgmlab.toys import ring
from dgmlab.train import fit
from dgmlab.utils import randn


class Linear(nn.Module):
    """``f(x) = w . x + b``: its gradient is ``w`` everywhere."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.as_tensor(w, dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(0.3, dtype=torch.float64))

    def forward(self, x):
        return x.flatten(1) @ self.w + self.b


def mlp_wgan(x_dim=2, seed=0):
    torch.manual_seed(seed)
    G = Generator(GANConfig(x_dim=x_dim, z_dim=4, g_hidden=(32,), batch_norm=False))
    f = Discriminator(GANConfig(x_dim=x_dim, d_hidden=(32,), dropout=0.0))
    return G, f


def test_interpolates_lie_on_the_segments_with_one_weight_per_example():
    g = torch.Generator().manual_seed(0)
    x, x_fake = torch.rand(50, 3, 4, generator=g), torch.rand(50, 3, 4, generator=g)
    x_hat = interpolates(x, x_fake, torch.Generator().manual_seed(1))
    eps = torch.rand(50, generator=torch.Generator().manual_seed(1))  # the same draw: one U[0, 1] per example
    torch.testing.assert_close(x_hat, eps[:, None, None] * x + (1 - eps[:, None, None]) * x_fake)
    assert not x_hat.requires_grad
    with pytest.raises(ValueError, match="same shape"):
        interpolates(x, x_fake[:3])


def test_a_linear_critic_has_gradient_norm_w_and_penalty_exactly_its_square_distance_to_one():
    w = torch.tensor([0.6, -1.2, 2.0, 0.5], dtype=torch.float64)
    f = Linear(w)
    x_hat = torch.randn(7, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    norms = gradient_norm(f, x_hat)
    torch.testing.assert_close(norms, torch.full((7,), w.norm().item(), dtype=torch.float64), rtol=1e-15, atol=0)
    assert gradient_penalty(norms).item() == pytest.approx((math.sqrt(0.36 + 1.44 + 4 + 0.25) - 1) ** 2, rel=1e-14)
    assert gradient_penalty(gradient_norm(Linear(w / w.norm()), x_hat)).item() < 1e-28  # a 1-Lipschitz critic: 0


def test_the_penalty_trains_the_critic_with_the_closed_form_gradient():
    """d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||: reached only through create_graph=True."""
    w = torch.tensor([0.6, -1.2, 2.0, 0.5], dtype=torch.float64)
    f = Linear(w)
    gradient_penalty(gradient_norm(f, torch.rand(5, 4, dtype=torch.float64))).backward()
    torch.testing.assert_close(f.w.grad, 2 * (w.norm() - 1) * w / w.norm(), rtol=1e-12, atol=1e-14)
    assert f.b.grad is None or f.b.grad.abs().item() == 0  # the bias does not change the gradient of f


def test_gradient_norms_match_per_example_autograd_on_a_nonlinear_critic():
    _, f = mlp_wgan(x_dim=6)
    f = f.double()
    x_hat = torch.randn(9, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    reference = []
    for i in range(9):  # one backward pass per example, the brute-force reference of the batched sum trick
        xi = x_hat[i : i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(f(xi).sum(), xi)
        reference.append(g.norm())
    torch.testing.assert_close(gradient_norm(f, x_hat, create_graph=False), torch.stack(reference))


def test_losses_are_the_dual_objective_and_the_penalty():
    f_real, f_fake = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([-1.0, 0.5])
    assert wasserstein_estimate(f_real, f_fake).item() == pytest.approx(2.0 - (-0.25))
    assert critic_loss(f_real, f_fake, torch.tensor(0.5), lambda_gp=10.0).item() == pytest.approx(-2.25 + 5.0)
    assert wgan_generator_loss(f_fake).item() == pytest.approx(0.25)
    # the generator's gradient does not vanish however confident the critic is: f is not squashed
    f_fake = torch.full((4,), -1e4, requires_grad=True)
    wgan_generator_loss(f_fake).backward()
    torch.testing.assert_close(f_fake.grad, torch.full((4,), -0.25))


def params(m):
    return [p.detach().clone() for p in m.parameters()]


def same(a, b):
    return all(torch.equal(p, q) for p, q in zip(a, b))


def test_the_step_moves_the_critic_every_batch_and_the_generator_every_n_critic_batches():
    G, f = mlp_wgan()
    step = WGANGPStep(G, f, WGANTrainConfig(n_critic=3, device="cpu"))
    x = ring().sample(32, torch.Generator().manual_seed(0)).float()
    moved_G = []
    for batch in range(1, 8):
        g0, f0 = params(G), params(f)
        terms = step(x)
        assert not same(f0, params(f)), f"the critic steps on batch {batch}"
        moved_G.append(not same(g0, params(G)))
        assert set(terms) == {"critic_loss", "wasserstein", "gp", "grad_norm", "g_loss"}
    assert moved_G == [False, False, True, False, False, True, False]
    assert step.critic_steps == 7 and step.generator_steps == 2
    assert all(p.requires_grad for p in f.parameters()), "the critic is trainable again after the generator step"


def test_one_generator_batch_is_a_critic_step_then_a_generator_step_replayed_with_the_pure_functions():
    G, f = mlp_wgan()
    G_ref, f_ref = copy.deepcopy(G), copy.deepcopy(f)
    config = WGANTrainConfig(n_critic=1, lambda_gp=5.0, seed=11, device="cpu")
    x = ring().sample(16, torch.Generator().manual_seed(0)).float()
    terms = WGANGPStep(G, f, config)(x)
    # the replay: the same noise (z first, then eps, from one CPU generator seeded with config.seed)
    noise = torch.Generator().manual_seed(11)
    x_fake = G_ref(randn(16, 4, generator=noise))
    opt_G, opt_f = adam(G_ref.parameters(), config), adam(f_ref.parameters(), config)
    ref = critic_step(f_ref, opt_f, x, x_fake, 5.0, noise)
    generator_step(f_ref, opt_G, x_fake, wgan_generator_loss)
    for key in ref:
        torch.testing.assert_close(terms[key], ref[key], rtol=1e-6, atol=1e-7)
    for a, b in zip([*G.parameters(), *f.parameters()], [*G_ref.parameters(), *f_ref.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # the terms are what their names say, for the critic before its step
    assert terms["critic_loss"].item() == pytest.approx(-terms["wasserstein"].item() + 5.0 * terms["gp"].item())


def test_critics_with_batch_norm_or_dropout_are_refused_clearly():
    G = Generator(GANConfig(x_dim=784, z_dim=4, g_hidden=(8,)))
    with pytest.raises(ValueError, match=r"must not use batch norm.*DCGANConfig\(d_batch_norm=False\)"):
        WGANGPStep(G, DCDiscriminator(DCGANConfig(d_features=4)), WGANTrainConfig(device="cpu"))
    with pytest.raises(ValueError, match=r"uses dropout.*GANConfig\(dropout=0.0\)"):
        WGANGPStep(G, Discriminator(GANConfig(d_hidden=(8,), dropout=0.3)), WGANTrainConfig(device="cpu"))


@pytest.mark.parametrize("bad", [dict(n_critic=0), dict(n_critic=2.5), dict(lambda_gp=-1.0), dict(lr=0)])
def test_bad_configs_are_rejected(bad):
    with pytest.raises(ValueError):
        WGANTrainConfig(**bad)


def test_defaults_are_the_papers():
    c = WGANTrainConfig()
    assert (c.lambda_gp, c.n_critic, c.lr) == (10.0, 5, 1e-4) and c.betas in ((0.0, 0.9), (0.5, 0.9))


def test_a_short_run_on_the_ring_is_finite_and_moves_the_critic_toward_unit_gradients():
    G, f = mlp_wgan()
    train, val = ring().split(512, seed=0), ring().split(256, seed=1)
    train, val = (Split(s.x.float(), s.y, s.name, s.source) for s in (train, val))
    step = WGANGPStep(G, f, WGANTrainConfig(epochs=3, batch_size=64, lr=1e-3, device="cpu"))
    start = step.evaluate(val)
    history = fit(step, train, val=val, progress=False)
    assert len(history) == 3 and step.generator_steps == 3 * 8 // 5
    assert all(math.isfinite(v) for row in history for k, v in row.items() if k.startswith(("train_", "val_")))
    # the penalty does its job: the critic's gradient norm on the interpolates moves toward 1
    # (from about 0.2 at initialisation; 24 critic steps are not enough to reach it)
    assert start["grad_norm"] < 0.5 and abs(history[-1]["val_grad_norm"] - 1) < abs(start["grad_norm"] - 1) - 0.1


def test_evaluate_is_deterministic_in_eval_mode_and_changes_nothing():
    torch.manual_seed(0)
    config = DCGANConfig(z_dim=8, g_features=4, d_features=4, d_batch_norm=False)
    G, f = DCGenerator(config), DCDiscriminator(config)
    step = WGANGPStep(G, f, WGANTrainConfig(device="cpu"))
    val = Split(torch.rand(30, 784), torch.zeros(30, dtype=torch.long), "x", "tensor")
    G.train()
    before = copy.deepcopy(G.state_dict()), copy.deepcopy(f.state_dict())
    a = step.evaluate(val, batch_size=16)
    assert a == step.evaluate(val, batch_size=16) and G.training
    assert all(torch.equal(v, G.state_dict()[k]) for k, v in before[0].items()), "batch-norm statistics untouched"
    assert all(torch.equal(v, f.state_dict()[k]) for k, v in before[1].items())
    assert all(p.grad is None for p in f.parameters())
    with torch.no_grad():  # the reference for one term: the critic on the images, without the loop
        assert a["wasserstein"] - a["g_loss"] == pytest.approx(f(val.x).mean().item(), rel=1e-5)


def test_a_dc_critic_trains_on_mnist_sized_images_and_round_trips_through_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    config = DCGANConfig(z_dim=8, g_features=4, d_features=4, d_batch_norm=False)
    G, f = DCGenerator(config), DCDiscriminator(config)
    train = Split(torch.rand(41, 784), torch.zeros(41, dtype=torch.long), "x", "tensor")  # a last batch of 1
    history = fit(
        WGANGPStep(G, f, WGANTrainConfig(epochs=1, batch_size=8, n_critic=2, device="cpu")), train, progress=False
    )
    assert all(math.isfinite(v) for k, v in history[0].items() if k.startswith("train_"))
    path = save_checkpoint(tmp_path / "wgan.pt", {"G": G, "f": f}, history, WGANTrainConfig(), train)
    loaded = load_checkpoint(path)
    assert loaded.train_config["lambda_gp"] == 10.0 and loaded.train_config["n_critic"] == 5
    x = torch.rand(3, 784)
    f.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.modules["f"](x), f(x), rtol=0, atol=0)
    torch.testing.assert_close(
        loaded.modules["G"].sample(4, torch.Generator().manual_seed(0)), G.sample(4, torch.Generator().manual_seed(0))
    )
