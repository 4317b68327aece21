"""The restricted Boltzmann machine of part III, as a zoo entry: chapter 15's RBM trained on binarised MNIST.

One :class:`RBMRecipe` holds the model config, the training config (CD-k or persistent CD), the data and the
checkpoint name; ``book/15_rbm`` loads the model through it, so the chapter and the comparison table get the same
weights.

The entry samples by Gibbs sampling (``SAMPLE_STEPS`` steps from random binary images; the image is p(v = 1 | h)
after the last step, grey levels in [0, 1]) and estimates the test log-likelihood as ``-F(v) - log Z`` with log Z
from annealed importance sampling (:func:`dgmlab.models.rbm.ais_log_partition`, ``AIS_K`` intermediate
distributions, ``AIS_M`` runs, started from the base-rate model of the training digits). The RBM is a distribution
over binary images, so the estimate is on the test digits binarised once (seed 0), the same binary digits as the
VAEs' importance-sampled log-likelihood (:mod:`dgmlab.zoo.vae`), and in the same unit (nats per digit).

AIS runs once, after training, and its result is saved in the checkpoint (``extra["ais"]``); the entry's
``log_likelihood`` reuses it when the AIS settings are unchanged. In fast mode (``DGMLAB_FAST=1``) the recipe
trains a short run under the checkpoint name with ``-fast`` added, with a short AIS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dgmlab.checkpoint import Checkpoint, load_or_train
from dgmlab.data import Split, load_mnist
from dgmlab.models.rbm import RBM, RBMConfig, RBMStep, RBMTrainConfig, ais_log_partition, base_rate_bias
from dgmlab.train import fit
from dgmlab.utils import checkpoint_path, fast_mode, get_device, module_device
from dgmlab.zoo import Entry, binary_test_digits

__all__ = ["RBMRecipe", "CH15_RBM", "ais_settings", "ais_result", "test_log_likelihood", "ENTRIES"]

# AIS: intermediate distributions K and runs M (full, fast); the seed of its noise
AIS_K, AIS_K_FAST = 5000, 300
AIS_M, AIS_M_FAST = 100, 32
AIS_SEED = 0
SAMPLE_STEPS, SAMPLE_STEPS_FAST = 500, 200  # Gibbs steps per sample of the entry's sampler


def ais_settings() -> tuple[int, int]:
    """``(K, M)``: AIS's intermediate distributions and runs (fewer in fast mode)."""
    return (AIS_K_FAST, AIS_M_FAST) if fast_mode() else (AIS_K, AIS_M)


@dataclass(frozen=True)
class RBMRecipe:
    """How the course's RBM is built, trained and cached.

    Attributes:
        checkpoint: the checkpoint's name (:func:`dgmlab.utils.checkpoint_path` adds ``-fast`` in fast mode).
        model: the sizes; the weights are initialised after ``torch.manual_seed(0)`` (the caller's global random
            state is left as it was), the visible biases at the base rates of the training digits.
        epochs, fast_epochs: training epochs (full, fast mode).
        k: Gibbs steps of the negative phase; ``persistent``: PCD (True) or CD (False).
        lr: Adam's learning rate; ``weight_decay``: L2 penalty on W.
    """

    checkpoint: str
    model: RBMConfig
    epochs: int
    fast_epochs: int
    k: int = 1
    persistent: bool = False
    lr: float = 1e-3
    weight_decay: float = 0.0

    def train_config(self, device: str = "auto") -> RBMTrainConfig:
        """The training config (Adam, batches of 100, seed 0; ``device`` is not compared on loading)."""
        epochs = self.fast_epochs if fast_mode() else self.epochs
        return RBMTrainConfig(
            epochs=epochs,
            batch_size=100,
            lr=self.lr,
            k=self.k,
            persistent=self.persistent,
            weight_decay=self.weight_decay,
            device=str(device),
        )

    def data(self) -> tuple[Split, Split]:
        """``(train, val)``: dynamically binarised MNIST (``source="auto"``)."""
        return load_mnist("train", binarize="dynamic"), load_mnist("val", binarize="dynamic")

    def build(self, train: Split) -> RBM:
        """The untrained RBM: weights from seed 0, visible biases at the log-odds of the training pixels' means
        (Hinton's practical guide), without touching the global random state."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            rbm = RBM(self.model)
        with torch.no_grad():
            rbm.b.copy_(base_rate_bias(train.x))
        return rbm

    def load(self, device: str = "cpu", verbose: bool = True) -> Checkpoint:
        """The trained RBM: from the cache when it was trained this way, else trained now (with its AIS estimate of
        log Z, saved as ``extra["ais"]``) and cached. Returns the :class:`~dgmlab.checkpoint.Checkpoint`."""
        train, val = self.data()
        config = self.train_config(str(get_device("auto")))

        def train_model(rbm):
            return fit(RBMStep(rbm, config), train, val=val, progress=False)

        return load_or_train(
            checkpoint_path(self.checkpoint),
            lambda: self.build(train),
            train_model,
            config,
            train,
            extra=lambda rbm: {"ais": _run_ais(rbm, train)},
            device=str(get_device(device)),
            verbose=verbose,
        )


def _run_ais(rbm: RBM, train: Split, progress: bool = False) -> dict:
    """AIS with the current settings, from the base-rate model of ``train``; plain data for the checkpoint."""
    K, M = ais_settings()
    W, b, c = (p.detach() for p in (rbm.W, rbm.b, rbm.c))
    result = ais_log_partition(
        W, b, c, K, M, base_rate_bias(train.x), torch.Generator().manual_seed(AIS_SEED), progress=progress
    )
    return {
        "log_z": float(result.log_z),
        "log_z_se": result.log_z_se,
        "log_w": result.log_w,
        "log_z_base": result.log_z_base,
        "n_betas": K,
        "n_runs": M,
        "seed": AIS_SEED,
    }


def ais_result(checkpoint: Checkpoint, progress: bool = False) -> dict:
    """The checkpoint's AIS estimate of log Z (``log_z``, ``log_z_se``, ``log_w``, ``n_betas``, ``n_runs``):
    the saved one when it used the current settings, else a new run (saved in ``checkpoint.extra``)."""
    K, M = ais_settings()
    saved = checkpoint.extra.get("ais")
    if saved and (saved["n_betas"], saved["n_runs"], saved["seed"]) == (K, M, AIS_SEED):
        return saved
    train = load_mnist("train", binarize="dynamic", verbose=False)
    checkpoint.extra["ais"] = _run_ais(checkpoint.model, train, progress)
    return checkpoint.extra["ais"]


def test_log_likelihood(checkpoint: Checkpoint, test) -> dict:
    """log p(v) = -F(v) - log Z on the test digits (binarised once, seed 0, unless already binary).

    Returns:
        ``{"ll": [N] per digit, "mean", "se_digits" (spread over digits), "log_z_se" (AIS), "se" (both
        combined: sqrt(se_digits^2 + log_z_se^2), since the error of log Z shifts every digit alike)}``.
    """
    ais = ais_result(checkpoint)
    rbm = checkpoint.model
    v = binary_test_digits(test).to(module_device(rbm))
    with torch.no_grad():
        ll = (-rbm.free_energy(v) - ais["log_z"]).cpu()
    se_digits = ll.std().item() / math.sqrt(len(ll))
    return {
        "ll": ll,
        "mean": ll.mean().item(),
        "se_digits": se_digits,
        "log_z_se": ais["log_z_se"],
        "se": math.hypot(se_digits, ais["log_z_se"]),
    }


def _log_likelihood(checkpoint: Checkpoint, test) -> tuple[float, float]:
    """(mean nats per test digit, standard error) of :func:`test_log_likelihood`."""
    result = test_log_likelihood(checkpoint, test)
    return result["mean"], result["se"]


def _sampler(checkpoint: Checkpoint):
    rbm = checkpoint.model
    steps = SAMPLE_STEPS_FAST if fast_mode() else SAMPLE_STEPS

    def sample(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return rbm.sample(n, generator, steps=steps).cpu()  # p(v = 1 | h) after the last step, [n, 784]

    return sample


def _kind() -> str:
    K, M = ais_settings()
    return f"AIS, K = {K}, M = {M}, binarised test digits"


# --- chapter 15 -----------------------------------------------------------------------------------------------
# CD-1: with this budget (30 epochs of 4,000 digits, Adam) persistent CD gave a much lower AIS log-likelihood
CH15_RBM = RBMRecipe(
    "ch15-rbm-cd1", RBMConfig(n_visible=784, n_hidden=500), epochs=30, fast_epochs=3, k=1, persistent=False
)

ENTRIES: tuple[Entry, ...] = (
    Entry(
        name="rbm",
        label="RBM, 500 hidden units, CD-1",
        chapter="book/15_rbm",
        load=CH15_RBM.load,
        sampler=_sampler,
        log_likelihood=_log_likelihood,
        log_likelihood_kind=_kind(),
    ),
)
