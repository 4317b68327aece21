"""The variational autoencoder (Kingma & Welling 2014; Rezende, Mohamed & Wierstra 2014).

Generative model:  z ~ p(z) = N(0, I),   x ~ p_theta(x | z)  with decoder parameters from an MLP ``decode(z)``.
Inference model:   q_phi(z | x) = N(mu_phi(x), diag(exp(logvar_phi(x))))  from an MLP ``encode(x)``.
Objective (per example, maximised):

    elbo(x) = E_q[log p_theta(x | z)] - KL(q_phi(z | x) || p(z))
            ~ log p_theta(x | z_1) - KL,   z_1 = mu + exp(logvar / 2) * eps,  eps ~ N(0, I)   (one sample)

The loss minimised is ``recon + beta * kl`` averaged over the batch, with ``recon = -log p_theta(x | z_1)``
(``beta = 1`` is the VAE; ``beta > 1`` is the beta-VAE of Higgins et al. 2017).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import nn

from dgmlab.distributions import (
    continuous_bernoulli_mean,
    kl_normal_std_normal,
    log_bernoulli,
    log_continuous_bernoulli,
    log_normal_diag,
)
from dgmlab.evaluate import evaluate_elbo
from dgmlab.models.mlp import mlp
from dgmlab.step import TrainConfig, adam, batch_mean, compiled
from dgmlab.utils import eval_mode, get_device, module_device, randn

LIKELIHOODS = ("bernoulli", "continuous_bernoulli", "gaussian")
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "softplus": nn.Softplus}


@dataclass
class VAEConfig:
    """Architecture of a :class:`VAE`.

    Defaults follow Kingma & Welling (2014), section 5: one hidden layer of 500 units in encoder and decoder
    (ReLU here instead of their tanh: with Adam it trains faster) and a 20-d latent space.

    Attributes:
        x_dim: data dimension (784 for 28x28 images).
        hidden_dims: hidden layer sizes of the encoder; the decoder mirrors them.
        z_dim: latent dimension D.
        likelihood: decoder distribution: ``"bernoulli"`` (binary pixels), ``"continuous_bernoulli"`` or
            ``"gaussian"`` (grey levels; mean = sigmoid of the decoder output, fixed standard deviation ``sigma``).
        sigma: standard deviation of the Gaussian decoder.
        activation: ``"relu"``, ``"tanh"`` or ``"softplus"``.
    """

    x_dim: int = 784
    hidden_dims: tuple[int, ...] = (500,)
    z_dim: int = 20
    likelihood: str = "bernoulli"
    sigma: float = 0.1
    activation: str = "relu"

    def __post_init__(self):
        self.hidden_dims = tuple(int(h) for h in self.hidden_dims)
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {self.activation!r}")
        if self.z_dim < 1 or self.x_dim < 1 or any(h < 1 for h in self.hidden_dims):
            raise ValueError(f"x_dim, z_dim and hidden sizes must be positive, got {self}")
        if self.sigma <= 0:
            raise ValueError(f"sigma must be positive, got {self.sigma}")


class ELBOTerms(NamedTuple):
    """The terms of the (negative) ELBO. ``loss`` is a scalar; the others are per example, shape ``[B]``."""

    loss: torch.Tensor
    recon: torch.Tensor  # -log p(x | z), one sample of z
    kl: torch.Tensor  # KL(q(z | x) || p(z)), closed form
    elbo: torch.Tensor  # -(recon + kl), in nats


def log_likelihood(x: torch.Tensor, x_logits: torch.Tensor, likelihood: str = "bernoulli", sigma: float = 0.1):
    """log p_theta(x | z) for the decoder output ``x_logits``, summed over pixels. Shapes ``[..., D] -> [...]``.

    bernoulli: x l - softplus(l); continuous_bernoulli: the same plus log C(lambda);
    gaussian: log N(x | sigmoid(l), sigma^2 I) = -||x - sigmoid(l)||^2 / (2 sigma^2) - D log(sigma sqrt(2 pi)).
    """
    if likelihood == "bernoulli":
        return log_bernoulli(x, x_logits)
    if likelihood == "continuous_bernoulli":
        return log_continuous_bernoulli(x, x_logits)
    if likelihood == "gaussian":
        logvar = torch.tensor(2 * math.log(sigma), dtype=x.dtype, device=x.device)
        return log_normal_diag(x, torch.sigmoid(x_logits), logvar)
    raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")


def decoder_mean(x_logits: torch.Tensor, likelihood: str = "bernoulli") -> torch.Tensor:
    """E[x | z] for the decoder output: sigmoid for Bernoulli and Gaussian, the CB mean for the continuous Bernoulli."""
    if likelihood == "continuous_bernoulli":
        return continuous_bernoulli_mean(x_logits)
    return torch.sigmoid(x_logits)


def elbo_terms(
    x: torch.Tensor,
    x_logits: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    beta: float = 1.0,
    likelihood: str = "bernoulli",
    sigma: float = 0.1,
) -> ELBOTerms:
    """The one-sample ELBO and the loss ``mean(recon + beta * kl)`` (Kingma & Welling 2014, eq. 10).

    Args:
        x: ``[B, D]`` data. x_logits: ``[B, D]`` decoder output for one z per example.
        mu, logvar: ``[B, Z]`` encoder output.
        beta: weight of the KL term (1 for the VAE).

    Returns:
        :class:`ELBOTerms` with per-example ``recon``, ``kl``, ``elbo`` (shape ``[B]``) and the scalar ``loss``.
    """
    recon = -log_likelihood(x, x_logits, likelihood, sigma)
    kl = kl_normal_std_normal(mu, logvar)
    return ELBOTerms(loss=(recon + beta * kl).mean(), recon=recon, kl=kl, elbo=-(recon + kl))


class VAE(nn.Module):
    """MLP encoder q_phi(z | x) and decoder p_theta(x | z); see the module docstring for the model.

    Example:
        >>> model = VAE(VAEConfig(z_dim=2))
        >>> x_logits, mu, logvar, z = model(torch.rand(8, 784))
        >>> x_logits.shape, mu.shape
        (torch.Size([8, 784]), torch.Size([8, 2]))
    """

    config_class = VAEConfig

    def __init__(self, config: VAEConfig | None = None, **overrides):
        super().__init__()
        config = config or VAEConfig()
        if overrides:  # VAE(VAEConfig(), z_dim=5): the keyword wins (validated like any config)
            unknown = set(overrides) - {f.name for f in dataclasses.fields(VAEConfig)}
            if unknown:
                fields = [f.name for f in dataclasses.fields(VAEConfig)]
                raise TypeError(f"VAE got unknown config fields {sorted(unknown)}; VAEConfig has {fields}")
            config = dataclasses.replace(config, **overrides)
        self.config = config
        self.encoder = mlp([config.x_dim, *config.hidden_dims], ACTIVATIONS[config.activation])
        if config.hidden_dims:  # the heads below are linear, so the last hidden layer keeps its activation
            self.encoder.append(ACTIVATIONS[config.activation]())
        h = config.hidden_dims[-1] if config.hidden_dims else config.x_dim
        self.to_mu = nn.Linear(h, config.z_dim)
        self.to_logvar = nn.Linear(h, config.z_dim)
        self.decoder = mlp([config.z_dim, *reversed(config.hidden_dims), config.x_dim], ACTIVATIONS[config.activation])

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x ``[B, x_dim]`` -> (mu, logvar), each ``[B, z_dim]``: the parameters of q_phi(z | x)."""
        h = self.encoder(x)
        return self.to_mu(h), self.to_logvar(h)

    @staticmethod
    def reparameterize(
        mu: torch.Tensor,
        logvar: torch.Tensor,
        generator: torch.Generator | None = None,
        eps: torch.Tensor | None = None,
    ):
        """z = mu + sigma * eps, eps ~ N(0, I), sigma = exp(logvar / 2): a sample of q that gradients pass through.

        ``eps`` may be given (same shape as ``mu``); otherwise it is drawn with ``generator`` on ``mu``'s device.
        """
        if eps is None:
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z ``[B, z_dim]`` -> x_logits ``[B, x_dim]``, the decoder output (logits of the pixel means)."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None, eps: torch.Tensor | None = None):
        """One pass through the VAE: returns (x_logits, mu, logvar, z)."""
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, generator, eps)
        return self.decode(z), mu, logvar, z

    def loss(
        self,
        x: torch.Tensor,
        beta: float = 1.0,
        generator: torch.Generator | None = None,
        eps: torch.Tensor | None = None,
    ) -> ELBOTerms:
        """:func:`elbo_terms` of a batch, with this model's likelihood (noise from ``generator``, or ``eps``)."""
        x_logits, mu, logvar, _ = self(x, generator, eps)
        return elbo_terms(x, x_logits, mu, logvar, beta, self.config.likelihood, self.config.sigma)

    def log_px(self, x: torch.Tensor, x_logits: torch.Tensor) -> torch.Tensor:
        """log p_theta(x | z) given the decoder output for z (see :func:`log_likelihood`). ``[..., D] -> [...]``."""
        return log_likelihood(x, x_logits, self.config.likelihood, self.config.sigma)

    def mean(self, x_logits: torch.Tensor) -> torch.Tensor:
        """E[x | z] from the decoder output (see :func:`decoder_mean`)."""
        return decoder_mean(x_logits, self.config.likelihood)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Ancestral sampling: z ~ N(0, I), then the decoder mean E[x | z]. Returns ``[n, x_dim]``.

        The sampling rule of every dgmlab model: z is drawn with the CPU ``generator`` (so a seed gives the same
        images on any device), moved to the model's device, decoded in eval mode without gradients, and the
        train/eval mode the model had is restored.
        """
        z = randn(n, self.config.z_dim, generator=generator, device=module_device(self))
        return self.decode_mean(z)

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """E[x | z] for latent codes ``z`` [B, z_dim] (moved to the model's device), in eval mode, no gradients."""
        with eval_mode(self):
            return self.mean(self.decode(z.to(module_device(self))))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder mean at the posterior mean: E[x | z = mu_phi(x)]. ``[B, x_dim] -> [B, x_dim]`` (eval mode, no
        gradients, on the model's device; the train/eval mode is restored)."""
        with eval_mode(self):
            mu, _ = self.encode(x.to(module_device(self)))
            return self.mean(self.decode(mu))

    def config_dict(self) -> dict:
        """The config as plain data (saved inside checkpoints)."""
        return asdict(self.config)


# --- Training ----------------------------------------------------------------------------------------------------


@dataclass
class VAETrainConfig(TrainConfig):
    """:class:`~dgmlab.step.TrainConfig` plus ``beta``, the weight of the KL term (1 = VAE, > 1 = beta-VAE)."""

    beta: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta < 0:
            raise ValueError(f"beta >= 0 is required, got {self.beta}")


class VAEStep:
    """One Adam step on the negative ELBO ``mean(recon + beta * kl)`` of a batch (see :func:`elbo_terms`).

    Returns the batch means of ``elbo``, ``recon`` and ``kl`` (nats per example); ``evaluate(split)`` gives the
    same terms on held-out data (one fixed noise sample, eval mode).
    """

    def __init__(self, model: VAE, config: TrainConfig | None = None):
        config = config or VAETrainConfig()
        if not isinstance(config, VAETrainConfig):  # a plain TrainConfig trains a VAE with beta = 1
            config = VAETrainConfig(**asdict(config))
        self.config, self.device = config, get_device(config.device)
        self.model = model.to(self.device)
        self.modules = {"model": self.model}
        self.optimizer = adam(self.model.parameters(), config)
        self.noise = torch.Generator(device=self.device).manual_seed(config.seed)  # the reparameterisation noise
        # the noise is drawn outside the loss, so that a compiled loss is one graph (a generator would break it)
        self.loss = compiled(self.model.loss, config)

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        eps = torch.randn((len(x), self.model.config.z_dim), generator=self.noise, device=self.device)
        terms = self.loss(x, self.config.beta, eps=eps)
        self.optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        self.optimizer.step()
        return {"elbo": batch_mean(terms.elbo), "recon": batch_mean(terms.recon), "kl": batch_mean(terms.kl)}

    def evaluate(self, split) -> dict[str, float]:
        return evaluate_elbo(self.model, split, batch_size=max(self.config.batch_size, 500))

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.model.sample(n, generator)
