"""Releasing and auto-grading the labs: ``dgmlab release`` and ``dgmlab grade``.

Modules: ``notebook`` (reading notebooks, static checks), ``release`` (student versions), ``kernel`` (the guard
and exporter that run inside a student's kernel), ``runner`` (papermill in its own process tree), ``judge``
(loading exported data without pickle; the vocabulary of hidden checks), ``lab`` (rubric and checks of a lab),
``grade`` (running, limits, judging, gradebook), ``report`` (feedback), ``cli``. See ``labs/GRADING.md``.
"""
