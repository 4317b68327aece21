"""Releasing and auto-grading the labs: ``dgmlab release`` and ``dgmlab grade``.

Modules: ``notebook`` (reading notebooks, static checks), ``release`` (student versions), ``kernel`` (the guard
and exporter that run inside a student's kernel), ``runner`` (papermill in its own process tree), ``judge``
(loading exported data without pickle; the vocabulary of hidden checks), ``lab`` (rubric and checks of a lab),
``memory`` (the memory limit: PSS over the process tree), ``sandbox`` (bubblewrap around every run), ``safeio``
and ``executed`` (reading what a run leaves behind as untrusted input), ``grade`` (running, limits, judging, ids,
gradebook), ``fanout`` (one Dask task per submission), ``report`` (feedback), ``cli``. See ``labs/GRADING.md``.
"""
