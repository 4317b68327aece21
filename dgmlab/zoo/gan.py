"""The GAN of part II, as a zoo entry: the MLP GAN of "An MLP GAN on MNIST" (``book/10_gan_mnist``).

One :class:`GANRecipe` holds the model config, the training config, the data and the checkpoint name. The chapter
loads the model through it, and so do the later chapters and the comparison table of "Measuring generative
models", so a build trains it once and every page sees the same weights.

While it trains, the recipe records what the chapter shows (assignment questions 2.6 and 2.7): the samples of the
same noise vectors before training, half way and at the end (:class:`dgmlab.train.Snapshots`), and after every
epoch how the course's MNIST classifier (:func:`dgmlab.train.load_classifier`) reads a fixed set of samples (mean
confidence, share read with confidence 0.9 or more, classes covered, the Frechet distance of
:mod:`dgmlab.metrics` to the validation digits). Both go into the checkpoint's ``extra``, so a build that loads the
cached model shows them too.

The entry samples ``x = G(z)``, ``z ~ N(0, I)``, grey levels in (0, 1); a GAN has no likelihood, so its
``log_likelihood`` is ``None``. In fast mode (``DGMLAB_FAST=1``) the recipe trains ``fast_epochs`` under the
checkpoint name with ``-fast`` added (:func:`dgmlab.utils.checkpoint_path`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dgmlab.checkpoint import Checkpoint, load_or_train
from dgmlab.data import Split, load_mnist
from dgmlab.metrics import class_histogram, classes_covered, frechet_distance
from dgmlab.models.gan import Discriminator, GANConfig, GANStep, GANTrainConfig, Generator
from dgmlab.train import Callback, Snapshots, fit, load_classifier
from dgmlab.utils import checkpoint_path, fast_mode, get_device
from dgmlab.zoo import Entry

__all__ = ["ClassifierTrace", "GANRecipe", "MLP_GAN", "ENTRIES"]

CONFIDENT = 0.9  # a sample is "read with confidence" when the classifier gives one digit at least this probability


class ClassifierTrace(Callback):
    """After every epoch (and before the first), how the course's classifier reads ``n`` samples of the step's
    generator, always from the same noise (a CPU generator seeded with ``seed``).

    ``rows`` gets one dict per epoch: ``epoch``; ``confidence``, the mean over the samples of the classifier's
    largest class probability; ``confident_share``, the share of samples whose largest probability is at least
    :data:`CONFIDENT`; ``histogram``, the shares of the ten predicted classes (a list of floats,
    :func:`dgmlab.metrics.class_histogram`); ``classes_covered`` (:func:`dgmlab.metrics.classes_covered` of that
    histogram); and, when ``real_x`` is given, ``fd``, the Frechet distance between the classifier features of the
    samples and of ``real_x``. Chapter 10's GAN and chapter 11's cures (:mod:`dgmlab.zoo.gan_cures`) record it.

    Args:
        classifier: a trained :class:`dgmlab.models.classifier.Classifier`.
        real_x: real images ``[N, 784]`` for the Frechet distance (the validation digits), or ``None`` for no ``fd``.
        n: samples per epoch.
        seed: seed of the samples' noise.
    """

    def __init__(self, classifier: torch.nn.Module, real_x: torch.Tensor | None = None, n: int = 500, seed: int = 1):
        self.classifier, self.n, self.seed = classifier, n, seed
        self.real_features = None if real_x is None else classifier.features(real_x)  # [N, H]
        self.rows: list[dict] = []

    def _measure(self, epoch: int, step) -> None:
        x = step.sample(self.n, generator=torch.Generator().manual_seed(self.seed)).cpu()  # [n, 784]
        probs = self.classifier.probabilities(x)  # [n, 10]
        top = probs.max(dim=1).values  # [n]
        histogram = class_histogram(probs)  # [10], each sample counted for its most likely class
        row = {
            "epoch": epoch,
            "confidence": top.mean().item(),
            "confident_share": (top >= CONFIDENT).double().mean().item(),
            "histogram": histogram.tolist(),
            "classes_covered": classes_covered(histogram),
        }
        if self.real_features is not None:
            row["fd"] = frechet_distance(self.classifier.features(x), self.real_features)
        self.rows.append(row)

    def on_fit_start(self, step, history) -> None:
        self._measure(0, step)

    def on_epoch_end(self, epoch, step, history) -> None:
        self._measure(epoch, step)


@dataclass(frozen=True)
class GANRecipe:
    """How one of the course's MLP GANs is built, trained and cached.

    Attributes:
        checkpoint: the checkpoint's name (:func:`dgmlab.utils.checkpoint_path` adds ``-fast`` in fast mode).
        model: the sizes of ``G`` and ``D``; both are initialised after ``torch.manual_seed(0)`` (the caller's global
            random state is left as it was).
        epochs: training epochs; ``fast_epochs`` in fast mode.
        fast_epochs: training epochs in fast mode.
        batch_size: images per step (one discriminator step and one generator step per batch).
        lr: Adam's learning rate for both players (betas 0.5, 0.999 as in :class:`GANTrainConfig`).
        n_snapshot: samples kept at each snapshot epoch (0, half way, the end), from the same noise (seed 0).
        n_trace: samples the classifier reads after every epoch (:class:`ClassifierTrace`).
    """

    checkpoint: str
    model: GANConfig = field(default_factory=GANConfig)
    epochs: int = 30
    fast_epochs: int = 4
    batch_size: int = 128
    lr: float = 2e-4
    n_snapshot: int = 500
    n_trace: int = 500

    def n_epochs(self) -> int:
        """The epochs of this run: ``fast_epochs`` in fast mode, else ``epochs``."""
        return self.fast_epochs if fast_mode() else self.epochs

    def snapshot_epochs(self) -> tuple[int, int, int]:
        """Before training, half way (rounded down) and after the last epoch."""
        epochs = self.n_epochs()
        return (0, epochs // 2, epochs)

    def train_config(self, device: str = "auto") -> GANTrainConfig:
        """The training config (seed 0, the non-saturating generator loss; ``device`` is not compared on loading)."""
        return GANTrainConfig(epochs=self.n_epochs(), batch_size=self.batch_size, lr=self.lr, device=str(device))

    def data(self) -> tuple[Split, Split]:
        """``(train, val)``: grey-level MNIST (``source="auto"``: the embedded subset unless full MNIST is there)."""
        return load_mnist("train"), load_mnist("val")

    def build(self) -> dict[str, torch.nn.Module]:
        """The untrained ``{"G": Generator, "D": Discriminator}``, initialised from seed 0 without touching the
        global random state."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return {"G": Generator(self.model), "D": Discriminator(self.model)}

    def load(self, device: str = "cpu", verbose: bool = True, progress: bool = False) -> Checkpoint:
        """The trained GAN: from the cache when it was trained this way, else trained now and cached.

        Training runs on ``get_device("auto")`` (a GPU when there is one); the returned modules live on ``device``
        in eval mode. ``extra["snapshots"]`` maps the epochs of :meth:`snapshot_epochs` to ``[n_snapshot, 784]``
        samples, ``extra["trace"]`` is :class:`ClassifierTrace`'s rows, ``extra["classifier_test_accuracy"]`` the
        classifier's accuracy on the test digits of its cache.

        Args:
            device: where the returned ``G`` and ``D`` live.
            verbose: print one line when a cached checkpoint is not reused, and why.
            progress: show a progress bar while training.

        Returns:
            The :class:`~dgmlab.checkpoint.Checkpoint`: ``checkpoint["G"]``, ``checkpoint["D"]``, ``.history``
            (``train_d_loss``, ``train_g_loss``, ``train_d_real``, ``train_d_fake`` per epoch), ``.extra``.
        """
        train, val = self.data()
        config = self.train_config(str(get_device("auto")))
        snapshots = Snapshots(self.snapshot_epochs(), n=self.n_snapshot, seed=0)
        state: dict = {}

        def train_gan(modules):
            classifier = load_classifier()
            state["trace"] = ClassifierTrace(classifier, val.x, n=self.n_trace)
            state["accuracy"] = classifier.info["test_accuracy"]
            step = GANStep(modules["G"], modules["D"], config)
            return fit(step, train, callbacks=[snapshots, state["trace"]], progress=progress)

        def extra(modules):
            return {
                "snapshots": snapshots.images,
                "trace": state["trace"].rows,
                "classifier_test_accuracy": state["accuracy"],
            }

        return load_or_train(
            checkpoint_path(self.checkpoint),
            self.build,
            train_gan,
            config,
            train,
            extra=extra,
            device=str(get_device(device)),
            verbose=verbose,
        )


# --- chapter 10 -----------------------------------------------------------------------------------------------
# The default GANConfig (the sizes lab 2 uses): z in R^64, G 64-256-512-784 with batch norm, D 784-512-256-1 with
# dropout 0.3. 24 epochs of 32 steps reach the plateau of the sample quality on the embedded subset; half way the
# samples are still visibly worse (book/10_gan_mnist shows the trace that says so).
MLP_GAN = GANRecipe("ch10-mlp-gan", GANConfig(), epochs=24, fast_epochs=6)


def _sampler(checkpoint: Checkpoint):
    G = checkpoint["G"]

    def sample(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return G.sample(n, generator).cpu()  # G(z), z ~ N(0, I): [n, 784] in (0, 1)

    return sample


ENTRIES: tuple[Entry, ...] = (
    Entry(
        name="mlp-gan",
        label="MLP GAN",
        chapter="book/10_gan_mnist",
        load=MLP_GAN.load,
        sampler=_sampler,
        log_likelihood=None,
        log_likelihood_kind=None,
    ),
)
