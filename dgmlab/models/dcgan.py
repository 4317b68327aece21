"""A deep convolutional GAN (DCGAN, Radford et al. 2016) for 28 x 28 images such as MNIST.

Read top to bottom: the config, the generator ``G`` (noise -> a 7 x 7 map -> two transposed convolutions that double
the size -> an image), the discriminator ``D`` (two strided convolutions that halve it -> a logit), and the weight
initialisation of the paper. The losses, the steps and :class:`~dgmlab.models.gan.GANStep` are those of
:mod:`dgmlab.models.gan`, unchanged: both networks speak the same flat layout as the MLP GAN (a batch of images is
``x`` [B, x_dim], x_dim = 784, the layout of :meth:`dgmlab.data.Split.batches`) and reshape to
[B, channels, size, size] inside.

The paper's architecture guidelines, as followed here: strided convolutions instead of pooling (in ``D``) and
fractionally strided (transposed) convolutions instead of upsampling (in ``G``); batch normalisation in both networks
except ``G``'s output layer and ``D``'s input layer; ReLU in ``G`` (its output layer a squashing function: a sigmoid
here, for pixels in (0, 1)) and LeakyReLU of slope 0.2 in ``D``; weights drawn from N(0, 0.02^2). ``D`` may drop its
batch normalisation (``d_batch_norm=False``): a WGAN-GP critic must (:mod:`dgmlab.models.wgan`), because the
gradient penalty is taken per example and batch norm makes each output depend on the whole batch.

Shapes with the defaults (``g_features = 32``, ``d_features = 16``): ``G``: z [B, 64] -> [B, 64, 7, 7] ->
[B, 32, 14, 14] -> [B, 1, 28, 28] -> x [B, 784]; ``D``: x [B, 784] -> [B, 1, 28, 28] -> [B, 16, 14, 14] ->
[B, 32, 7, 7] -> logit [B]. The networks are far smaller than the paper's (128 to 1024 channels), so that an epoch
on the embedded 4,000 training images takes seconds on two CPU cores; ``G`` gets the larger share, because at
this budget (a few hundred steps) a weak generator is the bottleneck: with batch norm, ``D`` learns to reject the
fakes within the first epoch either way. An epoch costs about two and a half times the MLP GAN's
(:mod:`dgmlab.models.gan`, default sizes) on a CPU.

References:
    Radford, Metz and Chintala, "Unsupervised Representation Learning with Deep Convolutional Generative
    Adversarial Networks", ICLR 2016, https://arxiv.org/abs/1511.06434
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from dgmlab.models.gan import SamplesFromNoise

__all__ = ["DCGANConfig", "DCGenerator", "DCDiscriminator", "dcgan_init_"]

INITS = ("dcgan", "he")


@dataclass
class DCGANConfig:
    """Sizes of the convolutional generator and discriminator.

    Args:
        z_dim: noise dimension.
        channels: image channels (1 for MNIST).
        image_size: image height = width; a multiple of 4 (two stride-2 layers: 28 -> 14 -> 7).
        g_features: channels of ``G``'s last hidden maps (size/2); the first hidden maps (size/4) have twice as many.
        d_features: channels of ``D``'s first maps (size/2); its second maps (size/4) have twice as many.
        negative_slope: slope of ``D``'s LeakyReLU (0.2 as in the paper).
        d_batch_norm: batch normalisation in ``D``'s second layer; set it to False for a WGAN-GP critic.
        d_init: ``D``'s initial weights: ``"dcgan"``, N(0, 0.02^2) as in the paper; or ``"he"``, He et al.
            (2015)'s normal initialisation for leaky ReLUs. Use ``"he"`` for a WGAN-GP critic: so initialised it
            starts with gradient norms near 1 on MNIST digits, where the penalty wants them, instead of near 0.01,
            which a few hundred steps of Adam at lr 1e-4 do not repair. (``G`` always starts from the paper's
            initialisation: He's would saturate its sigmoid into salt-and-pepper noise.)
    """

    z_dim: int = 64
    channels: int = 1
    image_size: int = 28
    g_features: int = 32
    d_features: int = 16
    negative_slope: float = 0.2
    d_batch_norm: bool = True
    d_init: str = "dcgan"

    def __post_init__(self) -> None:
        if self.d_init not in INITS:
            raise ValueError(f"DCGANConfig.d_init must be one of {INITS}, got {self.d_init!r}")
        sizes = (self.z_dim, self.channels, self.image_size, self.g_features, self.d_features)
        if any(int(s) <= 0 for s in sizes):
            raise ValueError(f"DCGANConfig sizes must be positive, got {self}")
        if self.image_size % 4:
            raise ValueError(
                f"DCGANConfig.image_size must be a multiple of 4 (two stride-2 layers), got {self.image_size}"
            )

    @property
    def x_dim(self) -> int:
        """Values per flattened image: ``channels * image_size ** 2`` (784 for MNIST)."""
        return self.channels * self.image_size**2

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """One image as (channels, height, width)."""
        return (self.channels, self.image_size, self.image_size)


def dcgan_init_(module: nn.Module, init: str = "dcgan", negative_slope: float = 0.0) -> nn.Module:
    """Initialise ``module`` in place: convolution and linear weights from N(0, 0.02^2) (``init="dcgan"``, the
    paper's) or from He et al.'s N(0, 2 / ((1 + a^2) fan_in)) for a leaky ReLU of slope ``a = negative_slope``
    (``init="he"``); batch-norm scales from N(1, 0.02^2); biases 0. Drawn from PyTorch's global generator, like
    any default initialisation."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            if init == "he":
                nn.init.kaiming_normal_(m.weight, a=negative_slope, nonlinearity="leaky_relu")
            else:
                nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return module


class DCGenerator(SamplesFromNoise, nn.Module):
    """``G``: noise ``z`` [B, z_dim] -> image ``x`` [B, x_dim] with pixels in (0, 1), by transposed convolutions.

    ``sample(n, generator)`` and ``generate(z)`` follow the sampling rule of every dgmlab generator
    (:class:`~dgmlab.models.gan.SamplesFromNoise`).
    """

    config_class = DCGANConfig

    def __init__(self, config: DCGANConfig | None = None):
        super().__init__()
        self.config = config or DCGANConfig()
        c = self.config
        s, f = c.image_size // 4, c.g_features
        self.net = nn.Sequential(
            # project and reshape: z [B, z_dim] -> [B, 2F, s, s] (no bias: batch norm removes it)
            nn.Linear(c.z_dim, 2 * f * s * s, bias=False),
            nn.Unflatten(1, (2 * f, s, s)),
            nn.BatchNorm2d(2 * f),
            nn.ReLU(),
            # [B, 2F, s, s] -> [B, F, 2s, 2s]: kernel 4, stride 2, padding 1 doubles the size exactly
            nn.ConvTranspose2d(2 * f, f, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(f),
            nn.ReLU(),
            # [B, F, 2s, 2s] -> [B, channels, 4s, 4s]: the output layer, without batch norm
            nn.ConvTranspose2d(f, c.channels, 4, stride=2, padding=1),
            nn.Sigmoid(),
            nn.Flatten(),  # [B, channels, size, size] -> [B, x_dim], the layout of the data batches
        )
        dcgan_init_(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)  # [B, x_dim]


class DCDiscriminator(nn.Module):
    """``D``: image ``x`` [B, x_dim] or [B, channels, size, size] -> logit [B] that ``x`` came from the data.

    Used without a sigmoid, the logit is a WGAN critic ``f(x)`` (with ``d_batch_norm=False``).
    """

    config_class = DCGANConfig

    def __init__(self, config: DCGANConfig | None = None):
        super().__init__()
        self.config = config or DCGANConfig()
        c = self.config
        s, f = c.image_size // 4, c.d_features
        bn = c.d_batch_norm
        self.net = nn.Sequential(
            # [B, channels, 4s, 4s] -> [B, F, 2s, 2s]: the input layer, without batch norm
            nn.Conv2d(c.channels, f, 4, stride=2, padding=1),
            nn.LeakyReLU(c.negative_slope),
            # [B, F, 2s, 2s] -> [B, 2F, s, s]
            nn.Conv2d(f, 2 * f, 4, stride=2, padding=1, bias=not bn),
            nn.BatchNorm2d(2 * f) if bn else nn.Identity(),
            nn.LeakyReLU(c.negative_slope),
            nn.Flatten(),  # [B, 2F, s, s] -> [B, 2F s^2]
            nn.Linear(2 * f * s * s, 1),
        )
        dcgan_init_(self, c.d_init, c.negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        if x.dim() < 2 or math.prod(x.shape[1:]) != c.x_dim:
            raise ValueError(
                f"DCDiscriminator expects images [B, {c.x_dim}] or [B, {', '.join(map(str, c.image_shape))}], "
                f"got shape {tuple(x.shape)}"
            )
        return self.net(x.reshape(-1, *c.image_shape)).squeeze(-1)  # [B, x_dim] -> [B, C, H, W] -> [B, 1] -> [B]
