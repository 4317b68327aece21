"""The GANs of "Training problems and cures" (``book/11_gan_training_problems``), as zoo entries.

Three cures of the plain MLP GAN, trained on MNIST with the same budget (epochs, batch size, seed) as a plain MLP GAN
baseline: one-sided label smoothing (``"mlp-gan-smoothed"``, Salimans et al. 2016), the convolutional DCGAN
(``"dcgan"``, Radford et al. 2016) and the Wasserstein GAN with gradient penalty on the DCGAN's networks, its critic
without batch norm and initialised as He et al. (2015) do (``"wgan-gp"``, Gulrajani et al. 2017). One
:class:`GANCureRecipe` per model holds the architecture, the objective, the training config, the data and the
checkpoint name; the chapter loads the models through these recipes, and so does the comparison table of "Measuring
generative models", so a build trains each once. The baseline (:data:`MLP_GAN_BASELINE`) is a recipe without an
entry: it exists for the chapter's comparison at this budget; the course's MLP GAN is chapter 10's ``"mlp-gan"``.

While a model trains, its recipe records after every epoch (and before the first) the class histogram of a fixed
set of samples as the course's MNIST classifier reads them (:func:`dgmlab.train.load_classifier`,
:func:`dgmlab.metrics.class_histogram`): ``extra["class_trace"]``, so that the chapter can plot the classes covered
over training without training again.

Every entry samples ``x = G(z)``, ``z ~ N(0, I)``, grey levels in (0, 1); a GAN has no likelihood, so
``log_likelihood`` is ``None``. In fast mode (``DGMLAB_FAST=1``) every recipe trains ``fast_epochs`` on the first
``fast_n_train`` training digits, under the checkpoint name with ``-fast`` added (:func:`dgmlab.utils.checkpoint_path`).

References:
    Salimans et al., "Improved Techniques for Training GANs", NeurIPS 2016, https://arxiv.org/abs/1606.03498
    Radford, Metz and Chintala, "Unsupervised Representation Learning with Deep Convolutional Generative
    Adversarial Networks", ICLR 2016, https://arxiv.org/abs/1511.06434
    Gulrajani et al., "Improved Training of Wasserstein GANs", NeurIPS 2017, https://arxiv.org/abs/1704.00028
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dgmlab.checkpoint import Checkpoint, load_or_train
from dgmlab.data import Split, load_mnist
from dgmlab.models.dcgan import DCDiscriminator, DCGANConfig, DCGenerator
from dgmlab.models.gan import Discriminator, GANConfig, GANStep, GANTrainConfig, Generator
from dgmlab.models.wgan import WGANGPStep, WGANTrainConfig
from dgmlab.train import fit, load_classifier
from dgmlab.utils import checkpoint_path, fast_mode, get_device
from dgmlab.zoo import Entry
from dgmlab.zoo.gan import ClassifierTrace

__all__ = [
    "GANCureRecipe",
    "MLP_GAN_BASELINE",
    "MLP_GAN_SMOOTHED",
    "DCGAN",
    "WGAN_GP",
    "RECIPES",
    "ENTRIES",
]

ARCHITECTURES = ("mlp", "dcgan")
OBJECTIVES = ("gan", "wgan-gp")


@dataclass(frozen=True)
class GANCureRecipe:
    """How one of chapter 11's MNIST GANs is built, trained and cached.

    Attributes:
        checkpoint: the checkpoint's name (:func:`dgmlab.utils.checkpoint_path` adds ``-fast`` in fast mode).
        architecture: ``"mlp"`` (:class:`~dgmlab.models.gan.Generator` and ``Discriminator`` of ``mlp``) or
            ``"dcgan"`` (:class:`~dgmlab.models.dcgan.DCGenerator` and ``DCDiscriminator`` of ``dcgan``).
        objective: ``"gan"`` (:class:`~dgmlab.models.gan.GANStep`, the non-saturating loss) or ``"wgan-gp"``
            (:class:`~dgmlab.models.wgan.WGANGPStep`; the critic is the discriminator without its sigmoid, and
            must have neither dropout nor batch norm).
        epochs: training epochs; ``fast_epochs`` in fast mode.
        fast_epochs: training epochs in fast mode.
        fast_n_train: in fast mode, train on the first this many training digits.
        batch_size: images per step.
        lr: Adam's learning rate for both players.
        betas: Adam's decay rates.
        label_smoothing: the target of real images in the discriminator's loss (1.0: none; ``"gan"`` only).
        n_critic, lambda_gp: critic steps per generator step and the penalty's weight (``"wgan-gp"`` only).
        mlp: the MLP sizes (``architecture="mlp"``).
        dcgan: the convolutional sizes (``architecture="dcgan"``).
        seed: seeds the initial weights (``torch.manual_seed``, the caller's global state restored afterwards),
            the batch order and the noise.
        n_trace: samples the classifier reads after every epoch (:class:`dgmlab.zoo.gan.ClassifierTrace`, without
            the Frechet distance).
    """

    checkpoint: str
    architecture: str = "mlp"
    objective: str = "gan"
    epochs: int = 4
    fast_epochs: int = 1
    fast_n_train: int = 1000
    batch_size: int = 64
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    label_smoothing: float = 1.0
    n_critic: int = 5
    lambda_gp: float = 10.0
    mlp: GANConfig = field(default_factory=GANConfig)
    dcgan: DCGANConfig = field(default_factory=DCGANConfig)
    seed: int = 0
    n_trace: int = 1000

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.objective == "wgan-gp" and self.label_smoothing != 1.0:
            raise ValueError("label_smoothing is an option of the GAN's discriminator loss, not of WGAN-GP's critic")

    def n_epochs(self) -> int:
        """The epochs of this run: ``fast_epochs`` in fast mode, else ``epochs``."""
        return self.fast_epochs if fast_mode() else self.epochs

    def train_config(self, device: str = "auto") -> GANTrainConfig | WGANTrainConfig:
        """The training config (``device`` is not compared on loading)."""
        common = dict(
            epochs=self.n_epochs(),
            batch_size=self.batch_size,
            lr=self.lr,
            betas=self.betas,
            seed=self.seed,
            device=str(device),
        )
        if self.objective == "wgan-gp":
            return WGANTrainConfig(**common, n_critic=self.n_critic, lambda_gp=self.lambda_gp)
        return GANTrainConfig(**common, label_smoothing=self.label_smoothing)

    def data(self) -> Split:
        """The training digits, grey levels (``source="auto"``); in fast mode the first ``fast_n_train``."""
        train = load_mnist("train")
        return train.subset(self.fast_n_train) if fast_mode() else train

    def build(self) -> dict[str, torch.nn.Module]:
        """The untrained networks, ``{"G": ..., "D": ...}`` (``{"G": ..., "f": ...}`` for WGAN-GP), initialised from
        ``seed`` without touching the global random state."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            if self.architecture == "mlp":
                config = self.mlp
                if self.objective == "wgan-gp" and config.dropout:  # a critic must be deterministic
                    config = GANConfig(**{**vars(config), "dropout": 0.0})
                G, D = Generator(config), Discriminator(config)
            else:
                config = self.dcgan
                if self.objective == "wgan-gp":
                    config = DCGANConfig(**{**vars(config), "d_batch_norm": False})
                G, D = DCGenerator(config), DCDiscriminator(config)
        return {"G": G, "f": D} if self.objective == "wgan-gp" else {"G": G, "D": D}

    def step(self, modules: dict[str, torch.nn.Module], config) -> GANStep | WGANGPStep:
        """The training step for these modules and config."""
        if self.objective == "wgan-gp":
            return WGANGPStep(modules["G"], modules["f"], config)
        return GANStep(modules["G"], modules["D"], config)

    def load(self, device: str = "cpu", verbose: bool = True, progress: bool = False) -> Checkpoint:
        """The trained GAN: from the cache when it was trained this way, else trained now and cached.

        Training runs on ``get_device("auto")``; the returned modules live on ``device`` in eval mode.
        ``extra["class_trace"]`` holds :class:`~dgmlab.zoo.gan.ClassifierTrace`'s rows (epoch 0 to the last).

        Returns:
            The :class:`~dgmlab.checkpoint.Checkpoint`: ``checkpoint["G"]``, ``.history`` (the step's terms per
            epoch: ``train_d_loss``... for a GAN, ``train_wasserstein``, ``train_grad_norm``... for WGAN-GP),
            ``.extra``.
        """
        train = self.data()
        config = self.train_config(str(get_device("auto")))
        state: dict = {}

        def train_model(modules):
            trace = ClassifierTrace(load_classifier(), n=self.n_trace)
            state["trace"] = trace
            return fit(self.step(modules, config), train, callbacks=[trace], progress=progress)

        def extra(modules):
            return {"class_trace": state["trace"].rows}

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


# --- the recipes: the same budget for every variant ----------------------------------------------------------------

MLP_GAN_BASELINE = GANCureRecipe("ch11-mlp-gan")
MLP_GAN_SMOOTHED = GANCureRecipe("ch11-mlp-gan-smoothed", label_smoothing=0.9)
DCGAN = GANCureRecipe("ch11-dcgan", architecture="dcgan")
# the critic starts from He's initialisation: the paper's N(0, 0.02^2) would leave its gradient norm on digits near
# 0.01, far from the penalty's 1 (see DCGANConfig.d_init)
WGAN_GP = GANCureRecipe(
    "ch11-wgan-gp",
    architecture="dcgan",
    objective="wgan-gp",
    lr=1e-4,
    betas=(0.5, 0.9),
    dcgan=DCGANConfig(d_init="he"),
)
RECIPES: dict[str, GANCureRecipe] = {
    "mlp-gan-baseline": MLP_GAN_BASELINE,
    "mlp-gan-smoothed": MLP_GAN_SMOOTHED,
    "dcgan": DCGAN,
    "wgan-gp": WGAN_GP,
}


def _sampler(checkpoint: Checkpoint):
    G = checkpoint["G"]

    def sample(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return G.sample(n, generator).cpu()  # [n, 784], grey levels in (0, 1)

    return sample


CHAPTER = "book/11_gan_training_problems"
ENTRIES: tuple[Entry, ...] = (
    Entry("mlp-gan-smoothed", "MLP GAN, one-sided label smoothing 0.9", CHAPTER, MLP_GAN_SMOOTHED.load, _sampler),
    Entry("dcgan", "DCGAN", CHAPTER, DCGAN.load, _sampler),
    Entry("wgan-gp", "WGAN-GP (DCGAN networks)", CHAPTER, WGAN_GP.load, _sampler),
)
