"""The VAEs of part I, as zoo entries: chapter 6's models (J = 20 and J = 2) and two of chapter 7's.

Each model has one :class:`VAERecipe`: the model config, the training config, the data and the checkpoint name.
The chapters that train these models (``book/06_training_vae``, ``book/07_decoders_beta_vae``) load them through
the same recipes, so a build trains each one once, and the comparison table of "Measuring generative models"
(:func:`dgmlab.compare.comparison_table`) gets the very same weights.

Every entry samples with the model's own rule (``z ~ N(0, I)``, then the decoder mean ``E[x | z]``, grey levels in
[0, 1]) and estimates the test log-likelihood by importance sampling (the IWAE bound ``L_k`` of Burda et al.,
2016, :func:`dgmlab.evaluate.iwae_log_likelihood`). A Bernoulli decoder is a distribution over *binary* images, so
its estimate is on the test digits binarised once (seed 0, as in chapter 6); a Gaussian decoder is a density over
grey levels, so its number is a log-density of the grey test digits, on another scale: the two are not comparable
(chapter 7 explains why), and ``log_likelihood_kind`` says which is which.

In fast mode (``DGMLAB_FAST=1``) every recipe trains its short run (``fast_epochs``, and chapter 7's models on the
first 2,000 training digits) under the checkpoint name with ``-fast`` added (:func:`dgmlab.utils.checkpoint_path`),
and the log-likelihood uses fewer importance samples and test digits.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from dgmlab.checkpoint import Checkpoint, load_or_train
from dgmlab.data import Split, load_mnist
from dgmlab.evaluate import evaluate_elbo, iwae_log_likelihood
from dgmlab.models.vae import VAE, VAEConfig, VAETrainConfig
from dgmlab.train import Snapshots, train_vae
from dgmlab.utils import checkpoint_path, fast_mode, get_device, module_device
from dgmlab.zoo import Entry, binary_test_digits

__all__ = [
    "VAERecipe",
    "CH06_Z20",
    "CH06_Z2",
    "chapter7_recipe",
    "snapshot_epochs",
    "iwae_settings",
    "vae_entry",
    "ENTRIES",
]

# importance samples k per test digit and number of test digits of the entries' log-likelihood (full, fast)
IWAE_K, IWAE_K_FAST = 500, 32
IWAE_N, IWAE_N_FAST = 500, 100
IWAE_SEED = 1  # the importance samples' noise


def snapshot_epochs(epochs: int) -> list[int]:
    """Chapter 6's snapshot epochs: roughly log-spaced, since the samples change fast early on and slowly later."""
    return sorted({e for e in (0, 1, 2, 3, 5, 10, 20, 40, 70, 100) if e < epochs} | {epochs})


@dataclass(frozen=True)
class VAERecipe:
    """How one of the course's VAEs is built, trained and cached.

    Attributes:
        checkpoint: the checkpoint's name (:func:`dgmlab.utils.checkpoint_path` adds ``-fast`` in fast mode).
        model: the architecture; the weights are initialised after ``torch.manual_seed(0)`` (the caller's global
            random state is left as it was).
        epochs: training epochs; ``fast_epochs`` in fast mode.
        fast_epochs: training epochs in fast mode.
        beta: the weight of the KL term (1: VAE, above 1: beta-VAE).
        binarized: train on dynamically binarised digits (for a Bernoulli decoder) or on grey levels.
        fast_n_train: in fast mode, train on the first this many training digits only (``None``: all).
        snapshots: record chapter 6's extras while training: 100 prior samples at :func:`snapshot_epochs` (the same
            ``z`` each time) and the validation ELBO of the untrained model, saved as ``extra["snapshots"]``
            (epoch -> ``[100, 784]``) and ``extra["initial"]`` (``evaluate_elbo``'s dict).
    """

    checkpoint: str
    model: VAEConfig
    epochs: int
    fast_epochs: int
    beta: float = 1.0
    binarized: bool = True
    fast_n_train: int | None = None
    snapshots: bool = False

    def n_epochs(self) -> int:
        """The epochs of this run: ``fast_epochs`` in fast mode, else ``epochs``."""
        return self.fast_epochs if fast_mode() else self.epochs

    def train_config(self, device: str = "auto") -> VAETrainConfig:
        """The training config (Adam, lr 1e-3, batches of 128, seed 0; ``device`` is not compared on loading)."""
        return VAETrainConfig(epochs=self.n_epochs(), beta=self.beta, device=str(device))

    def data(self) -> tuple[Split, Split]:
        """``(train, val)``: dynamically binarised or grey MNIST (``source="auto"``), fast mode's subset applied."""
        binarize = "dynamic" if self.binarized else "none"
        train = load_mnist("train", binarize=binarize)
        val = load_mnist("val", binarize=binarize)
        if fast_mode() and self.fast_n_train is not None:
            train = train.subset(self.fast_n_train)
        return train, val

    def build(self) -> VAE:
        """The untrained model, initialised from seed 0 without touching the global random state."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return VAE(self.model)

    def load(self, device: str = "cpu", verbose: bool = True) -> Checkpoint:
        """The trained model: from the cache when it was trained this way, else trained now and cached.

        Training runs on ``get_device("auto")`` (a GPU when there is one); the returned model lives on ``device``
        in eval mode. Returns the :class:`~dgmlab.checkpoint.Checkpoint` (``.model``, ``.history``, ``.extra``).
        """
        train, val = self.data()
        config = self.train_config(str(get_device("auto")))
        callbacks, extra = [], None
        if self.snapshots:
            snapshots, initial = Snapshots(snapshot_epochs(config.epochs), n=100), {}

            def record_initial_elbo(epoch, step, history):
                # a plain function as a callback: called as cb(epoch, step, history), epoch 0 before any training
                if epoch == 0:
                    initial.update(evaluate_elbo(step.model, val))

            callbacks = [snapshots, record_initial_elbo]

            def extra(model):
                return {"snapshots": snapshots.images, "initial": dict(initial)}

        def train_model(model):
            return train_vae(model, train, val, config, callbacks=callbacks, progress=False)

        return load_or_train(
            checkpoint_path(self.checkpoint),
            self.build,
            train_model,
            config,
            train,
            extra=extra,
            device=str(get_device(device)),
            verbose=verbose,
        )


# --- chapter 6 ------------------------------------------------------------------------------------------------
# v2 of the J = 20 model records more snapshot epochs than v1 did
CH06_Z20 = VAERecipe("ch06-vae20-v2", VAEConfig(z_dim=20), epochs=100, fast_epochs=6, snapshots=True)
CH06_Z2 = VAERecipe("ch06-vae2", VAEConfig(z_dim=2), epochs=100, fast_epochs=6)

# --- chapter 7 ------------------------------------------------------------------------------------------------
CH07_Z_DIM, CH07_SIGMA = 10, 0.1


def chapter7_recipe(likelihood: str, beta: float = 1.0) -> VAERecipe:
    """Chapter 7's VAE with this decoder (``"bernoulli"`` on binarised digits, ``"continuous_bernoulli"`` or
    ``"gaussian"`` with sigma 0.1 on grey levels) and this KL weight: J = 10, 40 epochs (4 in fast mode, on the
    first 2,000 training digits)."""
    return VAERecipe(
        f"ch07-{likelihood}-z{CH07_Z_DIM}-beta{beta:g}",
        VAEConfig(z_dim=CH07_Z_DIM, likelihood=likelihood, sigma=CH07_SIGMA),
        epochs=40,
        fast_epochs=4,
        beta=beta,
        binarized=likelihood == "bernoulli",
        fast_n_train=2000,
    )


# --- what the entries do with a trained model -----------------------------------------------------------------


def iwae_settings() -> tuple[int, int]:
    """``(k, n)``: importance samples per test digit and test digits used by the entries (fewer in fast mode)."""
    return (IWAE_K_FAST, IWAE_N_FAST) if fast_mode() else (IWAE_K, IWAE_N)


def _sampler(checkpoint: Checkpoint):
    model = checkpoint.model

    def sample(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return model.sample(n, generator).cpu()  # decoder means E[x | z], [n, 784] in [0, 1]

    return sample


def _test_pixels(test, binarized: bool) -> torch.Tensor:
    """The test digits in the form the decoder is a distribution over: binarised once (seed 0) or grey."""
    x = test.x if isinstance(test, Split) else torch.as_tensor(test)
    already_binary = isinstance(test, Split) and test.binarize in ("static", "static-sample")
    if binarized:
        return binary_test_digits(test)
    if already_binary:
        raise ValueError(
            f"this VAE's decoder is a density over grey levels, but the test split given is binarised "
            f"({test.binarize!r}); pass the grey test digits, load_mnist('test')"
        )
    return x


def _log_likelihood(checkpoint: Checkpoint, test, binarized: bool) -> tuple[float, float]:
    """IWAE estimate of log p(x) on the first ``n`` test digits: (mean in nats per digit, its standard error)."""
    k, n = iwae_settings()
    model = checkpoint.model
    x = _test_pixels(test, binarized)[:n]
    g = torch.Generator(device=module_device(model)).manual_seed(IWAE_SEED)
    ll = iwae_log_likelihood(model, x, k=k, generator=g)  # [n]
    return ll.mean().item(), ll.std().item() / math.sqrt(len(ll))


def _kind(binarized: bool) -> str:
    k, n = iwae_settings()
    pixels = "binarised test digits, log-probability" if binarized else "grey test digits, log-density"
    return f"IWAE, k = {k}, {n} {pixels}"


def vae_entry(name: str, label: str, chapter: str, recipe: VAERecipe) -> Entry:
    """The zoo entry of a recipe: it loads (or trains) the model, samples decoder means, and estimates the test
    log-likelihood by importance sampling (on binarised test digits for a Bernoulli decoder, grey ones otherwise)."""
    return Entry(
        name=name,
        label=label,
        chapter=chapter,
        load=recipe.load,
        sampler=_sampler,
        log_likelihood=functools.partial(_log_likelihood, binarized=recipe.binarized),
        log_likelihood_kind=_kind(recipe.binarized),
    )


ENTRIES: tuple[Entry, ...] = (
    vae_entry("vae-z20", "VAE, J = 20", "book/06_training_vae", CH06_Z20),
    vae_entry("vae-z2", "VAE, J = 2", "book/06_training_vae", CH06_Z2),
    vae_entry(
        "beta-vae-4", "beta-VAE, beta = 4, J = 10", "book/07_decoders_beta_vae", chapter7_recipe("bernoulli", 4.0)
    ),
    vae_entry(
        "vae-gaussian",
        "VAE, Gaussian decoder (sigma 0.1), J = 10",
        "book/07_decoders_beta_vae",
        chapter7_recipe("gaussian"),
    ),
)
