"""Sample-quality metrics for every generative model of the course, on features of dgmlab's MNIST classifier.

Read top to bottom: the feature map, the Frechet distance, the k-nearest-neighbour metrics (precision/recall,
density/coverage), the class histogram of samples (classes covered, KL to uniform), the distance of mean images,
and :func:`sample_metrics`, which computes all of them in one call for the book's comparison tables.

The feature space is the hidden layer of :class:`dgmlab.models.classifier.Classifier` (784-256-10), our stand-in
for the Inception network of the papers. This module never loads data or trains anything: pass it a trained
classifier (or features you computed) and the images to compare.

Notation: ``real`` are the data, ``fake`` the model's samples; ``N`` real and ``M`` fake feature vectors of
dimension ``D``; ``k`` the number of nearest neighbours; ``p_hat`` a class histogram.

References:
    Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium",
    NeurIPS 2017, https://arxiv.org/abs/1706.08500
    Kynkaanniemi et al., "Improved Precision and Recall Metric for Assessing Generative Models", NeurIPS 2019,
    https://arxiv.org/abs/1904.06991
    Naeem et al., "Reliable Fidelity and Diversity Metrics for Generative Models", ICML 2020,
    https://arxiv.org/abs/2002.09797
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Protocol

import numpy as np
import scipy.linalg
import torch

__all__ = [
    "classifier_features",
    "frechet_distance",
    "precision_recall",
    "density_coverage",
    "class_histogram",
    "classes_covered",
    "kl_to_uniform",
    "mean_image_distance",
    "sample_metrics",
]

# Rows of the distance matrix computed at once by the k-NN metrics: 2048 x 10,000 float64 is 160 MB.
_CHUNK = 2048


class Sampler(Protocol):
    """Any generative model of the course: ``sample(n, generator)`` returns ``n`` images ``[n, ...]``."""

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor: ...


# --- features -------------------------------------------------------------------------------------------------


def _flat_images(x: torch.Tensor, name: str) -> torch.Tensor:
    """``[N, 784]`` or ``[N, 1, 28, 28]`` (any ``[N, ...]``) -> ``[N, prod(...)]``."""
    x = torch.as_tensor(x)
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(
            f"{name} must be a batch of images [N, 784] or [N, 1, 28, 28] with N > 0, got shape {tuple(x.shape)}"
        )
    return x.reshape(len(x), -1)  # [N, D]


def _batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int) -> torch.Tensor:
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    return torch.cat([fn(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def _classifier_input(classifier: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = _flat_images(x, "x")
    x_dim = getattr(getattr(classifier, "config", None), "x_dim", None)
    if x_dim is not None and x.shape[1] != x_dim:
        raise ValueError(
            f"the classifier takes images of {x_dim} pixels, got images of {x.shape[1]} "
            f"(x has shape {tuple(x.shape)}); pass MNIST-sized images in [0, 1]"
        )
    return x.float()


def classifier_features(classifier: torch.nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Hidden-layer activations of the course's MNIST classifier, computed in batches.

    Each batch goes through ``classifier.features`` (eval mode; the classifier's train/eval mode is restored).

    Args:
        classifier: a trained :class:`dgmlab.models.classifier.Classifier` (anything with ``features(x)``).
        x: images ``[N, 784]`` or ``[N, 1, 28, 28]`` with pixels in [0, 1], on any device.
        batch_size: images per forward pass (bounds the memory, not the result).

    Returns:
        float32 ``[N, H]`` on the CPU (``H = classifier.config.hidden``, 256 by default).
    """
    x = _classifier_input(classifier, x)
    return _batched(classifier.features, x, batch_size).float().cpu()


# --- the Frechet distance -------------------------------------------------------------------------------------


def _as_features(feat, name: str, min_rows: int = 1) -> np.ndarray:
    """Features ``[N, D]`` (tensor or array) -> float64 numpy ``[N, D]``, with the checks every metric needs."""
    if isinstance(feat, torch.Tensor):
        feat = feat.detach().cpu().double().numpy()
    feat = np.asarray(feat, dtype=np.float64)
    if feat.ndim != 2:
        raise ValueError(
            f"{name} must be a matrix of feature vectors [N, D], got shape {feat.shape}; "
            "use classifier_features(classifier, x) to get them from images"
        )
    if len(feat) < min_rows:
        raise ValueError(f"{name} holds {len(feat)} feature vectors, this needs at least {min_rows}")
    if not np.isfinite(feat).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return feat


def _same_dim(a: np.ndarray, b: np.ndarray, names: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{names} have different feature dimensions ({a.shape[1]} and {b.shape[1]}); "
            "compute both with the same classifier"
        )


def _sqrtm_psd_product(sigma_a: np.ndarray, sigma_b: np.ndarray) -> np.ndarray | None:
    """``(S_a S_b)^{1/2}``, real part, or None when ``sqrtm`` fails (not finite or truly complex)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)  # singular product: we check the result
        covmean = scipy.linalg.sqrtm(sigma_a @ sigma_b)
    if not np.isfinite(covmean).all():
        return None
    if np.iscomplexobj(covmean):
        # S_a S_b is similar to the PSD matrix S_a^{1/2} S_b S_a^{1/2}: its square root is real, and an imaginary
        # part is rounding noise, unless it is large compared with the real part.
        if np.abs(covmean.imag).max() > 1e-3 * max(1.0, np.abs(covmean.real).max()):
            return None
        covmean = covmean.real
    return covmean


def frechet_distance(feat_a, feat_b, eps: float = 1e-6) -> float:
    """Frechet distance between Gaussians fitted to two sets of features (the "FID" of Heusel et al., 2017).

    ``FD = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})``, with the sample means ``mu`` and the unbiased
    sample covariances ``S`` (``N - 1`` in the denominator), in float64, ``(S_a S_b)^{1/2}`` by
    ``scipy.linalg.sqrtm``. A tiny imaginary part from ``sqrtm`` is dropped. If ``sqrtm`` fails (near-singular
    covariances, e.g. fewer samples than feature dimensions) it is retried with ``eps`` times the mean variance
    added to both diagonals.

    On features of dgmlab's MNIST classifier (:func:`classifier_features`) the number is comparable **within this
    course only**: between models evaluated with the same classifier and the same number of samples. It is NOT the
    Inception FID of the papers and cannot be compared with their numbers. Like FID it is biased upwards when
    ``N`` is small (the bias grows like ``D / N``): compare models with equal sample sizes. Rounding can make the
    distance of a set to itself a tiny negative number (of order -1e-12).

    Args:
        feat_a: features ``[N_a, D]`` (tensor or array), ``N_a >= 2``.
        feat_b: features ``[N_b, D]``, ``N_b >= 2``.
        eps: relative diagonal offset of the retry.

    Returns:
        The distance, a float (units of squared feature values).

    References:
        Heusel et al., NeurIPS 2017, https://arxiv.org/abs/1706.08500 (their eq. 6 is the formula above);
        Dowson & Landau, "The Frechet distance between multivariate normal distributions", 1982.
    """
    a = _as_features(feat_a, "feat_a", min_rows=2)
    b = _as_features(feat_b, "feat_b", min_rows=2)
    _same_dim(a, b, "feat_a and feat_b")
    mu_a, mu_b = a.mean(0), b.mean(0)  # [D]
    sigma_a = np.atleast_2d(np.cov(a, rowvar=False))  # [D, D]
    sigma_b = np.atleast_2d(np.cov(b, rowvar=False))
    covmean = _sqrtm_psd_product(sigma_a, sigma_b)
    if covmean is None:
        scale = max((np.trace(sigma_a) + np.trace(sigma_b)) / (2 * len(mu_a)), np.finfo(np.float64).tiny)
        offset = eps * scale * np.eye(len(mu_a))
        covmean = _sqrtm_psd_product(sigma_a + offset, sigma_b + offset)
        if covmean is None:
            raise ValueError(
                "scipy.linalg.sqrtm failed on the covariances even with a diagonal offset "
                f"(eps={eps:g}): pass more samples than feature dimensions ({len(mu_a)}) or a larger eps"
            )
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2 * np.trace(covmean))


# --- k-nearest-neighbour metrics --------------------------------------------------------------------------------


def _check_k(k: int, n: int, which: str) -> None:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k >= n:
        raise ValueError(
            f"k={k} needs more than k {which} feature vectors, got {n}: pass more samples or a smaller k (k < {n})"
        )


def _knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each row of ``x`` [N, D] to its k-th nearest other row, exact, in chunks. Returns [N]."""
    # the (k+1)-th smallest distance in a row, because the smallest is the point itself
    return torch.cat(
        [torch.cdist(x[i : i + _CHUNK], x).kthvalue(k + 1, dim=1).values for i in range(0, len(x), _CHUNK)]
    )


def _prdc(real_feat, fake_feat, k: int, need_fake_radii: bool = True) -> dict[str, float]:
    """Precision, recall, density, coverage from one pass over the fake x real distance matrix (in chunks)."""
    real = torch.from_numpy(_as_features(real_feat, "real_feat"))  # [N, D] float64: exact ties at 0 stay 0
    fake = torch.from_numpy(_as_features(fake_feat, "fake_feat"))  # [M, D]
    _same_dim(real.numpy(), fake.numpy(), "real_feat and fake_feat")
    _check_k(k, len(real), "real")
    if need_fake_radii:
        _check_k(k, len(fake), "fake")
    r_real = _knn_radii(real, k)  # [N]: the radius of the ball around each real point
    r_fake = _knn_radii(fake, k) if need_fake_radii else None  # [M]
    n_balls = torch.zeros(len(fake), dtype=torch.long)  # [M]: real balls that hold each fake point
    real_in_fake = torch.zeros(len(real), dtype=torch.bool)  # [N]: real point inside some fake ball
    nearest_fake = torch.full((len(real),), math.inf, dtype=torch.float64)  # [N]
    for j in range(0, len(fake), _CHUNK):
        d = torch.cdist(fake[j : j + _CHUNK], real)  # [m, N]: d[j, i] = ||fake_j - real_i||
        n_balls[j : j + _CHUNK] = (d <= r_real).sum(1)
        nearest_fake = torch.minimum(nearest_fake, d.min(0).values)
        if r_fake is not None:
            real_in_fake |= (d <= r_fake[j : j + _CHUNK, None]).any(0)
    return {
        "precision": (n_balls > 0).double().mean().item(),
        "recall": real_in_fake.double().mean().item() if r_fake is not None else math.nan,
        "density": n_balls.double().mean().item() / k,
        "coverage": (nearest_fake <= r_real).double().mean().item(),
    }


def precision_recall(real_feat, fake_feat, k: int = 5) -> dict[str, float]:
    """Improved precision and recall (Kynkaanniemi et al., 2019): k-nearest-neighbour balls as manifolds.

    Each set's manifold is the union of closed balls around its points, of radius the distance to the point's
    k-th nearest neighbour in its own set. ``precision`` is the share of fake points inside the real manifold
    (fidelity), ``recall`` the share of real points inside the fake manifold (diversity). Distances are exact
    Euclidean (``torch.cdist`` in float64, in chunks). The balls are closed (``<=``, as in the paper); NAVER's
    ``prdc`` package uses open balls, which differs only on ties: duplicated points or memorised copies.

    Args:
        real_feat: real features ``[N, D]`` (tensor or array).
        fake_feat: fake features ``[M, D]``.
        k: neighbours for the radii (the paper uses 3; 5 matches :func:`density_coverage`); ``k < N`` and ``k < M``.

    Returns:
        ``{"precision": float, "recall": float}``, each in [0, 1].

    References:
        Kynkaanniemi et al., NeurIPS 2019, https://arxiv.org/abs/1904.06991 (eqs. 1-3)
    """
    out = _prdc(real_feat, fake_feat, k)
    return {"precision": out["precision"], "recall": out["recall"]}


def density_coverage(real_feat, fake_feat, k: int = 5) -> dict[str, float]:
    """Density and coverage (Naeem et al., 2020): k-NN balls around the real points only.

    With ``B_i`` the closed ball around real point ``i`` of radius its k-th nearest-neighbour distance among the
    reals: ``density = 1/(k M) sum_j sum_i 1[fake_j in B_i]`` (about 1 when fakes are distributed like the reals,
    above 1 when they crowd dense regions; not bounded by 1), and ``coverage = 1/N sum_i 1[some fake_j in B_i]``
    (the share of real points whose ball holds a sample; robust to outlying fakes). Closed balls, as in
    :func:`precision_recall`: exact copies of the reals give ``density = (k + 1) / k`` (the ``prdc`` package's
    open balls give 1), and duplicated points still count as inside each other's balls.

    Args:
        real_feat: real features ``[N, D]`` (tensor or array).
        fake_feat: fake features ``[M, D]``.
        k: neighbours for the radii (the paper's default is 5); ``k < N``.

    Returns:
        ``{"density": float, "coverage": float}``.

    References:
        Naeem et al., ICML 2020, https://arxiv.org/abs/2002.09797 (section 3)
    """
    out = _prdc(real_feat, fake_feat, k, need_fake_radii=False)
    return {"density": out["density"], "coverage": out["coverage"]}


# --- classes of the samples -------------------------------------------------------------------------------------


def class_histogram(y: torch.Tensor, n_classes: int = 10) -> torch.Tensor:
    """Share of samples per class: ``p_hat[c] = #{j : y_j = c} / M``.

    Args:
        y: class labels int ``[M]`` in ``0..n_classes-1`` (e.g. ``classifier.predict(samples)``), or class
            probabilities float ``[M, n_classes]`` (e.g. ``classifier.probabilities(samples)``), each sample then
            counted for its most likely class.
        n_classes: number of classes (10 digits).

    Returns:
        ``p_hat``, float64 ``[n_classes]``, summing to 1.
    """
    y = torch.as_tensor(y).detach().cpu()
    if y.ndim == 2:
        if y.shape[1] != n_classes:
            raise ValueError(f"class probabilities must have n_classes={n_classes} columns, got shape {tuple(y.shape)}")
        y = y.argmax(1)
    elif y.ndim != 1 or y.is_floating_point() and not torch.equal(y, y.round()):
        raise ValueError(
            f"y must hold integer labels [M] or probabilities [M, {n_classes}], got shape "
            f"{tuple(y.shape)} and dtype {y.dtype}"
        )
    if len(y) == 0:
        raise ValueError("y holds no samples")
    y = y.long()
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(
            f"labels must lie in 0..{n_classes - 1}, got values from {y.min().item()} to "
            f"{y.max().item()}; pass n_classes"
        )
    return torch.bincount(y, minlength=n_classes).double() / len(y)


def _as_histogram(p_hat) -> torch.Tensor:
    p = torch.as_tensor(p_hat).detach().cpu().double()
    if p.ndim != 1 or len(p) == 0 or not torch.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
        raise ValueError(
            "expected a class histogram: a non-negative vector [n_classes] with a positive sum "
            "(shares or counts, e.g. from class_histogram)"
        )
    return p / p.sum()


def classes_covered(p_hat, min_share: float | None = None) -> int:
    """Number of classes the samples cover ("modes" in the GAN literature's mode counting).

    Rule: class ``c`` is covered when it holds at least ``min_share`` of the samples and at least one sample.
    The default ``min_share = 1 / (10 n_classes)`` (1% for digits, a tenth of a class's share under the uniform
    histogram) keeps a few stray classifier errors from counting as a mode; ``min_share=0`` counts every class
    with one sample (the rule of Srivastava et al., 2017, on stacked MNIST).

    Args:
        p_hat: class histogram ``[n_classes]``, shares or counts (normalised here), e.g. from
            :func:`class_histogram`.
        min_share: the threshold on the share, in [0, 1].

    Returns:
        An int in ``0..n_classes``.
    """
    p = _as_histogram(p_hat)
    if min_share is None:
        min_share = 1 / (10 * len(p))
    if not 0 <= min_share <= 1:
        raise ValueError(f"min_share must lie in [0, 1], got {min_share}")
    return int(((p > 0) & (p >= min_share)).sum())


def kl_to_uniform(p_hat) -> float:
    """``KL(p_hat || uniform) = sum_c p_c log(C p_c)`` in nats, with the convention ``0 log 0 = 0``.

    0 for a uniform histogram, ``log C`` (``log 10`` for digits) when all samples fall in one class.

    Args:
        p_hat: class histogram ``[C]``, shares or counts (normalised here), e.g. from :func:`class_histogram`.

    Returns:
        A float in ``[0, log C]``.
    """
    p = _as_histogram(p_hat)
    n_classes = len(p)
    p = p[p > 0]  # empty classes add 0 log 0 = 0
    return float((p * torch.log(p * n_classes)).sum().clamp(min=0.0))  # clamp: rounding below 0 when uniform


# --- mean images ----------------------------------------------------------------------------------------------


def mean_image_distance(
    fake: torch.Tensor | Sampler, x_real: torch.Tensor, n: int | None = None, seed: int = 0
) -> float:
    """L2 distance between the mean fake image and the mean real image: ``||mean_j x_fake_j - mean_i x_i||_2``.

    A crude check that a model's samples have the data's average brightness and layout (used by lab 2's grader),
    computed in the images' dtype.

    Args:
        fake: sample images ``[M, 784]`` or ``[M, 1, 28, 28]``, or a model with ``sample(n, generator)``, then
            ``n`` samples are drawn with the noise of ``torch.Generator().manual_seed(seed)`` (the caller's RNG is
            untouched).
        x_real: real images ``[N, 784]`` or ``[N, 1, 28, 28]``.
        n: samples to draw from a model (default 1000); only with a model.
        seed: seed of the model's noise.

    Returns:
        The distance, a float.
    """
    if isinstance(fake, torch.Tensor):
        if n is not None:
            raise ValueError(
                "n is the number of samples to draw from a model; fake is already a tensor of "
                "images, pass fake[:n] instead"
            )
        x_fake = fake
    elif callable(getattr(fake, "sample", None)):
        x_fake = fake.sample(1000 if n is None else n, generator=torch.Generator().manual_seed(seed))
    else:
        raise TypeError(f"fake must be sample images or a model with sample(n, generator), got {type(fake).__name__}")
    x_fake = _flat_images(x_fake, "the fake images").detach().cpu()
    x_real = _flat_images(x_real, "x_real").detach().cpu()
    if x_fake.shape[1] != x_real.shape[1]:
        raise ValueError(f"fake and real images differ in size ({x_fake.shape[1]} and {x_real.shape[1]} pixels)")
    return (x_fake.mean(0) - x_real.mean(0)).norm().item()


# --- everything at once ---------------------------------------------------------------------------------------


@torch.no_grad()
def sample_metrics(
    classifier: torch.nn.Module, real_x: torch.Tensor, fake_x: torch.Tensor, k: int = 5, batch_size: int = 500
) -> dict[str, float]:
    """All the metrics of this module for one model, as one row of the book's comparison tables.

    Args:
        classifier: a trained :class:`dgmlab.models.classifier.Classifier`.
        real_x: real images ``[N, 784]`` or ``[N, 1, 28, 28]`` (e.g. the test split).
        fake_x: the model's samples, same shape convention; use the same ``M`` for every model compared.
        k: neighbours of the k-NN metrics.
        batch_size: images per forward pass of the classifier.

    Returns:
        ``{"fd", "precision", "recall", "density", "coverage", "classes_covered", "kl_to_uniform",
        "mean_image_distance"}``, floats (``classes_covered`` an int); class statistics are those of the samples
        as labelled by the classifier.
    """
    real_feat = classifier_features(classifier, real_x, batch_size)
    fake_feat = classifier_features(classifier, fake_x, batch_size)
    y_fake = _batched(classifier.predict, _classifier_input(classifier, fake_x), batch_size)
    n_classes = getattr(getattr(classifier, "config", None), "n_classes", 10)
    p_hat = class_histogram(y_fake, n_classes)
    return {
        "fd": frechet_distance(real_feat, fake_feat),
        **_prdc(real_feat, fake_feat, k),
        "classes_covered": classes_covered(p_hat),
        "kl_to_uniform": kl_to_uniform(p_hat),
        "mean_image_distance": mean_image_distance(torch.as_tensor(fake_x), real_x),
    }
