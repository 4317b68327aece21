"""The adversarial autoencoders of part III, as zoo entries: the two models of "The adversarial autoencoder"
(``book/16_adversarial_autoencoder``).

- ``aae-swiss-roll``: codes in 2-d matched to a swiss roll (:class:`dgmlab.priors.SwissRoll`), no labels;
- ``aae-mixture-labels``: codes matched to a mixture of 10 Gaussians (:class:`dgmlab.priors.MixturePrior`), with
  the discriminator told the label of 2,000 of the 4,000 training digits (one component per digit) and "no label" for
  the others (Makhzani et al., 2016, section 5).

Each :class:`AAERecipe` holds the model config, the training config, the data and the checkpoint name; the chapter
loads its models through these entries, so a build trains each once. The entries sample the model's own way: a
point of the imposed prior, decoded to the decoder mean (grey levels in [0, 1]). An AAE has no likelihood (its
``q(z | x)`` is a point mass, so the ELBO is minus infinity), so ``log_likelihood`` is ``None``. In fast mode
(``DGMLAB_FAST=1``) a recipe trains ``fast_epochs`` on the first ``fast_n_train`` digits under the checkpoint name
with ``-fast`` added (:func:`dgmlab.utils.checkpoint_path`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dgmlab.checkpoint import Checkpoint, load_or_train
from dgmlab.data import Split, load_mnist
from dgmlab.models.aae import AAE, AAEConfig, AAEStep, AAETrainConfig, hide_labels, latent_discriminator
from dgmlab.train import fit
from dgmlab.utils import checkpoint_path, fast_mode, get_device
from dgmlab.zoo import Entry

__all__ = ["AAERecipe", "SWISS_ROLL", "MIXTURE_LABELS", "ENTRIES"]


@dataclass(frozen=True)
class AAERecipe:
    """How one of the course's adversarial autoencoders is built, trained and cached.

    Attributes:
        checkpoint: the checkpoint's name (``-fast`` is added in fast mode).
        model: the architecture and the prior; weights initialised after ``torch.manual_seed(0)`` (the caller's
            global random state is left as it was).
        epochs, fast_epochs: training epochs in full and in fast mode.
        n_labelled: training digits whose label the discriminator sees (``None``: no labels at all; at most half
            the training digits, which matters in fast mode); chosen by
            :func:`dgmlab.models.aae.hide_labels` with seed 0, the same number per digit.
        fast_n_train: in fast mode, train on the first this many training digits only.
    """

    checkpoint: str
    model: AAEConfig
    epochs: int
    fast_epochs: int
    n_labelled: int | None = None
    fast_n_train: int = 2000

    def train_config(self, device: str = "auto") -> AAETrainConfig:
        """Adam, lr 1e-3 for the reconstruction and for the game, batches of 100, seed 0."""
        return AAETrainConfig(epochs=self.fast_epochs if fast_mode() else self.epochs, device=str(device))

    def data(self) -> tuple[Split, Split]:
        """``(train, val)``: dynamically binarised MNIST, with labels hidden as ``n_labelled`` says."""
        train = load_mnist("train", binarize="dynamic")
        val = load_mnist("val", binarize="dynamic")
        if fast_mode():
            train = train.subset(self.fast_n_train)
        if self.n_labelled is not None:
            train = hide_labels(train, min(self.n_labelled, len(train) // 2), seed=0)
        return train, val

    def build(self) -> dict[str, torch.nn.Module]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return {"model": AAE(self.model), "D": latent_discriminator(self.model)}

    def load(self, device: str = "cpu", verbose: bool = True) -> Checkpoint:
        """The trained AAE (``checkpoint["model"]``) and its latent discriminator (``checkpoint["D"]``), from the
        cache when trained this way, else trained now (on a GPU when there is one) and cached."""
        train, val = self.data()
        config = self.train_config(str(get_device("auto")))

        def train_models(modules):
            step = AAEStep(modules["model"], modules["D"], config)
            return fit(step, train, val=val, progress=False)

        return load_or_train(
            checkpoint_path(self.checkpoint),
            self.build,
            train_models,
            config,
            train,
            device=str(get_device(device)),
            verbose=verbose,
        )


SWISS_ROLL = AAERecipe("ch16-aae-swiss-roll", AAEConfig(prior="swiss_roll"), epochs=30, fast_epochs=3)
MIXTURE_LABELS = AAERecipe(
    "ch16-aae-mixture-labels", AAEConfig(prior="mixture", conditional=True), epochs=30, fast_epochs=3, n_labelled=2000
)


def _sampler(checkpoint: Checkpoint):
    model = checkpoint["model"]

    def sample(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return model.sample(n, generator).cpu()

    return sample


ENTRIES = (
    Entry(
        "aae-swiss-roll",
        "AAE, swiss-roll prior",
        "book/16_adversarial_autoencoder",
        SWISS_ROLL.load,
        sampler=_sampler,
    ),
    Entry(
        "aae-mixture-labels",
        "AAE, 10 Gaussians, 2,000 labels",
        "book/16_adversarial_autoencoder",
        MIXTURE_LABELS.load,
        sampler=_sampler,
    ),
)
