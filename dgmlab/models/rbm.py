"""A restricted Boltzmann machine with binary visible and hidden units (Smolensky 1986; Hinton 2002).

Read top to bottom: the config; small pure functions for the energy, the free energy and the two conditionals; the
exact partition function by enumeration (tiny models only); Gibbs sampling; :class:`RBM`, the module holding the
parameters; annealed importance sampling for the partition function of large models (Salakhutdinov & Murray 2008);
and :class:`RBMStep`, which trains an RBM with contrastive divergence (CD-k) or persistent CD for
:func:`dgmlab.train.fit`.

Notation (as in the book): ``v`` in {0, 1}^V are the visible units (the pixels, V = ``n_visible``), ``h`` in
{0, 1}^H the hidden units (H = ``n_hidden``), ``W`` [V, H] the weights, ``b`` [V] and ``c`` [H] the biases.

- energy            E(v, h) = -b.v - c.h - v^T W h,             p(v, h) = exp(-E(v, h)) / Z
- free energy       F(v) = -log sum_h exp(-E(v, h)) = -b.v - sum_j softplus(c_j + (v^T W)_j),   p(v) = exp(-F(v)) / Z
- conditionals      p(h_j = 1 | v) = sigmoid(c_j + (v^T W)_j),    p(v_i = 1 | h) = sigmoid(b_i + (W h)_i)
- log-likelihood    log p(v) = -F(v) - log Z;   its gradient: -dF(v)/dtheta + E_{p(v')}[dF(v')/dtheta]

References:
    Hinton, "Training products of experts by minimizing contrastive divergence", Neural Computation 14, 2002.
    Tieleman, "Training restricted Boltzmann machines using approximations to the likelihood gradient", ICML 2008.
    Salakhutdinov & Murray, "On the quantitative analysis of deep belief networks", ICML 2008.
    Neal, "Annealed importance sampling", Statistics and Computing 11, 2001.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from dgmlab.distributions import log_mean_exp
from dgmlab.step import TrainConfig, adam, batch_mean, held_out_means
from dgmlab.utils import check_cpu_generator, eval_mode, get_device, module_device

__all__ = [
    "RBMConfig",
    "RBM",
    "energy",
    "free_energy",
    "free_energy_hidden",
    "hidden_probs",
    "visible_probs",
    "bernoulli",
    "gibbs_step",
    "log_partition_exact",
    "all_binary",
    "ais_betas",
    "AISResult",
    "ais_log_partition",
    "base_rate_bias",
    "RBMTrainConfig",
    "cd_loss",
    "RBMStep",
]

MAX_ENUMERATED_UNITS = 24  # 2^24 states of the smaller layer: the most log_partition_exact will enumerate


@dataclass
class RBMConfig:
    """Sizes of a Bernoulli-Bernoulli RBM and the scale of its initial weights.

    Args:
        n_visible: number of visible units V (784 for MNIST).
        n_hidden: number of hidden units H.
        init_std: standard deviation of the initial weights W ~ N(0, init_std^2) (0.01, as Hinton's practical
            guide recommends); the biases start at zero.
    """

    n_visible: int = 784
    n_hidden: int = 500
    init_std: float = 0.01

    def __post_init__(self) -> None:
        if self.n_visible <= 0 or self.n_hidden <= 0 or self.init_std < 0:
            raise ValueError(f"RBMConfig needs positive sizes and init_std >= 0, got {self}")


# --- The model's functions, of the parameters (W, b, c) -----------------------------------------------------------


def energy(v: torch.Tensor, h: torch.Tensor, W: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """E(v, h) = -b.v - c.h - v^T W h for batches ``v`` [B, V] and ``h`` [B, H]; returns [B]."""
    return -(v @ b) - (h @ c) - ((v @ W) * h).sum(-1)


def free_energy(v: torch.Tensor, W: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """F(v) = -log sum_h exp(-E(v, h)) = -b.v - sum_j softplus(c_j + (v^T W)_j); ``v`` [B, V] -> [B].

    The sum over the 2^H hidden states factorises because E is linear in each h_j: sum_{h_j in {0,1}}
    exp(h_j a_j) = 1 + exp(a_j), with a_j = c_j + (v^T W)_j.
    """
    return -(v @ b) - F.softplus(v @ W + c).sum(-1)


def free_energy_hidden(h: torch.Tensor, W: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The free energy of the hidden units, -log sum_v exp(-E(v, h)) = -c.h - sum_i softplus(b_i + (W h)_i);
    ``h`` [B, H] -> [B]. (The same factorisation, over the visible units.)"""
    return -(h @ c) - F.softplus(h @ W.T + b).sum(-1)


def hidden_probs(v: torch.Tensor, W: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """p(h_j = 1 | v) = sigmoid(c_j + (v^T W)_j): ``v`` [B, V] -> [B, H]; the h_j are independent given v."""
    return torch.sigmoid(v @ W + c)


def visible_probs(h: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """p(v_i = 1 | h) = sigmoid(b_i + (W h)_i): ``h`` [B, H] -> [B, V]; the v_i are independent given h."""
    return torch.sigmoid(h @ W.T + b)


def bernoulli(p: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Binary samples with probabilities ``p`` (any shape), drawn by dgmlab's sampling rule: uniform noise from the
    CPU ``generator`` (a seed gives the same draws on any device), moved to ``p``'s device, compared with ``p``.

    Raises:
        ValueError: when ``generator`` lives on another device than the CPU.
    """
    check_cpu_generator(generator)
    u = torch.rand(p.shape, generator=generator).to(device=p.device, dtype=p.dtype)
    return (u < p).to(p.dtype)


def gibbs_step(
    v: torch.Tensor, W: torch.Tensor, b: torch.Tensor, c: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of block Gibbs sampling: h ~ p(h | v), then v' ~ p(v | h).

    Returns:
        ``(v_new, h, pv)``: the new visible state [B, V], the hidden sample [B, H], and p(v' = 1 | h) [B, V] (the
        mean of the new state, which is what one shows as an image).
    """
    h = bernoulli(hidden_probs(v, W, c), generator)
    pv = visible_probs(h, W, b)
    return bernoulli(pv, generator), h, pv


def all_binary(n: int, dtype=torch.float32, device="cpu", start: int = 0, stop: int | None = None) -> torch.Tensor:
    """The binary vectors of length n numbered ``start`` to ``stop - 1`` (default: all 2^n), [stop - start, n], in
    counting order (row k is the number k written in binary, most significant bit first)."""
    if n > MAX_ENUMERATED_UNITS:
        raise ValueError(f"enumerating 2^{n} states is too many (at most 2^{MAX_ENUMERATED_UNITS})")
    k = torch.arange(start, 2**n if stop is None else stop, device=device)
    bits = 2 ** torch.arange(n - 1, -1, -1, device=device)
    return ((k[:, None] & bits) > 0).to(dtype)


def log_partition_exact(
    W: torch.Tensor, b: torch.Tensor, c: torch.Tensor, chunk: int = 1 << 14, progress: bool = False
) -> torch.Tensor:
    """log Z = log sum_{v, h} exp(-E(v, h)), exactly, by enumerating the smaller layer.

    With H <= V: log Z = logsumexp over all h of -F_h(h) (:func:`free_energy_hidden`), 2^H terms; otherwise
    logsumexp over all v of -F(v). Only for models whose smaller layer has at most 24 units (2^24 states, chunked).

    Returns:
        A 0-d tensor (in W's dtype; use float64 for tiny models you compare with brute force).
    """
    V, H = W.shape
    n = min(V, H)
    if n > MAX_ENUMERATED_UNITS:
        raise ValueError(
            f"the smaller layer has {n} units, so the exact partition function needs 2^{n} terms; "
            f"use ais_log_partition for models with more than {MAX_ENUMERATED_UNITS} units in both layers"
        )
    fe = (lambda h: free_energy_hidden(h, W, b, c)) if H <= V else (lambda v: free_energy(v, W, b, c))
    total = torch.tensor(-math.inf, dtype=W.dtype, device=W.device)
    starts = range(0, 2**n, chunk)
    for start in tqdm(starts, disable=not progress, desc=f"enumerate 2^{n} states"):
        states = all_binary(n, W.dtype, W.device, start, min(start + chunk, 2**n))  # [chunk, n]
        total = torch.logaddexp(total, torch.logsumexp(-fe(states), 0))
    return total


# --- The module ---------------------------------------------------------------------------------------------------


class RBM(nn.Module):
    """A Bernoulli-Bernoulli RBM: parameters ``W`` [V, H], ``b`` [V] (visible biases), ``c`` [H] (hidden biases).

    The methods apply the pure functions above to the module's parameters. Example:

        >>> rbm = RBM(RBMConfig(n_visible=12, n_hidden=6))
        >>> rbm.free_energy(torch.ones(3, 12)).shape
        torch.Size([3])
    """

    config_class = RBMConfig

    def __init__(self, config: RBMConfig | None = None):
        super().__init__()
        self.config = config or RBMConfig()
        c = self.config
        self.W = nn.Parameter(torch.randn(c.n_visible, c.n_hidden) * c.init_std)
        self.b = nn.Parameter(torch.zeros(c.n_visible))
        self.c = nn.Parameter(torch.zeros(c.n_hidden))

    def energy(self, v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return energy(v, h, self.W, self.b, self.c)

    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        return free_energy(v, self.W, self.b, self.c)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """The free energy F(v), [B, V] -> [B] (lower means more probable)."""
        return self.free_energy(v)

    def hidden_probs(self, v: torch.Tensor) -> torch.Tensor:
        return hidden_probs(v, self.W, self.c)

    def visible_probs(self, h: torch.Tensor) -> torch.Tensor:
        return visible_probs(h, self.W, self.b)

    def gibbs_step(self, v: torch.Tensor, generator: torch.Generator | None = None):
        """:func:`gibbs_step` with this model's parameters: ``(v_new, h, pv)``."""
        return gibbs_step(v, self.W, self.b, self.c, generator)

    @torch.no_grad()
    def gibbs_chain(self, v: torch.Tensor, steps: int, generator: torch.Generator | None = None, keep=()) -> dict:
        """Run ``steps`` Gibbs steps from ``v`` [B, V] (moved to the model's device).

        Args:
            keep: step numbers at which to record p(v = 1 | h), the mean of the state (0 records ``v`` itself).

        Returns:
            ``{"v": last state, "pv": its mean, "kept": {step: mean}}``, all on the model's device.
        """
        v = v.to(module_device(self))
        pv, kept = v, {}
        if 0 in keep:
            kept[0] = v.clone()
        for t in range(1, steps + 1):
            v, _, pv = self.gibbs_step(v, generator)
            if t in keep:
                kept[t] = pv.clone()
        return {"v": v, "pv": pv, "kept": kept}

    def sample(self, n: int, generator: torch.Generator | None = None, steps: int = 1000) -> torch.Tensor:
        """``n`` images from ``steps`` steps of Gibbs sampling: [n, V] in [0, 1] on the model's device.

        Each chain starts from uniform random binary pixels; the image returned is p(v = 1 | h) after the last
        step (the mean of the final state, rather than its binary sample: less salt-and-pepper noise). The noise
        comes from the CPU ``generator`` (dgmlab's sampling rule), the model runs in eval mode without gradients,
        and its train/eval mode is restored. The chains are samples of the model only approximately: Gibbs
        sampling mixes slowly between the modes of a trained RBM.
        """
        with eval_mode(self):
            v0 = bernoulli(torch.full((n, self.config.n_visible), 0.5), generator).to(module_device(self))
            return self.gibbs_chain(v0, steps, generator)["pv"]

    @torch.no_grad()
    def log_partition_exact(self, progress: bool = False) -> torch.Tensor:
        """Exact log Z by enumeration (:func:`log_partition_exact`; tiny models, or MNIST with H <= 24)."""
        return log_partition_exact(self.W, self.b, self.c, progress=progress)

    @torch.no_grad()
    def log_likelihood(self, v: torch.Tensor, log_z: torch.Tensor | float) -> torch.Tensor:
        """log p(v) = -F(v) - log Z for binary ``v`` [B, V] given log Z (exact, or an AIS estimate); returns [B]."""
        return -self.free_energy(v.to(module_device(self))) - log_z

    @torch.no_grad()
    def reconstruct(self, v: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One Gibbs step from the data: p(v' = 1 | h) with h ~ p(h | v). [B, V] -> [B, V] (eval mode, restored)."""
        with eval_mode(self):
            return self.gibbs_step(v.to(module_device(self)), generator)[2]


# --- Annealed importance sampling ---------------------------------------------------------------------------------


def base_rate_bias(v: torch.Tensor, smoothing: float = 5.0) -> torch.Tensor:
    """Visible biases of the base-rate model: the log-odds of each pixel's mean on the data ``v`` [N, V].

    ``smoothing`` adds that many pseudo-counts of 0.5 per pixel, so that pixels that are never on get a large
    negative bias instead of -inf (Salakhutdinov & Murray 2008 use this model as AIS's starting point).
    """
    p = (v.sum(0) + 0.5 * smoothing) / (len(v) + smoothing)
    return torch.log(p) - torch.log1p(-p)


def ais_betas(n_betas: int, dtype=torch.float64) -> torch.Tensor:
    """Inverse temperatures 0 = beta_0 < ... < beta_K = 1 (K = ``n_betas``), denser near 1.

    The spacing follows Salakhutdinov & Murray (2008): 1/29 of the steps cover [0, 0.5], 8/29 cover [0.5, 0.9]
    and 20/29 cover [0.9, 1] (their 500, 4,000 and 10,000 steps out of 14,500).
    """
    if n_betas < 3:
        raise ValueError(f"AIS needs at least 3 intermediate distributions, got n_betas={n_betas}")
    k1 = max(1, round(n_betas / 29))
    k2 = max(1, round(8 * n_betas / 29))
    k3 = n_betas - k1 - k2
    return torch.cat(
        [
            torch.linspace(0, 0.5, k1 + 1, dtype=dtype)[:-1],
            torch.linspace(0.5, 0.9, k2 + 1, dtype=dtype)[:-1],
            torch.linspace(0.9, 1.0, k3 + 1, dtype=dtype),
        ]
    )


class AISResult(NamedTuple):
    """What :func:`ais_log_partition` returns.

    Attributes:
        log_z: the estimate log Z_0 + log (1/M) sum_m w_m (a 0-d tensor).
        log_z_se: its standard error, std(w) / (sqrt(M) mean(w)) (the delta method).
        log_w: the M log importance weights [M].
        log_z_base: log Z_0 of the base-rate model.
        n_betas: K, the number of annealing steps; ``n_runs`` = M.
    """

    log_z: torch.Tensor
    log_z_se: float
    log_w: torch.Tensor
    log_z_base: float
    n_betas: int
    n_runs: int


def _log_p_star(v, a, beta, b_base, b):
    """log p*_beta(v) = (1 - beta) b_A.v + beta b.v + sum_j softplus(beta a_j), with a = c + v^T W (see below)."""
    return (1 - beta) * (v @ b_base) + beta * (v @ b) + F.softplus(beta * a).sum(-1)


@torch.no_grad()
def ais_log_partition(
    W: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    n_betas: int = 10_000,
    n_runs: int = 100,
    base_bias: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> AISResult:
    """Annealed importance sampling estimate of log Z for an RBM (Neal 2001; Salakhutdinov & Murray 2008).

    The path of distributions p_k(v) ~ p*_k(v) = exp((1 - beta_k) b_A.v) * [exp(beta_k b.v) prod_j (1 +
    exp(beta_k (c_j + (v^T W)_j)))] goes from the base-rate model (beta = 0: independent pixels with biases b_A,
    whose partition function is known, Z_0 = prod_i (1 + e^{b_A,i}) * 2^H) to the RBM (beta = 1). Each of M runs
    draws v ~ p_0, then for k = 1..K adds log p*_k(v) - log p*_{k-1}(v) to its log weight and moves v by one Gibbs
    step that leaves p_k invariant (h ~ sigmoid(beta_k (c + v^T W)), v ~ sigmoid((1 - beta_k) b_A + beta_k (b +
    W h))). Then E[w] = Z / Z_0, so log Z ~ log Z_0 + log mean(w). The estimate of Z is unbiased; the estimate of
    log Z is biased low by about (relative variance) / 2, so a log-likelihood -F(v) - log Z from it is, on
    average, slightly optimistic.

    Args:
        W, b, c: the RBM's parameters (the computation runs on their device and in their dtype).
        n_betas: K, the number of intermediate distributions (:func:`ais_betas`).
        n_runs: M, the number of independent runs (run in parallel, as a batch).
        base_bias: b_A [V], e.g. :func:`base_rate_bias` of the training data; default zeros (uniform pixels).
        generator: CPU generator for all the noise.
        progress: show a progress bar over the K steps.

    Returns:
        An :class:`AISResult`.
    """
    V, H = W.shape
    b_base = torch.zeros(V, dtype=W.dtype, device=W.device) if base_bias is None else base_bias.to(W)
    betas = ais_betas(n_betas).tolist()
    log_z_base = float(F.softplus(b_base).sum() + H * math.log(2))
    v = bernoulli(torch.sigmoid(b_base).expand(n_runs, V).contiguous(), generator)  # v ~ p_0, [M, V]
    log_w = torch.zeros(n_runs, dtype=W.dtype, device=W.device)
    for k in tqdm(range(1, len(betas)), disable=not progress, desc=f"AIS K={n_betas} M={n_runs}"):
        beta, beta_prev = betas[k], betas[k - 1]
        a = v @ W + c  # [M, H], shared by both weights and the hidden draw
        log_w += _log_p_star(v, a, beta, b_base, b) - _log_p_star(v, a, beta_prev, b_base, b)
        if k < len(betas) - 1:  # the transition T_k leaves p_k invariant
            h = bernoulli(torch.sigmoid(beta * a), generator)
            v = bernoulli(torch.sigmoid((1 - beta) * b_base + beta * (h @ W.T + b)), generator)
    log_z = log_z_base + log_mean_exp(log_w, 0)
    w = torch.exp(log_w - log_w.max())  # weights up to a common factor, which cancels in std / mean
    se = float(w.std() / (math.sqrt(n_runs) * w.mean())) if n_runs > 1 else math.inf
    return AISResult(log_z, se, log_w.cpu(), log_z_base, n_betas, n_runs)


# --- Training: contrastive divergence and persistent CD -------------------------------------------------------------


@dataclass
class RBMTrainConfig(TrainConfig):
    """:class:`~dgmlab.step.TrainConfig` plus the negative phase of the RBM's gradient.

    Args:
        epochs, batch_size, lr, betas, seed, device: as in :class:`~dgmlab.step.TrainConfig` (Adam).
        k: Gibbs steps per update in the negative phase (CD-k or PCD-k).
        persistent: ``False``: contrastive divergence, chains restart at the batch's data (Hinton 2002);
            ``True``: persistent CD, ``batch_size`` chains continue from one update to the next (Tieleman 2008).
        weight_decay: L2 penalty ``weight_decay * sum W^2 / 2`` on the weights (not the biases).
    """

    epochs: int = 30
    batch_size: int = 100
    lr: float = 1e-3
    k: int = 1
    persistent: bool = False
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k < 1 or self.weight_decay < 0:
            raise ValueError(f"k >= 1 and weight_decay >= 0 are required, got k={self.k}, {self.weight_decay=}")


def cd_loss(rbm: RBM, v_data: torch.Tensor, v_model: torch.Tensor) -> torch.Tensor:
    """The surrogate whose gradient is the (C)D estimate of minus the log-likelihood gradient:
    ``mean F(v_data) - mean F(v_model)``, with ``v_model`` (the negative samples) treated as constants.

    Since -d log p(v)/dtheta = dF(v)/dtheta - E_{p(v')}[dF(v')/dtheta], replacing the model expectation by an average
    over samples v' gives this loss's gradient. Its value is the free-energy gap, not a log-likelihood.
    """
    return rbm.free_energy(v_data).mean() - rbm.free_energy(v_model.detach()).mean()


class RBMStep:
    """One update of an RBM by CD-k (chains start at the batch) or PCD-k (persistent chains), with Adam.

    Per batch: ``k`` Gibbs steps give the negative samples; one Adam step on :func:`cd_loss` (plus the weight
    decay). Returns ``fe_gap`` (mean F(data) - mean F(negative samples)), ``free_energy`` (mean F of the batch)
    and ``recon_error`` (squared error per image between the batch and its one-step reconstruction p(v | h),
    h ~ p(h | v)). ``evaluate(split)`` gives ``free_energy`` and ``recon_error`` on held-out data. The Gibbs noise
    comes from a CPU generator seeded from ``config.seed``.
    """

    def __init__(self, rbm: RBM, config: RBMTrainConfig | None = None):
        config = config or RBMTrainConfig()
        if not isinstance(config, RBMTrainConfig):
            raise TypeError(f"RBMStep needs an RBMTrainConfig (k, persistent), got {type(config).__name__}")
        self.config, self.device = config, get_device(config.device)
        self.model = rbm.to(self.device)
        self.modules = {"model": self.model}
        self.optimizer = adam(self.model.parameters(), config)
        self.noise = torch.Generator().manual_seed(config.seed)
        self.chains: torch.Tensor | None = None  # the persistent chains, [batch_size, V]

    def negative_samples(self, v_data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The negative phase: ``k`` Gibbs steps from the data (CD) or from the persistent chains (PCD).

        Returns ``(v_model, pv_first)``: the negative samples and, for the reconstruction error, the mean of the
        first step from the data.
        """
        rbm, k = self.model, self.config.k
        with torch.no_grad():
            v1, _, pv_first = rbm.gibbs_step(v_data, self.noise)
            if self.config.persistent:
                if self.chains is None:  # start the chains from random binary images
                    shape = (self.config.batch_size, rbm.config.n_visible)
                    self.chains = bernoulli(torch.full(shape, 0.5, dtype=v_data.dtype, device=self.device), self.noise)
                v = self.chains
                for _ in range(k):
                    v = rbm.gibbs_step(v, self.noise)[0]
                self.chains = v
            else:
                v = v1
                for _ in range(k - 1):
                    v = rbm.gibbs_step(v, self.noise)[0]
        return v, pv_first

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        v_model, pv_first = self.negative_samples(x)
        fe_data = self.model.free_energy(x)  # [B]
        gap = fe_data.mean() - self.model.free_energy(v_model).mean()  # cd_loss, keeping F(data) for the history
        loss = gap + 0.5 * self.config.weight_decay * (self.model.W**2).sum() if self.config.weight_decay else gap
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {
            "fe_gap": gap.detach(),
            "free_energy": batch_mean(fe_data),
            "recon_error": batch_mean(((x - pv_first) ** 2).sum(-1)),
        }

    def evaluate(self, split, seed: int = 1234, batch_size: int = 500) -> dict[str, float]:
        """Mean free energy and one-step reconstruction error on ``split`` (fixed binarisation and noise)."""
        g = torch.Generator().manual_seed(seed)

        def terms(x):
            pv = self.model.gibbs_step(x, g)[2]  # [B, D] one Gibbs step's visible probabilities
            return {"free_energy": self.model.free_energy(x).mean(), "recon_error": ((x - pv) ** 2).sum(1).mean()}

        with eval_mode(self.model):
            return held_out_means(split, terms, batch_size, self.device, seed)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.model.sample(n, generator)
