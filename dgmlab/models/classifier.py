"""A small MNIST classifier that the course provides: it tells which digit a generated sample shows, and its hidden
layer is the feature space of :mod:`dgmlab.metrics`.

The model and its training step live here; :func:`dgmlab.train.load_classifier` trains it for a few seconds on the
data it is given (by default the embedded MNIST subset) and caches it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dgmlab.models.mlp import mlp
from dgmlab.step import TrainConfig, adam, compiled
from dgmlab.utils import eval_mode, get_device, module_device

__all__ = ["ClassifierConfig", "Classifier", "ClassifierStep", "accuracy"]


@dataclass
class ClassifierConfig:
    """Architecture of :class:`Classifier`.

    Args:
        x_dim: flattened image size.
        hidden: hidden layer width.
        n_classes: number of digits.
    """

    x_dim: int = 784
    hidden: int = 256
    n_classes: int = 10


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

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The hidden layer's activations (after the ReLU), float32 [B, hidden] on the CPU, in eval mode: the
        feature space of :mod:`dgmlab.metrics` (the course's stand-in for Inception features)."""
        with eval_mode(self):
            return self.net[:-1](x.to(module_device(self))).cpu()  # all layers but the output layer

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Most likely digit per image, int64 [B] on the CPU (eval mode; the train/eval mode is restored)."""
        with eval_mode(self):
            return self(x.to(module_device(self))).argmax(-1).cpu()

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax class probabilities [B, n_classes] on the CPU (eval mode; the train/eval mode is restored)."""
        with eval_mode(self):
            return F.softmax(self(x.to(module_device(self))), dim=-1).cpu()


@torch.no_grad()
def accuracy(model: Classifier, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of images ``x`` [N, 784] whose predicted digit equals ``y`` [N]."""
    return (model.predict(x) == y).float().mean().item()


class ClassifierStep:
    """One Adam step on the cross-entropy of a labelled batch; returns ``loss`` and ``accuracy`` (batch means),
    and ``evaluate(split)`` the same on held-out data."""

    def __init__(self, model: Classifier, config: TrainConfig | None = None):
        self.config = config or TrainConfig(epochs=15)
        self.device = get_device(self.config.device)
        self.model = model.to(self.device)
        self.modules = {"model": self.model}
        self.optimizer = adam(self.model.parameters(), self.config)
        self._model = compiled(self.model, self.config)

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if y is None:
            raise ValueError("the classifier needs labels: train it on a Split with y")
        logits = self._model(x)
        loss = F.cross_entropy(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.detach(), "accuracy": (logits.detach().argmax(-1) == y).float().mean()}

    def evaluate(self, split) -> dict[str, float]:
        with eval_mode(self.model):
            logits = self.model(split.x.to(self.device))
            y = split.y.to(self.device)
            accuracy = (logits.argmax(-1) == y).float().mean()
            return {"loss": float(F.cross_entropy(logits, y)), "accuracy": float(accuracy)}

