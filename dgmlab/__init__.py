"""dgmlab: the library behind the deep generative models course.

One module per idea: ``data`` (MNIST, embedded or full), ``distributions`` (hand-written log-densities),
``models`` (one model family per module, each with its training step), ``step`` (what a step is, ``TrainConfig``),
``train`` (the one loop, ``fit``, and its callbacks), ``checkpoint`` (groups of models saved with their configs),
``evaluate`` (likelihood estimates), ``metrics`` (sample quality on classifier features), ``plot`` (figures),
``cli`` (the ``dgmlab`` command), ``grading`` (the lab grader).
"""

from dgmlab.utils import fast_mode, get_device, seed_everything

__version__ = "0.1.0"
__all__ = ["fast_mode", "get_device", "seed_everything", "__version__"]
