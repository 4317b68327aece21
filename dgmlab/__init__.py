"""dgmlab: the library behind the deep generative models course.

One module per idea: ``data`` (MNIST, embedded or full), ``distributions`` (hand-written log-densities),
``models`` (one model family per module), ``train`` (plain training loops and checkpoints), ``evaluate``
(likelihood estimates), ``plot`` (figures), ``cli`` (the ``dgmlab`` command).
"""

from dgmlab.utils import fast_mode, get_device, seed_everything

__version__ = "0.1.0"
__all__ = ["fast_mode", "get_device", "seed_everything", "__version__"]
