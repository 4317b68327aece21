"""The training loop: :func:`fit` drives any step (VAE, GAN, classifier, ...) over shuffled batches.

``fit`` is a plain loop a student can read: for each epoch, for each batch, ``terms = step(x, y)``; then the epoch's
mean terms (and the step's validation terms) become one history row, and the callbacks run. What is trained, and
how, lives in the step (see :mod:`dgmlab.step`); checkpoints live in :mod:`dgmlab.checkpoint`.

``train_vae`` and ``train_gan`` are one-line wrappers for the book; :func:`load_classifier` gives the course's MNIST
classifier, trained once and cached.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable

import torch
from tqdm.auto import tqdm

from dgmlab.checkpoint import IGNORED_TRAIN_FIELDS, config_dict, load_or_train
from dgmlab.data import Split
from dgmlab.models.classifier import Classifier, ClassifierConfig, ClassifierStep, accuracy
from dgmlab.models.gan import Discriminator, GANStep, GANTrainConfig, Generator
from dgmlab.models.vae import VAE, VAEStep, VAETrainConfig
from dgmlab.step import Step, TrainConfig
from dgmlab.utils import cache_dir

__all__ = [
    "fit",
    "Callback",
    "Snapshots",
    "NonFiniteLossError",
    "TrainConfig",
    "VAETrainConfig",
    "GANTrainConfig",
    "train_vae",
    "train_gan",
    "train_classifier",
    "load_classifier",
]


class NonFiniteLossError(RuntimeError):
    """A training term became NaN or infinite; the message gives the epoch, the batch and what to try."""


class Callback:
    """Base class of :func:`fit`'s callbacks; override the events you need.

    Events: ``on_fit_start(step, history)`` before the first epoch, ``on_epoch_end(epoch, step, history)`` after
    each epoch's history row is written, ``on_fit_end(step, history)`` after the last. A plain function
    ``f(epoch, step, history)`` may stand in for a callback: it is called with epoch 0 before training and after
    every epoch.
    """

    def on_fit_start(self, step: Step, history: list[dict]) -> None:
        pass

    def on_epoch_end(self, epoch: int, step: Step, history: list[dict]) -> None:
        pass

    def on_fit_end(self, step: Step, history: list[dict]) -> None:
        pass


class _FunctionCallback(Callback):
    def __init__(self, fn: Callable[[int, Step, list], None]):
        self.fn = fn

    def on_fit_start(self, step, history):
        self.fn(0, step, history)

    def on_epoch_end(self, epoch, step, history):
        self.fn(epoch, step, history)


def _as_split(data, name: str) -> Split:
    if isinstance(data, Split):
        return data
    if isinstance(data, torch.Tensor):
        return Split(data, torch.zeros(len(data), dtype=torch.long), name, "tensor")
    raise TypeError(f"{name} must be a dgmlab.data.Split or a tensor [N, D], got {type(data).__name__}")


def _epoch_means(terms: list[dict], sizes: list[int], epoch: int, config: TrainConfig) -> dict[str, float]:
    """Average the per-batch terms of one epoch, weighted by batch size; one synchronisation per epoch."""
    n = sum(sizes)
    w = torch.tensor(sizes, dtype=torch.float64)
    means = {}
    for key in terms[0]:
        values = torch.stack([torch.as_tensor(t[key]).detach().reshape(()) for t in terms]).double().cpu()  # [batches]
        bad = (~torch.isfinite(values)).nonzero()
        if len(bad):
            i = int(bad[0])
            raise NonFiniteLossError(
                f"{key} became {values[i].item()} at epoch {epoch}, batch {i + 1} of {len(terms)}; "
                f"try a smaller learning rate (lr={config.lr}) or check the data for NaNs"
            )
        means[key] = float((values * w).sum() / n)
    return means


def fit(
    step: Step,
    train: Split | torch.Tensor,
    config: TrainConfig | None = None,
    callbacks: Iterable[Callback | Callable] = (),
    val: Split | torch.Tensor | None = None,
    progress: bool = True,
) -> list[dict]:
    """Train ``step`` for ``config.epochs`` passes over ``train`` in seeded, shuffled mini-batches.

    Args:
        step: a training step (see :mod:`dgmlab.step`), e.g. ``VAEStep(model, config)``.
        train: a :class:`~dgmlab.data.Split` (or a plain ``[N, D]`` tensor).
        config: the loop's settings (epochs, batch size, seed); by default the step's own config.
        callbacks: :class:`Callback` objects or functions ``f(epoch, step, history)``.
        val: held-out data for ``step.evaluate`` after each epoch (skipped if the step has no ``evaluate``).
        progress: show a tqdm progress bar over batches.

    Returns:
        The history: one dict per epoch with ``epoch``, ``seed``, ``n_train``, ``train_<term>`` for each term the
        step returns (means over the epoch's examples), ``val_<term>`` for each term of ``step.evaluate(val)``, and
        ``seconds`` (the epoch's wall time, validation included).

    Raises:
        NonFiniteLossError: a term became NaN or infinite (the message names the epoch and the batch).
    """
    config = config or step.config
    train = _as_split(train, "train")
    val = None if val is None else _as_split(val, "val")
    if len(train) == 0:
        raise ValueError("the training data are empty; pass a Split with at least one example")
    callbacks = [cb if isinstance(cb, Callback) else _FunctionCallback(cb) for cb in callbacks]
    batches = train.batches(config.batch_size, shuffle=True, device=step.device, seed=config.seed)
    evaluate = getattr(step, "evaluate", None) if val is not None else None
    history: list[dict] = []
    for cb in callbacks:
        cb.on_fit_start(step, history)
    bar = tqdm(total=config.epochs * len(batches), disable=not progress, desc=f"train {type(step).__name__}")
    for epoch in range(1, config.epochs + 1):
        for module in step.modules.values():
            module.train()
        start, terms, sizes = time.perf_counter(), [], []
        for x, y in batches:
            terms.append(step(x, y))  # 0-d tensors, left on the device until the epoch ends
            sizes.append(x.shape[0])
            bar.update(1)
        row = {"epoch": epoch, "seed": config.seed, "n_train": len(train)}
        row.update({f"train_{k}": v for k, v in _epoch_means(terms, sizes, epoch, config).items()})
        if evaluate is not None:
            row.update({f"val_{k}": float(v) for k, v in evaluate(val).items()})
        row["seconds"] = time.perf_counter() - start
        history.append(row)
        first = {prefix: next((k for k in row if k.startswith(prefix)), None) for prefix in ("train_", "val_")}
        bar.set_postfix(epoch=epoch, **{k: f"{row[k]:.4g}" for k in first.values() if k})
        for cb in callbacks:
            cb.on_epoch_end(epoch, step, history)
    bar.close()
    for module in step.modules.values():
        module.eval()
    for cb in callbacks:
        cb.on_fit_end(step, history)
    return history


class Snapshots(Callback):
    """Keep ``n`` samples of the step's model at chosen epochs (epoch 0 = before training), from the same noise
    each time (a CPU generator seeded with ``seed``), so the images show what training changed.

    Works with every step that has ``sample(n, generator)``. After training, ``images`` maps epoch -> [n, x_dim]
    on the CPU. Example: ``snaps = Snapshots.before_half_after(20)``; ``fit(step, train, callbacks=[snaps])``.
    """

    def __init__(self, epochs: Iterable[int], n: int = 25, seed: int = 0):
        self.epochs, self.n, self.seed = {int(e) for e in epochs}, n, seed
        self.images: dict[int, torch.Tensor] = {}

    @classmethod
    def before_half_after(cls, total_epochs: int, n: int = 25, seed: int = 0) -> Snapshots:
        """Snapshots before training, half way through, and after the last epoch."""
        return cls({0, total_epochs // 2, total_epochs}, n, seed)

    def _take(self, epoch: int, step) -> None:
        if epoch in self.epochs:
            self.images[epoch] = step.sample(self.n, generator=torch.Generator().manual_seed(self.seed)).cpu()

    def on_fit_start(self, step, history) -> None:
        self._take(0, step)

    def on_epoch_end(self, epoch, step, history) -> None:
        self._take(epoch, step)


# ----------------------------------------------------------------------------------------------------------------
# One-line wrappers, for the book
# ----------------------------------------------------------------------------------------------------------------


def train_vae(
    model: VAE,
    train: Split | torch.Tensor,
    val: Split | torch.Tensor | None = None,
    config: TrainConfig | None = None,
    callbacks: Iterable = (),
    progress: bool = True,
) -> list[dict]:
    """Train a VAE by maximising the one-sample ELBO with Adam: ``fit(VAEStep(model, config), train, ...)``.

    Returns:
        The history of :func:`fit`: ``train_elbo``, ``train_recon``, ``train_kl`` and, with ``val``, ``val_elbo``,
        ``val_recon``, ``val_kl`` (nats per example), per epoch.
    """
    step = VAEStep(model, config or VAETrainConfig())
    return fit(step, train, callbacks=callbacks, val=val, progress=progress)


def train_gan(
    G: Generator,
    D: Discriminator,
    train: Split | torch.Tensor,
    config: GANTrainConfig | None = None,
    callbacks: Iterable = (),
    val: Split | torch.Tensor | None = None,
    progress: bool = True,
) -> list[dict]:
    """Train a GAN, one discriminator step and one generator step per batch: ``fit(GANStep(G, D, config), ...)``.

    Returns:
        The history of :func:`fit`: ``train_d_loss``, ``train_g_loss``, ``train_d_real``, ``train_d_fake`` per epoch
        (and the same with ``val_`` in eval mode when ``val`` is given).
    """
    train = _as_split(train, "train")
    if train.x.shape[1] != G.config.x_dim:
        raise ValueError(f"the training images must have shape [N, {G.config.x_dim}], got {tuple(train.x.shape)}")
    return fit(GANStep(G, D, config or GANTrainConfig()), train, callbacks=callbacks, val=val, progress=progress)


def train_classifier(
    train: Split,
    config: TrainConfig | None = None,
    model_config: ClassifierConfig | None = None,
    val: Split | None = None,
    progress: bool = False,
) -> tuple[Classifier, list[dict]]:
    """Train the course's MNIST classifier on ``train`` (labelled images); the weights are initialised from
    ``config.seed`` without touching the caller's global RNG. Returns ``(model, history)``."""
    config = config or TrainConfig(epochs=15)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = Classifier(model_config or ClassifierConfig())
    history = fit(ClassifierStep(model, config), train, val=val, progress=progress)
    return model, history


def load_classifier(
    train: Split | None = None,
    test: Split | None = None,
    config: TrainConfig | None = None,
    model_config: ClassifierConfig | None = None,
    retrain: bool = False,
) -> Classifier:
    """The course's MNIST classifier: from the cache, or trained now (a few seconds on 2 CPU cores) and cached.

    Args:
        train, test: labelled training and test images (default: the embedded MNIST subset's train and test splits).
        config: training settings (default 15 epochs of Adam at lr 1e-3, seed 0).
        model_config: the architecture.
        retrain: ignore the cache.

    Returns:
        The model, in eval mode on the CPU; ``model.info`` holds its ``test_accuracy`` on ``test``.
    """
    from dgmlab.data import load_mnist

    train = train if train is not None else load_mnist("train", source="embedded", verbose=False)
    test = test if test is not None else load_mnist("test", source="embedded", verbose=False)
    config = config or TrainConfig(epochs=15, device="cpu")
    model_config = model_config or ClassifierConfig()
    # one file per data set and settings, so that two settings used in turn do not retrain each other's cache
    compared = {k: v for k, v in config_dict(config).items() if k not in IGNORED_TRAIN_FIELDS}
    settings = json.dumps([compared, config_dict(model_config)], sort_keys=True, default=str)
    key = hashlib.sha256(settings.encode()).hexdigest()[:8]
    path = cache_dir() / "checkpoints" / f"classifier-{train.name.replace('/', '-')}-{train.source}-{key}.pt"
    if retrain and path.is_file():
        path.unlink()
    state: dict = {}

    def build():
        with torch.random.fork_rng(devices=[]):  # the initialisation comes from the seed alone
            torch.manual_seed(config.seed)
            return Classifier(model_config)

    def fit_classifier(model):
        start = time.perf_counter()
        history = fit(ClassifierStep(model, config), train, progress=False)
        state["seconds"] = time.perf_counter() - start
        return history

    def timing(model):
        return {"seconds": state["seconds"]}

    checkpoint = load_or_train(path, build, fit_classifier, config, train, timing, device="cpu", verbose=False)
    model = checkpoint.model
    model.info = {**checkpoint.extra, "test_accuracy": accuracy(model, test.x, test.y), "n_test": len(test)}
    return model
