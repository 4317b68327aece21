"""Reading back the executed notebook a run left behind, as untrusted input.

The runner writes ``executed.ipynb`` inside the sandbox, where the student's kernel can also write: the file may
be replaced, bloated to gigabytes, turned into a FIFO or a symbolic link, or hold JSON that is no notebook. The
grader therefore reads at most the prepared notebook's size plus :data:`EXECUTED_BYTES` of a regular file
(:func:`dgmlab.grading.safeio.read_capped`), rebuilds a well-formed notebook from what it finds (unknown fields
dropped, wrong types replaced), and caps the outputs again as the runner does (``CELL_OUTPUT_BYTES`` per cell,
``NOTEBOOK_OUTPUT_BYTES`` per notebook, from :mod:`dgmlab.grading.runner`), with a note where it cut. When the
file cannot be read at all, the student gets the notebook the grader prepared (their cells, without outputs) with
a note at the top saying why, and the feedback says so too.
"""

from __future__ import annotations

import json

import nbformat

from dgmlab.grading.runner import CELL_OUTPUT_BYTES, CUT_NOTE, NOTEBOOK_OUTPUT_BYTES
from dgmlab.grading.safeio import UnsafeFile, read_capped

EXECUTED_BYTES = 16 * 2**20  # read at most the prepared notebook's size plus this much of executed.ipynb
GRADER_TAG = "dgmlab-grader"
SKIP_TAGS = {GRADER_TAG, "injected-parameters", "papermill-error-cell-tag"}
_TEXT_CHARS = 4000


def load_executed(path, prepared: nbformat.NotebookNode) -> tuple[nbformat.NotebookNode, list[str]]:
    """``(notebook, notes)``: the executed notebook at ``path`` made safe, or ``prepared`` with a note on top."""
    cap = len(nbformat.writes(prepared).encode()) + EXECUTED_BYTES
    try:
        raw = json.loads(read_capped(path, cap))
    except UnsafeFile as e:
        return _fallback(prepared, f"the executed notebook could not be kept ({e})")
    except (ValueError, RecursionError):
        return _fallback(prepared, "the executed notebook the run left is not valid JSON")
    cells = raw.get("cells") if isinstance(raw, dict) else None
    if not isinstance(cells, list):
        return _fallback(prepared, "the executed notebook the run left holds no list of cells")
    nb = nbformat.v4.new_notebook(metadata=json.loads(json.dumps(prepared.metadata)))
    used, notes = 0, []
    for index, c in enumerate(x for x in cells if isinstance(x, dict)):
        cell, used, cut = _cell(c, index, used)
        nb.cells.append(cell)
        if cut:
            notes.append(cut)
    return nb, notes[:3]


def _fallback(prepared: nbformat.NotebookNode, why: str) -> tuple[nbformat.NotebookNode, list[str]]:
    nb = nbformat.from_dict(json.loads(json.dumps(prepared)))
    text = f"**[dgmlab grader]** {why}: this is your notebook as it was run, without outputs."
    note = nbformat.v4.new_markdown_cell(text)
    note.metadata["tags"] = [GRADER_TAG]
    nb.cells.insert(0, note)
    return nb, [why]


def _text(value) -> str:
    if isinstance(value, list):
        value = "".join(v for v in value if isinstance(v, str))
    return value if isinstance(value, str) else ""


def _cell(c: dict, index: int, used: int) -> tuple[nbformat.NotebookNode, int, str]:
    """One well-formed cell from an untrusted dict; outputs over the caps dropped with a note."""
    kind = c.get("cell_type") if c.get("cell_type") in ("code", "markdown", "raw") else "raw"
    meta = c.get("metadata") if isinstance(c.get("metadata"), dict) else {}
    tags = [t for t in meta.get("tags", []) if isinstance(t, str)][:20] if isinstance(meta.get("tags"), list) else []
    source = _text(c.get("source"))
    if kind == "markdown":
        cell = nbformat.v4.new_markdown_cell(source)
    elif kind == "raw":
        cell = nbformat.v4.new_raw_cell(source)
    else:
        cell = nbformat.v4.new_code_cell(source)
        count = c.get("execution_count")
        cell.execution_count = count if isinstance(count, int) and not isinstance(count, bool) else None
    if tags:
        cell.metadata["tags"] = tags
    timing = meta.get("papermill") if isinstance(meta.get("papermill"), dict) else {}
    if isinstance(timing.get("duration"), (int, float)) and not isinstance(timing.get("duration"), bool):
        cell.metadata["papermill"] = {"duration": float(timing["duration"])}  # how long it ran, as papermill saw it
    cut = ""
    if kind != "code":
        return cell, used, cut
    own = 0
    for out in c.get("outputs") if isinstance(c.get("outputs"), list) else []:
        o = _output(out)
        if o is None:
            continue
        size = len(json.dumps(o))
        if o["output_type"] != "error" and (own + size > CELL_OUTPUT_BYTES or used + size > NOTEBOOK_OUTPUT_BYTES):
            if not cut:
                cut = f"outputs of cell {index} past the grader's caps were dropped when the run was read back"
                cell.outputs.append(nbformat.v4.new_output("stream", name="stderr", text=f"{CUT_NOTE}: {cut}\n"))
            continue
        own, used = own + size, used + size
        cell.outputs.append(o)
    return cell, used, cut


def _output(out) -> nbformat.NotebookNode | None:
    if not isinstance(out, dict):
        return None
    kind = out.get("output_type")
    if kind == "stream":
        name = out.get("name") if out.get("name") in ("stdout", "stderr") else "stdout"
        return nbformat.v4.new_output("stream", name=name, text=_text(out.get("text")))
    if kind == "error":
        tb = [str(x)[:_TEXT_CHARS] for x in out.get("traceback", []) if isinstance(x, str)]
        tb = tb[:3] + tb[-10:] if len(tb) > 13 else tb
        return nbformat.v4.new_output(
            "error",
            ename=str(out.get("ename", ""))[:200],
            evalue=str(out.get("evalue", ""))[:_TEXT_CHARS],
            traceback=tb,
        )
    if kind in ("display_data", "execute_result"):
        data = out.get("data") if isinstance(out.get("data"), dict) else {}
        data = {str(k): _text(v) for k, v in data.items() if isinstance(k, str) and _text(v)}
        o = nbformat.v4.new_output(kind, data=data)
        if kind == "execute_result":
            count = out.get("execution_count")
            o.execution_count = count if isinstance(count, int) and not isinstance(count, bool) else None
        return o
    return None


def cell_errors(nb: nbformat.NotebookNode | None, limit: int = 5) -> list[str]:
    """Errors raised by the student's cells in the (safe) executed notebook, and outputs cut by the runner or on
    reading back, numbered as in the submission."""
    notes, index = [], 0
    for cell in nb.cells if nb is not None else []:
        if SKIP_TAGS & set(cell.metadata.get("tags", [])):
            continue
        index += 1
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            text = str(out.get("text", "")) if out.get("output_type") == "stream" else ""
            if text.startswith(CUT_NOTE) and "when the run was read back" not in text:  # the runner dropped outputs
                notes.append(f"cell {index}: {text[len(CUT_NOTE) + 2 :].strip()}; the rest was not kept")
            if out.get("output_type") != "error":
                continue
            ename, evalue = str(out.get("ename", "")), str(out.get("evalue", ""))[:200]
            if ename == "SystemExit":
                notes.append(
                    f"cell {index} called sys.exit(): that cell stopped there, and what it should make is missing"
                )
            elif ename == "KeyboardInterrupt":
                notes.append(f"cell {index} ran past the per-cell time limit and was interrupted")
            else:
                notes.append(f"cell {index} raised {ename}: {evalue}")
    if len(notes) > limit:
        notes = notes[:limit] + [f"... and {len(notes) - limit} more cells with errors"]
    return notes


def cell_numbers(nb: nbformat.NotebookNode | None) -> dict[int, int]:
    """Execution count -> the cell's number in the submission (grader and injected cells not counted)."""
    numbers: dict[int, int] = {}
    index = 0
    for cell in nb.cells if nb is not None else []:
        if SKIP_TAGS & set(cell.metadata.get("tags", [])):
            continue
        index += 1
        if cell.cell_type == "code" and isinstance(cell.get("execution_count"), int):
            numbers[cell["execution_count"]] = index
    return numbers
