"""CycleGAN (dgmlab.models.cyclegan)."""

import copy

import numpy as np
import pytest
import torch

from dgmlab.checkpoint import load_checkpoint, save_checkpoint
from dgmlab.data import Split
from dgmlab.models.cyclegan import (
    CycleGANConfig,
    CycleGANStep,
    CycleGANTrainConfig,
    Translator,
    cycle_loss,
    domain_discriminator,
)
from dgmlab.models.gan import discriminator_step, generator_loss_nonsaturating
from dgmlab.train import fit


def _params(module):
    return [p.detach().clone() for p in module.parameters()]


def _changed(before, module):
    return [not torch.equal(a, b.detach()) for a, b in zip(before, module.parameters())]


def _tiny(lambda_cycle=10.0, seed=0):
    torch.manual_seed(seed)
    config = CycleGANConfig(x_dim=4, hidden=(8,), d_hidden=(8,))
    G, F, D_X, D_Y = Translator(config), Translator(config), domain_discriminator(config), domain_discriminator(config)
    y_data = torch.rand(50, 4)
    train = CycleGANTrainConfig(device="cpu", lr=1e-2, lambda_cycle=lambda_cycle)
    return CycleGANStep(G, F, D_X, D_Y, y_data, train)


def test_cycle_loss_is_zero_for_inverse_maps_and_l1_otherwise():
    x = torch.rand(16, 28, 28)

    def rotate(v):  # an exact inverse pair: a quarter turn and its opposite
        return torch.rot90(v, 1, dims=(1, 2))

    def unrotate(v):
        return torch.rot90(v, -1, dims=(1, 2))

    assert cycle_loss(x, unrotate(rotate(x))).item() == 0.0
    assert cycle_loss(x, 1 - (1 - x)).item() == pytest.approx(0, abs=1e-7)  # inversion of grey levels
    wrong = rotate(rotate(x))  # F = G is not the inverse of a quarter turn
    expected = np.abs(x.numpy() - wrong.numpy()).mean()  # the L1 loss per coordinate, by numpy
    assert cycle_loss(x, wrong).item() == pytest.approx(float(expected), rel=1e-6) and expected > 0.1


def test_translator_step_updates_only_the_translators():
    step = _tiny()
    x, y = torch.rand(10, 4), step.draw_y(10)
    before = {name: _params(m) for name, m in step.modules.items()}
    terms, y_fake, x_fake = step.translator_step(x, y)
    for name in ("G", "F"):
        assert all(_changed(before[name], step.modules[name])), name
    for name in ("D_X", "D_Y"):
        assert not any(_changed(before[name], step.modules[name])), name
        assert all(p.requires_grad for p in step.modules[name].parameters())  # unfrozen again
    assert set(terms) == {"g_adv", "cycle"}

    before = {name: _params(m) for name, m in step.modules.items()}
    discriminator_step(step.D_Y, step.opt_DY, y, y_fake)  # the step's optimiser of D_Y moves D_Y alone
    assert all(_changed(before["D_Y"], step.D_Y))
    assert not any(any(_changed(before[n], step.modules[n])) for n in ("G", "F", "D_X"))
    before = {name: _params(m) for name, m in step.modules.items()}
    discriminator_step(step.D_X, step.opt_DX, x, x_fake)
    assert all(_changed(before["D_X"], step.D_X))
    assert not any(any(_changed(before[n], step.modules[n])) for n in ("G", "F", "D_Y"))


def test_translator_gradients_match_autograd_of_the_objective():
    lam = 3.0
    step = _tiny(lambda_cycle=lam)
    G, F, D_X, D_Y = (copy.deepcopy(m) for m in (step.G, step.F, step.D_X, step.D_Y))
    x, y = torch.rand(10, 4), torch.rand(10, 4)
    # the objective written out by hand: adversarial terms plus lambda times the two L1 round trips
    objective = (
        generator_loss_nonsaturating(D_Y(G(x)))
        + generator_loss_nonsaturating(D_X(F(y)))
        + lam * ((F(G(x)) - x).abs().mean() + (G(F(y)) - y).abs().mean())
    )
    expected = torch.autograd.grad(objective, [*G.parameters(), *F.parameters()])
    step.opt_GF.step = lambda: None  # keep the gradients, skip the update
    terms, _, _ = step.translator_step(x, y)
    got = [p.grad for p in (*step.G.parameters(), *step.F.parameters())]
    for a, b in zip(got, expected):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    assert all(p.grad is None for p in (*step.D_X.parameters(), *step.D_Y.parameters()))
    assert terms["cycle"].item() == pytest.approx(
        ((F(G(x)) - x).abs().mean() + (G(F(y)) - y).abs().mean()).item(), rel=1e-6
    )


def test_without_the_cycle_loss_G_only_sees_D_Y():
    step = _tiny(lambda_cycle=0.0)
    G, D_Y = copy.deepcopy(step.G), copy.deepcopy(step.D_Y)
    x, y = torch.rand(10, 4), torch.rand(10, 4)
    expected = torch.autograd.grad(generator_loss_nonsaturating(D_Y(G(x))), list(G.parameters()))
    step.opt_GF.step = lambda: None
    step.translator_step(x, y)
    for p, e in zip(step.G.parameters(), expected):
        assert torch.allclose(p.grad, e, rtol=1e-5, atol=1e-7)


def test_full_step_moves_every_network_and_draws_y_from_its_own_data():
    step = _tiny()
    before = {name: _params(m) for name, m in step.modules.items()}
    terms = step(torch.rand(12, 4), torch.zeros(12, dtype=torch.long))
    assert set(terms) == {"g_adv", "cycle", "d_x_loss", "d_y_loss", "d_x_fake", "d_y_fake"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in terms.values())
    for name, m in step.modules.items():
        assert all(_changed(before[name], m)), name
    y = step.draw_y(30)
    assert all(any(torch.equal(row, d) for d in step.y_data) for row in y)  # rows of Y, never of X
    with pytest.raises(ValueError, match="y_data must be"):
        CycleGANStep(step.G, step.F, step.D_X, step.D_Y, torch.rand(5, 3), CycleGANTrainConfig(device="cpu"))


def test_fit_and_evaluate_the_cycle_error():
    step = _tiny()
    split = Split(torch.rand(40, 4), torch.zeros(40, dtype=torch.long), "toy/x", "toy")
    history = fit(step, split, CycleGANTrainConfig(epochs=2, batch_size=10, device="cpu"), val=split, progress=False)
    x = split.x
    with torch.no_grad():
        expected = (step.F.eval()(step.G.eval()(x)) - x).abs().mean().item()
    assert history[-1]["val_cycle_x"] == pytest.approx(expected, rel=1e-5)
    assert torch.equal(step.G.translate(x), step.G(x).detach())


def test_checkpoint_round_trip(tmp_path):
    step = _tiny()
    path = save_checkpoint(tmp_path / "cyc.pt", step.modules, train_config=step.config)
    loaded = load_checkpoint(path)
    x = torch.rand(6, 4)
    for name, module in step.modules.items():
        assert type(loaded[name]) is type(module) and loaded[name].config == module.config
        with torch.no_grad():
            assert torch.equal(loaded[name](x), module.eval()(x))


def test_residual_translator_starts_as_the_identity():
    torch.manual_seed(0)
    G = Translator(CycleGANConfig(x_dim=784, hidden=(16,), residual=True))
    x = torch.rand(8, 784)
    x[:, :10] = 0.0  # pixels at 0 and 1 are clamped to [eps, 1 - eps] before the logit
    x[:, 10:20] = 1.0
    with torch.no_grad():
        out = G(x)
    assert torch.allclose(out, x.clamp(1e-3, 1 - 1e-3), atol=1e-6)
    assert cycle_loss(x, G(G(x)).detach()).item() < 1e-3  # G = F = identity: the round trip returns x
    # ... and training moves it: the last layer has a gradient
    G.net(x).sum().backward()
    assert G.net[-1].weight.grad.abs().sum() > 0
