"""One-sided label smoothing (Salimans et al. 2016) in dgmlab.models.gan: the loss against PyTorch's binary
cross-entropy with smoothed targets, the smoothed optimal discriminator alpha p_data / (p_data + p_g) found by
minimising the loss on a 1-d toy, the config's checks, and that GANStep passes the option on."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from dgmlab.models.gan import (
    Discriminator,
    GANConfig,
    GANStep,
    GANTrainConfig,
    Generator,
    discriminator_loss,
)
from dgmlab.utils import randn


def logits(n, seed, scale=4.0):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


@pytest.mark.parametrize("alpha", [1.0, 0.9, 0.7, 0.5])
def test_loss_is_the_cross_entropy_with_target_alpha_on_real_and_zero_on_fake(alpha):
    real, fake = logits(64, 0), logits(40, 1)
    reference = F.binary_cross_entropy_with_logits(real, torch.full_like(real, alpha)) + (
        F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    )
    torch.testing.assert_close(discriminator_loss(real, fake, alpha), reference, rtol=1e-12, atol=1e-12)


def test_the_default_is_the_unsmoothed_loss_to_the_last_bit():
    real, fake = logits(64, 2), logits(64, 3)
    unsmoothed = F.softplus(-real).mean() + F.softplus(fake).mean()
    assert torch.equal(discriminator_loss(real, fake), unsmoothed)
    assert torch.equal(discriminator_loss(real, fake, 1.0), unsmoothed)
    assert GANTrainConfig().label_smoothing == 1.0


def test_smoothing_touches_only_the_real_side():
    real, fake = logits(32, 4), logits(32, 5)
    fake2 = fake + 1.0
    # changing the fakes changes both losses by the same amount: their term does not depend on alpha
    d_plain = discriminator_loss(real, fake2) - discriminator_loss(real, fake)
    d_smooth = discriminator_loss(real, fake2, 0.8) - discriminator_loss(real, fake, 0.8)
    torch.testing.assert_close(d_plain, d_smooth, rtol=1e-12, atol=1e-12)


def test_confident_logits_stay_finite_and_exact():
    # target 0.9 on a real logit of 200: 0.9 softplus(-200) + 0.1 softplus(200) = 0.1 * 200
    loss = discriminator_loss(torch.tensor([200.0]), torch.tensor([-200.0]), 0.9)
    assert loss.item() == pytest.approx(20.0, rel=1e-6)


def test_the_minimiser_is_alpha_times_the_unsmoothed_optimal_discriminator():
    """On a 1-d toy, give D one free logit per bin and minimise the smoothed loss on points of p_data and p_g: the
    optimum in each bin is alpha n_real / (n_real + n_fake), and with the bin masses P_data(bin), P_g(bin) in place
    of the counts, the smoothed D* = alpha p_data / (p_data + p_g) of the discretised densities."""
    alpha, n = 0.9, 20_000
    # evenly spread points (quantiles at (i + 1/2) / n): their bin counts are the bin masses up to 1/n, without
    # sampling noise; p_data = (N(-1, 0.5^2) + N(1, 0.5^2)) / 2, p_g = N(0.5, 1)
    u = (np.arange(n // 2) + 0.5) / (n // 2)
    x_real = torch.from_numpy(np.concatenate([stats.norm.ppf(u, -1, 0.5), stats.norm.ppf(u, 1, 0.5)]))
    x_fake = torch.from_numpy(stats.norm.ppf((np.arange(n) + 0.5) / n, 0.5, 1.0))
    edges = np.linspace(-1.5, 1.5, 16)  # 15 bins of width 0.2 where both have mass
    keep_r, keep_f = (x_real > edges[0]) & (x_real < edges[-1]), (x_fake > edges[0]) & (x_fake < edges[-1])
    bin_r = torch.bucketize(x_real[keep_r], torch.from_numpy(edges)) - 1  # [n_r] bin of each kept real point
    bin_f = torch.bucketize(x_fake[keep_f], torch.from_numpy(edges)) - 1
    l = torch.zeros(len(edges) - 1, dtype=torch.float64, requires_grad=True)  # one logit per bin
    for _ in range(10):
        # Newton's method with autograd: the loss is a sum of one term per bin, so the Hessian is diagonal and its
        # diagonal is the gradient of the summed gradient. The losses are means over each side's kept points.
        (grad,) = torch.autograd.grad(discriminator_loss(l[bin_r], l[bin_f], alpha), l, create_graph=True)
        (hess,) = torch.autograd.grad(grad.sum(), l)
        with torch.no_grad():
            l -= grad / hess
    assert grad.abs().max() < 1e-10, "Newton's method converged"
    d = torch.sigmoid(l.detach()).numpy()
    n_r = np.bincount(bin_r.numpy(), minlength=len(d)) / int(keep_r.sum())
    n_f = np.bincount(bin_f.numpy(), minlength=len(d)) / int(keep_f.sum())
    np.testing.assert_allclose(d, alpha * n_r / (n_r + n_f), rtol=1e-8)
    # the reference from scipy's normal CDF: the masses of the bins, renormalised to the kept interval
    cdf_data = (stats.norm.cdf(edges, -1, 0.5) + stats.norm.cdf(edges, 1, 0.5)) / 2
    p_data, p_g = np.diff(cdf_data), np.diff(stats.norm.cdf(edges, 0.5, 1.0))
    p_data, p_g = p_data / p_data.sum(), p_g / p_g.sum()
    d_star = alpha * p_data / (p_data + p_g)
    np.testing.assert_allclose(d, d_star, atol=2e-3)
    # the unsmoothed optimum is far outside that tolerance, so the check sees a missing alpha
    assert np.abs(d - d_star / alpha).min() > 0.02


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.1, math.nan])
def test_config_rejects_a_target_outside_zero_one(bad):
    with pytest.raises(ValueError, match="label_smoothing is the target for real images"):
        GANTrainConfig(label_smoothing=bad)
    with pytest.raises(ValueError, match="label_smoothing"):
        discriminator_loss(torch.zeros(2), torch.zeros(2), bad)


def test_gan_step_trains_the_discriminator_on_the_smoothed_loss():
    """The d_loss a GANStep reports is the smoothed cross-entropy of copies of G and D fed the same noise."""
    cfg = GANConfig(z_dim=8, g_hidden=(32,), d_hidden=(32,), dropout=0.0)  # no dropout: D is deterministic
    torch.manual_seed(0)
    G, D = Generator(cfg), Discriminator(cfg)
    G0, D0 = copy.deepcopy(G), copy.deepcopy(D)
    x = torch.rand(16, 784, generator=torch.Generator().manual_seed(1))
    config = GANTrainConfig(label_smoothing=0.9, seed=3, device="cpu")
    terms = GANStep(G, D, config)(x)
    z = randn(16, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        l_real, l_fake = D0(x), D0(G0(z))
    reference = F.binary_cross_entropy_with_logits(l_real, torch.full_like(l_real, 0.9)) + (
        F.binary_cross_entropy_with_logits(l_fake, torch.zeros_like(l_fake))
    )
    torch.testing.assert_close(terms["d_loss"], reference, rtol=1e-5, atol=1e-6)
    unsmoothed = GANStep(copy.deepcopy(G0), copy.deepcopy(D0), GANTrainConfig(seed=3, device="cpu"))(x)["d_loss"]
    # 0.1 mean(l_real) apart at this initialisation: far beyond the tolerance above
    assert abs(float(unsmoothed) - float(reference)) > 2e-4, "the smoothing changed the loss the step minimises"
