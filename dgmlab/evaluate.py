"""Evaluation: the ELBO over a dataset and two Monte Carlo estimates of log p(x).

- Naive Monte Carlo (sample the prior):  log p(x) ~ log (1/S) sum_s p(x | z_s),  z_s ~ p(z).
  Unbiased for p(x) but very inefficient: almost every z from the prior explains x badly, and the fraction that
  does shrinks exponentially with the latent dimension.
- Importance sampling (the IWAE bound, Burda et al. 2016):
  log p(x) >= L_k = E[ log (1/k) sum_i p(x | z_i) p(z_i) / q(z_i | x) ],  z_i ~ q(z | x).
  L_1 is the ELBO, L_k increases with k and tends to log p(x) as k -> infinity.

Both estimates are batched over samples in chunks, so k = 5000 fits in a laptop's memory. They work for any
latent variable model with a standard normal prior that has ``encode(x) -> (mu, logvar)`` (for IWAE),
``decode(z)``, ``log_px(x, decoder_output)`` and ``config.z_dim``, such as :class:`dgmlab.models.vae.VAE`.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from dgmlab.distributions import log_normal_diag, log_standard_normal
from dgmlab.step import held_out_means
from dgmlab.utils import eval_mode, module_device

CHUNK_FLOATS = 1 << 23  # ~32 MB of float32 decoder outputs per chunk


def _chunks(total: int, batch: int, dim: int) -> list[int]:
    size = max(1, CHUNK_FLOATS // max(1, batch * dim))
    return [min(size, total - start) for start in range(0, total, size)]


@torch.no_grad()
def evaluate_elbo(model, data, batch_size: int = 500, seed: int = 1234) -> dict:
    """Mean one-sample ELBO, reconstruction and KL terms over ``data`` (in nats per example).

    Noise and dynamic binarisation use ``seed``, so the same model gives the same numbers every time.
    """
    device = module_device(model)
    g = torch.Generator(device=device).manual_seed(seed)

    def terms(x):
        t = model.loss(x.to(device), generator=g)
        return {"elbo": t.elbo.mean(), "recon": t.recon.mean(), "kl": t.kl.mean()}

    with eval_mode(model):  # batches made on the CPU: a dynamic binarisation draws the same digits on any device
        return held_out_means(data, terms, batch_size, "cpu", seed)


def _log_px_given_z(model, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p(x | z) for z of shape ``[S, B, Z]`` and x ``[B, D]``; returns ``[S, B]``."""
    S, B, _ = z.shape
    x_logits = model.decode(z.reshape(S * B, -1)).reshape(S, B, -1)  # [S, B, D]
    return model.log_px(x.expand(S, B, -1), x_logits)


@torch.no_grad()
def iwae_log_likelihood(
    model, x: torch.Tensor, k: int = 5000, batch_size: int = 100, generator=None, progress: bool = False
) -> torch.Tensor:
    """Importance-sampled estimate of log p(x) with k samples from q(z | x) (the IWAE bound L_k).

    log p(x) ~ logsumexp_i [log p(x | z_i) + log p(z_i) - log q(z_i | x)] - log k,  z_i ~ q(z | x).

    Args:
        model: a VAE (anything with ``encode``, ``decode`` and ``log_px``, see the module docstring).
        x: ``[N, D]`` data.
        k: importance samples per example (k = 1 gives a one-sample ELBO).
        batch_size: examples processed together; samples are processed in chunks that fit in memory.
        generator: optional ``torch.Generator`` on the model's device.
        progress: show a progress bar over batches.

    Returns:
        ``[N]`` estimates in nats. Reference: Burda, Grosse & Salakhutdinov (2016), eq. 8.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    with eval_mode(model):
        return _iwae(model, x, k, batch_size, generator, progress)


def _iwae(model, x, k, batch_size, generator, progress) -> torch.Tensor:
    device = module_device(model)
    out = []
    for xb in tqdm(torch.split(x, batch_size), disable=not progress, desc=f"IWAE k={k}"):
        xb = xb.to(device)
        mu, logvar = model.encode(xb)  # [B, Z]
        acc = torch.full((xb.shape[0],), -math.inf, device=device)
        for c in _chunks(k, xb.shape[0], xb.shape[1]):
            eps = torch.randn((c, *mu.shape), generator=generator, device=device, dtype=mu.dtype)
            z = mu + torch.exp(0.5 * logvar) * eps  # [c, B, Z]
            log_w = _log_px_given_z(model, xb, z) + log_standard_normal(z) - log_normal_diag(z, mu, logvar)
            acc = torch.logaddexp(acc, torch.logsumexp(log_w, dim=0))
        out.append(acc - math.log(k))
    return torch.cat(out).cpu()


@torch.no_grad()
def naive_mc_log_likelihood(
    model, x: torch.Tensor, S: int = 1000, batch_size: int = 100, generator=None, progress: bool = False
) -> torch.Tensor:
    """Naive Monte Carlo estimate log (1/S) sum_s p(x | z_s) with z_s ~ p(z) = N(0, I) (no encoder).

    Returns:
        ``[N]`` estimates in nats; for the same S they are far below the IWAE estimate when the latent space has
        more than a few dimensions (see the book's chapter on the Monte Carlo estimate).
    """
    if S < 1:
        raise ValueError(f"S must be at least 1, got {S}")
    with eval_mode(model):
        return _naive_mc(model, x, S, batch_size, generator, progress)


def _naive_mc(model, x, S, batch_size, generator, progress) -> torch.Tensor:
    device = module_device(model)
    z_dim = model.config.z_dim
    out = []
    for xb in tqdm(torch.split(x, batch_size), disable=not progress, desc=f"naive MC S={S}"):
        xb = xb.to(device)
        acc = torch.full((xb.shape[0],), -math.inf, device=device)
        for c in _chunks(S, xb.shape[0], xb.shape[1]):
            z = torch.randn((c, xb.shape[0], z_dim), generator=generator, device=device, dtype=xb.dtype)
            acc = torch.logaddexp(acc, torch.logsumexp(_log_px_given_z(model, xb, z), dim=0))
        out.append(acc - math.log(S))
    return torch.cat(out).cpu()
