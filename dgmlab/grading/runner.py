"""Runs one prepared notebook with papermill, in a process of its own (started by :func:`command`).

The grader starts this process in a new session and watches it (wall clock, memory of the whole process tree).
This process makes itself a *child subreaper*, so anything the kernel forks stays in its process tree even if the
intermediate parent exits, and the grader can find and kill all of it. Before exiting it kills whatever the
kernel left running, and writes a small JSON status for the grader.

Two changes to papermill's defaults keep a hostile or careless notebook cheap: outputs are capped per cell and per
notebook (:func:`cap_outputs`), and the executed notebook is written at most every two seconds rather than twice
per cell (:func:`throttle_saves`), so grading time grows linearly in the number of cells.

This file imports nothing from ``dgmlab`` and is run as a file, not as ``-m dgmlab.grading.runner``: importing the
package imports PyTorch (``dgmlab.utils``), which cost every run about two seconds of CPU and 300 MB of memory that
the runner never uses.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import time
import traceback

PR_SET_CHILD_SUBREAPER = 36
CELL_OUTPUT_BYTES = 1 * 2**20  # outputs stored per cell ...
NOTEBOOK_OUTPUT_BYTES = 5 * 2**20  # ... and per notebook; beyond them outputs are dropped, with a note
SAVE_EVERY_S = 2.0  # the executed notebook is written at most this often while it runs, and at the end
CUT_NOTE = "[dgmlab grader] output cut here"
_TRACEBACK_CHARS = 4000


def become_subreaper() -> bool:
    """Linux only: orphaned descendants are re-parented to this process instead of init."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def kill_descendants(pid: int | None = None, rounds: int = 20) -> int:
    """Freeze and kill every descendant of ``pid`` (default: this process); returns how many were killed."""
    import psutil

    try:
        root = psutil.Process(pid or os.getpid())
    except psutil.NoSuchProcess:
        return 0
    killed = 0
    for _ in range(rounds):
        try:
            kids = [p for p in root.children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]
        except psutil.NoSuchProcess:
            break
        if not kids:
            break
        for p in kids:  # stop first so that a fork bomb cannot outrun the kills
            try:
                p.suspend()
            except psutil.Error:
                pass
        for p in kids:
            try:
                p.kill()
                killed += 1
            except psutil.Error:
                pass
        psutil.wait_procs(kids, timeout=2)
        if pid is None:
            _reap()
    return killed


def _reap() -> None:
    """Collect exit statuses of killed children re-parented to us (so they do not linger as zombies)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def cap_outputs(cell_bytes: int = CELL_OUTPUT_BYTES, notebook_bytes: int = NOTEBOOK_OUTPUT_BYTES) -> None:
    """Keep at most ``cell_bytes`` of outputs per cell and ``notebook_bytes`` in all (a notebook printing 200 MB
    must not leave 200 MB in the grader's memory, its files and the student's feedback folder). Outputs past a
    cap are dropped and the cell gets one note saying so; error outputs are always kept (the feedback reports
    them), their traceback shortened."""
    import json

    from nbclient.client import NotebookClient
    from nbformat.v4 import new_output

    if getattr(NotebookClient.output, "_dgmlab_capped", False):
        return
    original = NotebookClient.output

    def output(self, outs, msg, display_id, cell_index):
        sizes = self.__dict__.setdefault("_dgmlab_output_bytes", {"total": 0})
        out = original(self, outs, msg, display_id, cell_index)
        if out is None or not outs or outs[-1] is not out:
            return out
        if out.get("output_type") == "error":
            out["evalue"] = str(out.get("evalue", ""))[:_TRACEBACK_CHARS]
            tb = [str(line)[:_TRACEBACK_CHARS] for line in out.get("traceback", [])]
            out["traceback"] = tb[:3] + tb[-10:] if len(tb) > 13 else tb
            return out
        size = len(json.dumps(out))
        used = sizes.get(cell_index, 0)
        if used + size <= cell_bytes and sizes["total"] + size <= notebook_bytes:
            sizes[cell_index] = used + size
            sizes["total"] += size
            return out
        outs.pop()
        if not sizes.get(("cut", cell_index)):
            sizes[("cut", cell_index)] = True
            which = "this cell's" if used + size > cell_bytes else "the notebook's"
            limit = cell_bytes if used + size > cell_bytes else notebook_bytes
            outs.append(
                new_output(
                    "stream",
                    name="stderr",
                    text=f"{CUT_NOTE}: {which} output passed the {limit / 2**20:g} MB the grader keeps\n",
                )
            )
        return None

    output._dgmlab_capped = True
    NotebookClient.output = output


def throttle_saves(every_s: float = SAVE_EVERY_S) -> None:
    """Write the executed notebook at most every ``every_s`` seconds while it runs (papermill writes it before and
    after every cell, which makes a notebook of n cells cost n^2), and always at the end."""
    from papermill.engines import NotebookExecutionManager

    if getattr(NotebookExecutionManager.save, "_dgmlab_throttled", False):
        return
    original_save, original_complete = NotebookExecutionManager.save, NotebookExecutionManager.notebook_complete

    def save(self, **kwargs):
        last = getattr(self, "_dgmlab_saved_at", None)
        if last is None or time.monotonic() - last >= every_s:
            original_save(self, **kwargs)
            self._dgmlab_saved_at = time.monotonic()

    def notebook_complete(self, **kwargs):
        self._dgmlab_saved_at = None  # the final save always happens
        return original_complete(self, **kwargs)

    save._dgmlab_throttled = True
    NotebookExecutionManager.save = save
    NotebookExecutionManager.notebook_complete = notebook_complete


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0], encoding="utf-8") as f:
        spec = json.load(f)
    become_subreaper()
    import papermill as pm
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    cap_outputs(
        spec.get("cell_output_bytes", CELL_OUTPUT_BYTES), spec.get("notebook_output_bytes", NOTEBOOK_OUTPUT_BYTES)
    )
    throttle_saves(spec.get("save_every_s", SAVE_EVERY_S))

    status = {"status": "completed", "message": "", "seconds": 0.0}
    start = time.perf_counter()
    try:
        pm.execute_notebook(
            spec["input"],
            spec["output"],
            parameters=spec["parameters"],
            kernel_name=spec.get("kernel_name", "python3"),
            language="python",
            cwd=spec["cwd"],
            execution_timeout=spec["cell_timeout"],
            start_timeout=spec.get("start_timeout", 60),
            progress_bar=False,
            log_output=False,
            allow_errors=True,  # a failing cell must not stop the others (nor the grader's export cell)
            interrupt_on_timeout=True,  # a cell over its time limit is interrupted, then the next one runs
            shutdown_kernel="immediate",  # killed once the last cell is done: a polite shutdown took 1-2 s more
        )
    except pm.PapermillExecutionError:
        status.update(status="completed", message="some cells raised errors")
    except DeadKernelError as e:
        status.update(status="dead_kernel", message=str(e).splitlines()[0] if str(e) else "the kernel died")
    except CellTimeoutError as e:
        status.update(status="cell_timeout", message=str(e).splitlines()[0])
    except Exception as e:  # anything else: the grader reports it, and grades what it can
        status.update(status="runner_error", message=f"{type(e).__name__}: {str(e)[:500]}")
        traceback.print_exc()
    status["seconds"] = time.perf_counter() - start
    status["leftover_processes_killed"] = kill_descendants()
    _write_replacing(spec["status"], json.dumps(status))
    return 0


def _write_replacing(path: str, text: str) -> None:
    """Write ``text`` to a new file and rename it over ``path`` (the grader never reads a half-written status)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def command(spec_path: str) -> list[str]:
    """The runner's command line: this file run with the grader's interpreter, without ``dgmlab`` being imported
    and without the working directory (the run's folder, which the kernel can write) on the import path."""
    code = (
        "import runpy, sys; sys.path[:] = [p for p in sys.path if p]; "
        f"runpy.run_path({os.path.abspath(__file__)!r}, run_name='__main__')"
    )
    return [sys.executable, "-c", code, spec_path]


if __name__ == "__main__":
    sys.exit(main())
