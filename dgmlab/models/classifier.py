"""A small MNIST classifier that the course provides (e.g. to tell which digit a GAN sample shows).

:func:`load_classifier` trains it for a few seconds on the embedded MNIST subset the first time, then caches the
weights under ``dgmlab.utils.cache_dir()`` (a :func:`dgmlab.train.save_checkpoint` file).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dgmlab.models.mlp import mlp
from dgmlab.train import CheckpointError, load_checkpoint, save_checkpoint
from dgmlab.utils import cache_dir

__all__ = ["ClassifierConfig", "Classifier", "train_classifier", "load_classifier", "accuracy"]


@dataclass
class ClassifierConfig:
    """Architecture and training of :class:`Classifier`.

    Args:
        x_dim: flattened image size.
        hidden: hidden layer width.
        n_classes: number of digits.
        epochs: passes over the 4,000 training images.
        lr: Adam learning rate.
        seed: seeds the initialisation and the batch order (no global RNG is touched).
    """

    x_dim: int = 784
    hidden: int = 256
    n_classes: int = 10
    epochs: int = 15
    lr: float = 1e-3
    seed: int = 0


class Classifier(nn.Module):
    """MLP: image ``x`` [B, 784] in [0, 1] -> class logits [B, 10]."""

    config_class = ClassifierConfig

    def __init__(self, config: ClassifierConfig | None = None):
        super().__init__()
        self.config = config or ClassifierConfig()
        c = self.config
        self.net = mlp((c.x_dim, c.hidden, c.n_classes), nn.ReLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # [B, n_classes]

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The hidden layer's activations (after the ReLU), float32 [B, hidden] on the CPU, in eval mode: the
        feature space of :mod:`dgmlab.metrics` (the course's stand-in for Inception features)."""
        was = self.training
        self.eval()
        device = next(self.parameters()).device
        h = self.net[:-1](x.to(device)).cpu()  # all layers but the output layer
        self.train(was)
        return h

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Most likely digit per image, int64 [B] (eval mode, on the model's device)."""
        was = self.training
        self.eval()
        device = next(self.parameters()).device
        y = self(x.to(device)).argmax(-1).cpu()
        self.train(was)
        return y

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax class probabilities [B, n_classes] (eval mode)."""
        was = self.training
        self.eval()
        device = next(self.parameters()).device
        p = F.softmax(self(x.to(device)), dim=-1).cpu()
        self.train(was)
        return p


@torch.no_grad()
def accuracy(model: Classifier, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of images ``x`` [N, 784] whose predicted digit equals ``y`` [N]."""
    return (model.predict(x) == y).float().mean().item()


def train_classifier(config: ClassifierConfig | None = None, progress: bool = False) -> tuple[Classifier, dict]:
    """Train on the embedded MNIST training split; returns the model and ``{"test_accuracy", "seconds", ...}``."""
    from tqdm.auto import tqdm

    from dgmlab.data import load_mnist

    config = config or ClassifierConfig()
    train = load_mnist("train", source="embedded", verbose=False)
    test = load_mnist("test", source="embedded", verbose=False)
    gen = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):  # initialisation from the seed, without touching the caller's RNG
        torch.manual_seed(config.seed)
        model = Classifier(config)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    start = time.perf_counter()
    model.train()
    for _ in tqdm(range(config.epochs), desc="classifier", unit="epoch", disable=not progress):
        perm = torch.randperm(len(train.x), generator=gen)
        for i in range(0, len(perm), 128):
            idx = perm[i : i + 128]
            loss = F.cross_entropy(model(train.x[idx]), train.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    info = {
        "test_accuracy": accuracy(model, test.x, test.y),
        "seconds": time.perf_counter() - start,
        "n_train": len(train.x),
        "n_test": len(test.x),
    }
    return model, info


def _cache_path(config: ClassifierConfig):
    key = "-".join(f"{v}" for v in asdict(config).values())
    return cache_dir() / f"classifier-mnist-embedded-{key}.pt"


def load_classifier(config: ClassifierConfig | None = None, retrain: bool = False) -> Classifier:
    """The course's MNIST classifier: from the cache, or trained now (a few seconds on 2 CPU cores) and cached.

    The cache file is a :func:`dgmlab.train.save_checkpoint` checkpoint (written atomically, read back with
    ``weights_only=True``). The returned model is in eval mode on the CPU; ``model.info`` holds its
    ``test_accuracy`` on the 500 embedded test images.

    Args:
        config: architecture and training settings (each config has its own cache file).
        retrain: ignore the cache.
    """
    config = config or ClassifierConfig()
    path = _cache_path(config)
    if path.is_file() and not retrain:
        try:
            model, _, info = load_checkpoint(path, "cpu")
            if isinstance(model, Classifier) and model.config == config:
                model.info = info
                return model
        except CheckpointError:
            pass  # a damaged or outdated cache file is replaced below
    model, info = train_classifier(config)
    model.info = info
    try:
        save_checkpoint(path, model, extra=info)
    except OSError:
        pass  # a read-only cache only costs the retraining next time
    return model.eval()
