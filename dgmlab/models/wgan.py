"""The Wasserstein GAN with gradient penalty (WGAN-GP, Gulrajani et al. 2017).

The critic ``f`` is a real-valued function of an image (no sigmoid): the Kantorovich-Rubinstein duality writes the
Wasserstein-1 distance as ``W(p_data, p_g) = sup over 1-Lipschitz f of E_data[f(x)] - E_z[f(G(z))]`` (Arjovsky et
al. 2017). WGAN-GP keeps ``f`` near 1-Lipschitz softly: the optimal critic has gradient norm 1 almost everywhere on
the segments between data and generated points, so the critic pays ``lambda E[(||grad f(x_hat)||_2 - 1)^2]`` at
random points ``x_hat`` of those segments.

Read top to bottom: the training config, the interpolates ``x_hat``, the critic's gradient norm there, the losses as
small pure functions, one critic step, and :class:`WGANGPStep`, which does a critic step on every batch and a
generator step on every ``n_critic``-th, for :func:`dgmlab.train.fit`. The networks are those of the other GANs:
the critic is a :class:`~dgmlab.models.gan.Discriminator` with ``dropout=0`` or a
:class:`~dgmlab.models.dcgan.DCDiscriminator` with ``d_batch_norm=False`` (its logit is ``f(x)``); the generator step
is :func:`dgmlab.models.gan.generator_step` with the loss :func:`wgan_generator_loss`.

Cost: the critic step differentiates twice (the penalty's gradient of a gradient), and the generator steps on one
batch in ``n_critic``; on a CPU an epoch costs about as much as a GAN epoch with the same networks (GANStep).
At equal epochs, the generator therefore takes ``n_critic`` times fewer steps than in a GAN.

Notation (as in the book): ``f(x)`` the critic, ``x_hat = eps x + (1 - eps) G(z)`` with ``eps ~ U[0, 1]`` per
example, ``lambda`` (``lambda_gp``) the penalty's weight, ``n_critic`` critic steps per generator step.

References:
    Gulrajani et al., "Improved Training of Wasserstein GANs", NeurIPS 2017, https://arxiv.org/abs/1704.00028
    Arjovsky, Chintala and Bottou, "Wasserstein Generative Adversarial Networks", ICML 2017,
    https://arxiv.org/abs/1701.07875
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dgmlab.models.gan import generator_step, uses_batch_norm
from dgmlab.step import TrainConfig, adam, compiled, held_out_means
from dgmlab.utils import eval_mode, get_device, randn

__all__ = [
    "WGANTrainConfig",
    "interpolates",
    "gradient_norm",
    "gradient_penalty",
    "wasserstein_estimate",
    "critic_loss",
    "wgan_generator_loss",
    "critic_step",
    "WGANGPStep",
]


@dataclass
class WGANTrainConfig(TrainConfig):
    """:class:`~dgmlab.step.TrainConfig` with WGAN-GP's defaults (Gulrajani et al. 2017, algorithm 1).

    Args:
        epochs, batch_size, seed, device, compile: as in :class:`~dgmlab.step.TrainConfig` (``compile`` compiles
            the generator only: the penalty differentiates the critic twice, which ``torch.compile`` does not).
        lr: Adam learning rate of both players (1e-4).
        betas: Adam's decay rates (0.5, 0.9); the paper uses (0, 0.9) on most of its experiments.
        lambda_gp: the penalty's weight ``lambda`` (10).
        n_critic: critic steps per generator step (5).
    """

    epochs: int = 30
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.9)
    lambda_gp: float = 10.0
    n_critic: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.lambda_gp >= 0:
            raise ValueError(f"lambda_gp (the penalty's weight) must be >= 0, got {self.lambda_gp}")
        if int(self.n_critic) != self.n_critic or self.n_critic < 1:
            raise ValueError(
                f"n_critic (critic steps per generator step) must be a whole number >= 1, got {self.n_critic}"
            )
        self.n_critic = int(self.n_critic)


# --- Where the penalty is taken: random points between data and samples -------------------------------------------


def interpolates(x: torch.Tensor, x_fake: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x_hat = eps x + (1 - eps) x_fake`` with one ``eps ~ U[0, 1]`` per example (Gulrajani et al. 2017, alg. 1).

    Args:
        x: data [B, ...].
        x_fake: generated images of the same shape (detached here: the penalty trains the critic only).
        generator: a CPU ``torch.Generator`` for ``eps`` (drawn on the CPU and moved, like all dgmlab noise).

    Returns:
        ``x_hat`` [B, ...], detached.
    """
    if x.shape != x_fake.shape:
        raise ValueError(
            f"x and x_fake must have the same shape to interpolate, got {tuple(x.shape)} and {tuple(x_fake.shape)}"
        )
    eps = torch.rand(len(x), *([1] * (x.dim() - 1)), generator=generator).to(x.device)  # [B, 1, ...]
    return (eps * x + (1 - eps) * x_fake).detach()


def gradient_norm(f: nn.Module, x_hat: torch.Tensor, create_graph: bool = True) -> torch.Tensor:
    """``||grad_x f(x)||_2`` at each point of ``x_hat`` [B, ...] -> [B].

    One backward pass of ``sum_i f(x_hat_i)`` gives every example's gradient at once, because each output depends on
    its own input only: the critic must not use batch norm (:class:`WGANGPStep` checks that).

    Args:
        f: the critic, [B, ...] -> [B].
        x_hat: where to take the gradients.
        create_graph: keep the graph of the gradient, so that a loss of the norms can be differentiated with respect
            to ``f``'s parameters (needed for training; ``False`` for measuring).
    """
    x_hat = x_hat.detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(f(x_hat).sum(), x_hat, create_graph=create_graph)
    return grad.flatten(1).norm(2, dim=1)  # [B, ...] -> [B, D] -> [B]


def gradient_penalty(grad_norm: torch.Tensor) -> torch.Tensor:
    """``E[(||grad f(x_hat)||_2 - 1)^2]`` from the norms of :func:`gradient_norm` [B] -> scalar (without ``lambda``).

    Two-sided: it pulls norms below 1 up as well, which the paper found to work slightly better than penalising
    only norms above 1."""
    return ((grad_norm - 1) ** 2).mean()


def wasserstein_estimate(f_real: torch.Tensor, f_fake: torch.Tensor) -> torch.Tensor:
    """``E_data[f(x)] - E_z[f(G(z))]``: the dual objective, an estimate of ``W(p_data, p_g)`` when ``f`` is close to
    the best 1-Lipschitz critic. ``f_real`` [B], ``f_fake`` [B'] -> scalar."""
    return f_real.mean() - f_fake.mean()


def critic_loss(f_real: torch.Tensor, f_fake: torch.Tensor, gp: torch.Tensor, lambda_gp: float = 10.0) -> torch.Tensor:
    """The critic's loss ``L_f = E_z[f(G(z))] - E_data[f(x)] + lambda E[(||grad f(x_hat)||_2 - 1)^2]``
    (Gulrajani et al. 2017, eq. 3): minus the Wasserstein estimate, plus the weighted penalty ``gp``.

    Args:
        f_real: the critic on data [B].
        f_fake: the critic on generated images [B'].
        gp: :func:`gradient_penalty` (a scalar with its graph).
        lambda_gp: the penalty's weight ``lambda``.
    """
    return -wasserstein_estimate(f_real, f_fake) + lambda_gp * gp


def wgan_generator_loss(f_fake: torch.Tensor) -> torch.Tensor:
    """The generator's loss ``L_G = -E_z[f(G(z))]`` (the part of the Wasserstein estimate that depends on ``G``):
    ``f_fake`` [B] -> scalar. Unlike the GAN's losses it never saturates: ``f`` is unbounded."""
    return -f_fake.mean()


# --- One critic step -------------------------------------------------------------------------------------------


def critic_step(
    f: nn.Module,
    opt_f: torch.optim.Optimizer,
    x: torch.Tensor,
    x_fake: torch.Tensor,
    lambda_gp: float = 10.0,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """One gradient step on the critic with the generator fixed: minimise :func:`critic_loss`.

    Args:
        f: the critic.
        opt_f: optimizer over ``f``'s parameters only.
        x: a batch of data [B, x_dim].
        x_fake: generated images [B, x_dim] (as many as ``x``); detached here, so no gradient reaches ``G``.
        lambda_gp: the penalty's weight.
        generator: CPU generator for the interpolation weights ``eps``.

    Returns:
        Detached 0-d tensors, measured before the step: ``critic_loss``, ``wasserstein`` (E f(x) - E f(G(z))),
        ``gp`` (the penalty without ``lambda``), ``grad_norm`` (mean ``||grad f(x_hat)||``), ``g_loss``
        (``-E f(G(z))``, the generator's loss as this critic sees it).
    """
    x_fake = x_fake.detach()
    x_hat = interpolates(x, x_fake, generator)
    out = f(torch.cat([x, x_fake]))  # one pass over real and fake: [2B]
    f_real, f_fake = out[: len(x)], out[len(x) :]
    norms = gradient_norm(f, x_hat, create_graph=True)  # [B], differentiable with respect to f's parameters
    gp = gradient_penalty(norms)
    loss = critic_loss(f_real, f_fake, gp, lambda_gp)
    opt_f.zero_grad(set_to_none=True)
    loss.backward()
    opt_f.step()
    return {
        "critic_loss": loss.detach(),
        "wasserstein": wasserstein_estimate(f_real, f_fake).detach(),
        "gp": gp.detach(),
        "grad_norm": norms.detach().mean(),
        "g_loss": wgan_generator_loss(f_fake).detach(),
    }


# --- Training: a critic step on every batch, a generator step on every n_critic-th ------------------------------


def _check_critic(f: nn.Module) -> None:
    """A clear error for critics the penalty cannot work with."""
    if uses_batch_norm(f):
        raise ValueError(
            f"the WGAN-GP critic must not use batch norm (the penalty is taken per example, and batch norm makes "
            f"each output depend on the whole batch), but this {type(f).__name__} has some; build it with "
            f"DCGANConfig(d_batch_norm=False) for a DCDiscriminator"
        )
    if any(isinstance(m, nn.Dropout) and m.p > 0 for m in f.modules()):
        raise ValueError(
            f"the WGAN-GP critic must be deterministic, but this {type(f).__name__} uses dropout; build it with "
            f"GANConfig(dropout=0.0) for a Discriminator"
        )


class WGANGPStep:
    """One batch of WGAN-GP training (Gulrajani et al. 2017, algorithm 1): a critic step on every batch, and after
    every ``n_critic``-th critic step a generator step on ``L_G = -E f(G(z))``.

    The modules are ``{"G": G, "f": f}``; ``G`` is any dgmlab generator (``Generator``, ``DCGenerator``), ``f`` a
    ``Discriminator(GANConfig(dropout=0.0))`` or ``DCDiscriminator(DCGANConfig(d_batch_norm=False))``. The noise
    (``z`` and the interpolation weights) comes from a CPU generator seeded from ``config.seed``. Returns per batch
    the terms of :func:`critic_step`: ``critic_loss``, ``wasserstein``, ``gp``, ``grad_norm``, ``g_loss`` (all
    measured by the critic before its step). ``generator_steps`` counts the generator's updates so far.
    """

    def __init__(self, G: nn.Module, f: nn.Module, config: WGANTrainConfig | None = None):
        config = config or WGANTrainConfig()
        _check_critic(f)
        self.config, self.device = config, get_device(config.device)
        self.G, self.f = G.to(self.device), f.to(self.device)
        self.modules = {"G": self.G, "f": self.f}
        self.opt_G, self.opt_f = adam(self.G.parameters(), config), adam(self.f.parameters(), config)
        self.lambda_gp, self.n_critic = config.lambda_gp, config.n_critic
        self.noise = torch.Generator().manual_seed(config.seed)
        self._G = compiled(self.G, config)  # the critic is not compiled: the penalty needs its second derivative
        self.critic_steps = self.generator_steps = 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        update_G = (self.critic_steps + 1) % self.n_critic == 0  # after critic steps n_critic, 2 n_critic, ...
        # at least 2 noise vectors: batch norm in G cannot normalise a batch of one (a last batch of 1 image)
        z = randn(max(len(x), 2), self.G.config.z_dim, generator=self.noise, device=self.device)  # [B, z_dim]
        with torch.set_grad_enabled(update_G):  # G's graph only where the generator will step
            x_fake = self._G(z)  # [B, x_dim]
        terms = critic_step(self.f, self.opt_f, x, x_fake[: len(x)], self.lambda_gp, self.noise)
        self.critic_steps += 1
        if update_G:
            generator_step(self.f, self.opt_G, x_fake, wgan_generator_loss)
            self.generator_steps += 1
        return terms

    def evaluate(self, split, seed: int = 1234, batch_size: int = 500) -> dict[str, float]:
        """The critic's terms on ``split``'s images and as many fresh samples of ``G``, in eval mode (batch norm in
        ``G`` on its running statistics, not updated): ``critic_loss``, ``wasserstein``, ``gp``, ``grad_norm``,
        ``g_loss``, means over the examples."""
        g = torch.Generator().manual_seed(seed)

        def terms(x):
            x_fake = self.G(randn(len(x), self.G.config.z_dim, generator=g, device=self.device))
            f_real, f_fake = self.f(x), self.f(x_fake)
            norms = gradient_norm(self.f, interpolates(x, x_fake, g), create_graph=False)
            gp = gradient_penalty(norms)
            return {
                "critic_loss": critic_loss(f_real, f_fake, gp, self.lambda_gp),
                "wasserstein": wasserstein_estimate(f_real, f_fake),
                "gp": gp,
                "grad_norm": norms.mean(),
                "g_loss": wgan_generator_loss(f_fake),
            }

        with eval_mode(self.G, self.f):
            return held_out_means(split, terms, batch_size, self.device, seed)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.G.sample(n, generator)
