"""``dgmlab release``: turn a lab's source notebook (with reference solutions) into the student version.

Conventions (the ones instructors know from nbgrader):

* In code cells, the lines between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` are replaced by
  ``# YOUR CODE HERE`` and ``raise NotImplementedError(...)`` at the indentation of the markers.
* In Markdown cells, the block is replaced by ``*YOUR ANSWER HERE*``.
* Cells tagged ``remove-in-release`` (hidden material) are dropped entirely.
* All outputs, execution counts, attachments and non-essential metadata are removed.

After writing, the released file is searched for every non-trivial line of every solution block; if any survived
anywhere (cells, outputs, metadata, attachments), the release fails instead of leaking it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat

from dgmlab.grading.notebook import read_notebook
from dgmlab.utils import atomic_write_text

BEGIN = re.compile(r"^(\s*)#+\s*BEGIN SOLUTION\s*$")
END = re.compile(r"^\s*#+\s*END SOLUTION\s*$")
HIDDEN_TAG = "remove-in-release"
KEEP_CELL_TAGS = {"parameters"}
CODE_STUB = ("{indent}# YOUR CODE HERE", '{indent}raise NotImplementedError("Write your code here.")')
MARKDOWN_STUB = ("*YOUR ANSWER HERE*",)


class ReleaseError(Exception):
    """The source notebook cannot be released (unbalanced markers, or a solution would leak)."""


def strip_solutions(source: str, stub: tuple[str, ...], where: str) -> tuple[str, list[str]]:
    """Replace each solution block in ``source`` by ``stub``.

    Returns:
        The new source and the list of removed lines.

    Raises:
        ReleaseError: on a BEGIN without END, an END without BEGIN, or nested blocks.
    """
    out: list[str] = []
    removed: list[str] = []
    inside: str | None = None
    for n, line in enumerate(source.splitlines(), start=1):
        begin = BEGIN.match(line)
        if begin:
            if inside is not None:
                raise ReleaseError(f"{where}, line {n}: BEGIN SOLUTION inside another solution block")
            inside = begin.group(1)
            continue
        if END.match(line):
            if inside is None:
                raise ReleaseError(f"{where}, line {n}: END SOLUTION without a BEGIN SOLUTION")
            out.extend(s.format(indent=inside) for s in stub)
            inside = None
            continue
        if inside is not None:
            removed.append(line)
        else:
            out.append(line)
    if inside is not None:
        raise ReleaseError(f"{where}: BEGIN SOLUTION is never closed by END SOLUTION")
    return "\n".join(out), removed


def _trace_lines(removed: list[str]) -> list[str]:
    """Solution lines worth searching for in the released file (long enough not to match ordinary code)."""
    lines = {line.strip() for line in removed}
    return sorted(s for s in lines if len(s) >= 12 and not s.startswith("#"))


def release_notebook(nb: nbformat.NotebookNode) -> tuple[nbformat.NotebookNode, list[str]]:
    """The student version of a source notebook, and the solution lines that were removed."""
    cells = []
    removed: list[str] = []
    for i, cell in enumerate(nb.cells):
        tags = list(cell.get("metadata", {}).get("tags", []))
        if HIDDEN_TAG in tags:
            removed.extend(cell.source.splitlines())
            continue
        where = f"cell {i + 1}"
        if cell.cell_type == "code":
            source, gone = strip_solutions(cell.source, CODE_STUB, where)
            new = nbformat.v4.new_code_cell(source)
        elif cell.cell_type == "markdown":
            source, gone = strip_solutions(cell.source, MARKDOWN_STUB, where)
            new = nbformat.v4.new_markdown_cell(source)
        else:
            source, gone = strip_solutions(cell.source, (), where)
            new = nbformat.v4.new_raw_cell(source)
        removed.extend(gone)
        keep = [t for t in tags if t in KEEP_CELL_TAGS]
        if keep:
            new.metadata["tags"] = keep
        if "id" in cell:
            new["id"] = cell["id"]
        cells.append(new)
    out = nbformat.v4.new_notebook(cells=cells)
    for key in ("kernelspec", "language_info"):
        if key in nb.metadata:
            out.metadata[key] = nb.metadata[key]
    return out, removed


def release(source: str | Path, out_dir: str | Path) -> Path:
    """Write the student version of ``source`` into ``out_dir`` (same file name).

    Args:
        source: the lab's source notebook with the reference solutions.
        out_dir: folder for the released notebook (created).

    Returns:
        The path of the released notebook.

    Raises:
        ReleaseError: unbalanced markers, or a solution line found in the released file.
    """
    source = Path(source)
    nb = read_notebook(source)
    student, removed = release_notebook(nb)
    nbformat.validate(student)
    text = nbformat.writes(student)
    # lines that also occur outside the solution blocks are public anyway; every other one must be gone
    public = {line.strip() for cell in student.cells for line in cell.source.splitlines()}
    trace = [line for line in _trace_lines(removed) if line not in public]
    leaks = [line for line in trace if line in text or json.dumps(line)[1:-1] in text]
    if any(BEGIN.match(line) or END.match(line) for cell in student.cells for line in cell.source.splitlines()):
        leaks.append("a BEGIN/END SOLUTION marker line")
    if leaks:
        raise ReleaseError(f"{source.name}: the released file would still contain solution text: {leaks[:3]}")
    return atomic_write_text(Path(out_dir) / source.name, text)
