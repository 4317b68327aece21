"""Runs one prepared notebook with papermill, in a process of its own (``python -m dgmlab.grading.runner SPEC``).

The grader starts this process in a new session and watches it (wall clock, memory of the whole process tree).
This process makes itself a *child subreaper*, so anything the kernel forks stays in its process tree even if the
intermediate parent exits, and the grader can find and kill all of it. Before exiting it kills whatever the
kernel left running, and writes a small JSON status for the grader.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import time
import traceback

from dgmlab.utils import atomic_write_text

PR_SET_CHILD_SUBREAPER = 36


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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0], encoding="utf-8") as f:
        spec = json.load(f)
    become_subreaper()
    import papermill as pm
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

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
    atomic_write_text(spec["status"], json.dumps(status))
    return 0


if __name__ == "__main__":
    sys.exit(main())
