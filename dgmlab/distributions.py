"""Log-densities and KL divergences written out by hand (the course does not use ``torch.distributions``).

Every function is pure, works on batches, and sums over the **last** dimension (the event dimension: pixels or
latent coordinates), returning one value per example. Formulas are in the docstrings and derived in the book.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)


def log_bernoulli(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log Bern(x | sigmoid(logits)), summed over the last dim.

    log p(x) = x log s(l) + (1 - x) log(1 - s(l)) = x l - softplus(l), with s the sigmoid and l the logit.
    The right-hand form never evaluates log(0), so extreme logits (|l| ~ 1e4) stay finite. It is computed by
    PyTorch's fused ``binary_cross_entropy_with_logits`` kernel (``= -(x l - softplus(l))``, elementwise): one pass
    over the pixels forward and one backward instead of three, which the training loop feels.

    Args:
        x: ``[..., D]`` values in [0, 1] (binary for a proper likelihood).
        logits: ``[..., D]`` real logits; ``x`` and ``logits`` broadcast against each other.

    Returns:
        ``[...]`` log-probabilities.
    """
    x, logits = torch.broadcast_tensors(x, logits)  # the kernel wants equal shapes; callers may broadcast
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def log_normal_diag(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(x | mu, diag(exp(logvar))), summed over the last dim.

    log p(x) = -1/2 sum_d [log(2 pi) + logvar_d + (x_d - mu_d)^2 / exp(logvar_d)].

    Args:
        x, mu: ``[..., D]``. logvar: ``[..., D]`` or broadcastable (e.g. a scalar tensor for a fixed variance).

    Returns:
        ``[...]`` log-densities.
    """
    logvar = torch.as_tensor(logvar, dtype=x.dtype, device=x.device).expand_as(x)
    return -0.5 * (LOG_2PI + logvar + (x - mu) ** 2 * torch.exp(-logvar)).sum(-1)


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z | 0, I), summed over the last dim: -1/2 sum_d [log(2 pi) + z_d^2]."""
    return -0.5 * (LOG_2PI + z**2).sum(-1)


def kl_normal_std_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Closed-form KL( N(mu, diag(sigma^2)) || N(0, I) ), summed over the last dim.

    KL = 1/2 sum_d [sigma_d^2 + mu_d^2 - 1 - log sigma_d^2]   (Kingma & Welling 2014, appendix B),
    with log sigma^2 = ``logvar``. Derived step by step in the book's KL chapter.

    Args:
        mu, logvar: ``[..., D]``.

    Returns:
        ``[...]`` non-negative divergences (zero exactly when mu = 0 and logvar = 0).
    """
    return 0.5 * (torch.exp(logvar) + mu**2 - 1.0 - logvar).sum(-1)


def log_mean_exp(a: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """log( (1/n) sum_i exp(a_i) ) along ``dim``, computed stably as logsumexp(a) - log n."""
    return torch.logsumexp(a, dim=dim) - math.log(a.shape[dim])


def continuous_bernoulli_log_norm(logits: torch.Tensor) -> torch.Tensor:
    """Elementwise log C(lambda) of the continuous Bernoulli (Loaiza-Ganem & Cunningham 2019), lambda = sigmoid(l).

    C(lambda) = 2 artanh(1 - 2 lambda) / (1 - 2 lambda), and 2 at lambda = 1/2. With 1 - 2 sigmoid(l) = -tanh(l/2)
    and artanh(-tanh(l/2)) = -l/2 this is C = l / tanh(l/2), an even function of l. For |l| < 1e-2 we use the
    Taylor series log C = log 2 + l^2/12 - 7 l^4/1440 + O(l^6), which avoids 0/0; the next term, 31 l^6/90720, is
    below 4e-16 there (about 3 ulp of log 2). ``tests/test_distributions.py`` derives the series with sympy.
    """
    a = logits.abs()
    small = a < 1e-2
    a_safe = torch.where(small, torch.ones_like(a), a)
    # One log of the ratio, with tanh itself (not 1 - 2 sigmoid(-a), which cancels for small a): accurate to ~2 ulp
    # from the switch, where the ratio is ~2, to large a, where tanh(a/2) rounds to 1 and log C = log a.
    exact = torch.log(a_safe / torch.tanh(a_safe / 2))
    taylor = math.log(2.0) + a**2 / 12 - 7 * a**4 / 1440
    return torch.where(small, taylor, exact)


def log_continuous_bernoulli(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log CB(x | sigmoid(logits)) for x in [0, 1], summed over the last dim.

    p(x | lambda) = C(lambda) lambda^x (1 - lambda)^(1 - x), a proper density on [0, 1] (unlike the Bernoulli
    "likelihood" of grey-level pixels, which does not integrate to one). log p = x l - softplus(l) + log C(lambda).
    """
    return (x * logits - F.softplus(logits) + continuous_bernoulli_log_norm(logits)).sum(-1)


def continuous_bernoulli_mean(logits: torch.Tensor) -> torch.Tensor:
    """Mean of the continuous Bernoulli, lambda / (2 lambda - 1) + 1 / (2 artanh(1 - 2 lambda)).

    In terms of the logit l this is lambda / (2 lambda - 1) - 1 / l.

    Near l = 0 the two terms cancel; there we use the series 1/2 + l/12.
    """
    small = logits.abs() < 1e-2
    l_safe = torch.where(small, torch.ones_like(logits), logits)
    lam = torch.sigmoid(l_safe)
    exact = lam / (2 * lam - 1) - 1 / l_safe
    return torch.where(small, 0.5 + logits / 12, exact)
