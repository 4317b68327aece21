"""``dgmlab grade --scheduler tcp://host:8786``: each submission is one task on an existing Dask cluster.

The grader (the Dask *client*) does everything that decides a grade's identity, as in a local run: it reads every
submission into memory, assigns the ids, checks what a resumed run can reuse, and at the end writes the gradebook
and every student's folder from the results it received. A task carries the submission's bytes and runs
:func:`dgmlab.grading.grade.grade_submission` on a worker, which needs the same environment (the same ``dgmlab``,
PyTorch and lab files at the same path, and bubblewrap when the sandbox is on): the worker loads the lab itself
and refuses to grade (the row says so) when its settings differ from the grader's, so one misconfigured node
cannot put different grades in the same gradebook. The executed notebook comes back with the result.

A worker lost during a task (killed, out of memory, its node gone) costs that submission only: the grader submits
it once more, and if that attempt is lost too, the row is ``grader_error`` with the reason. (The scheduler may
itself retry a task whose worker died, up to its ``distributed.scheduler.allowed-failures``; start it with
``DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=0`` for exactly one retry, the grader's.)
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
from collections.abc import Callable
from pathlib import Path

from dgmlab.grading.lab import Lab, load_lab
from dgmlab.grading.sandbox import Sandbox

ATTEMPTS = 2  # a task whose worker was lost is submitted once more
_LABS: dict = {}
_LABS_LOCK = threading.Lock()


class SchedulerError(Exception):
    """The Dask scheduler cannot be reached (or dask is not installed); the message says what to do."""


def task_key(student: str, attempt: int, batch: str) -> str:
    """The Dask key of a submission's task (readable on the dashboard: the student and the attempt)."""
    return f"dgmlab-grade-{student}-{attempt}-{batch}"


def grade_on_dask(
    address: str,
    lab: Lab,
    todo: list[tuple],
    out_dir: Path,
    settings: dict,
    sandbox: Sandbox,
    keep: bool,
    work_root,
    done: Callable[[dict], None],
    hidden: list[Path] | None = None,
    connect_timeout: float = 30.0,
) -> None:
    """Grade ``todo`` (``(path, id, content, refused, id_note)`` tuples) on the cluster at ``address``; ``done`` is
    called in this thread with each result as it arrives (lost twice: a ``grader_error`` row)."""
    from dgmlab.grading.grade import _finish, error_result

    try:
        from distributed import Client, as_completed
    except ImportError:
        raise SchedulerError(
            "--scheduler needs the packages dask and distributed (pip install dask distributed)"
        ) from None
    try:
        client = Client(address, timeout=f"{connect_timeout:g}s")
    except OSError as e:
        raise SchedulerError(f"cannot reach the Dask scheduler at {address} ({e}); is it running?") from None
    spec = {
        "folder": str(lab.folder),
        "limits": dataclasses.asdict(lab.limits),
        "sandbox": sandbox.mode,
        "hidden": [str(h) for h in (hidden if hidden is not None else sandbox.hidden)],
    }
    batch = secrets.token_hex(4)
    try:
        futures, attempts = {}, {}
        for path, sid, content, refused, note in todo:
            fut = client.submit(
                _task, spec, str(path), sid, content, refused, note, settings, keep, work_root,
                key=task_key(sid, 1, batch), pure=False, retries=0,
            )  # fmt: skip
            futures[fut.key] = (fut, (path, sid, content, refused, note))
            attempts[sid] = 1
        pending = as_completed([f for f, _ in futures.values()])
        for fut in pending:
            item = futures[fut.key][1]
            path, sid = item[0], item[1]
            try:
                result = fut.result()
            except Exception as e:  # the worker was lost (KilledWorker), or the task could not run at all
                if attempts[sid] < ATTEMPTS:
                    attempts[sid] += 1
                    again = client.submit(
                        _task, spec, str(path), sid, *item[2:], settings, keep, work_root,
                        key=task_key(sid, attempts[sid], batch), pure=False, retries=0,
                    )  # fmt: skip
                    futures[again.key] = (again, item)
                    pending.add(again)
                    continue
                why = f"{type(e).__name__}: {str(e)[:300]}"
                result = error_result(
                    lab.name, path, sid, f"the Dask worker grading this submission was lost twice; not graded ({why})"
                )
                result = _finish(result, out_dir / "students" / sid, 0.0, write_files=False)
                result["id_note"] = item[4]
            done(result)
    finally:
        client.close()


def _worker_lab(spec: dict) -> Lab:
    """The lab on this worker, loaded once per process, with the grader's limits."""
    key = (spec["folder"], tuple(sorted(spec["limits"].items())))
    with _LABS_LOCK:
        if key not in _LABS:
            lab = load_lab(spec["folder"])
            for k, v in spec["limits"].items():
                setattr(lab.limits, k, v)
            _LABS[key] = lab
        return _LABS[key]


def _task(spec, path, sid, content, refused, note, settings, keep, work_root) -> dict:
    """One submission, on a Dask worker: the same grading as a local run, its files returned instead of written."""
    import torch

    from dgmlab.grading.grade import _finish, _safe_grade, error_result, run_settings
    from dgmlab.grading.sandbox import resolve

    torch.set_num_threads(1)  # the kernels get the cores; each has one thread
    try:
        lab = _worker_lab(spec)
        box = resolve(spec["sandbox"], [Path(h) for h in spec["hidden"]])
        mine = run_settings(lab, box)
    except Exception as e:  # this worker's setup (no lab files, no bwrap): reported in the row, the batch goes on
        r = error_result(
            Path(spec["folder"]).name, path, sid, f"this Dask worker cannot grade: {type(e).__name__}: {e}"
        )
        return {**_finish(r, Path(), 0.0, write_files=False), "id_note": note}
    if mine != settings:
        differ = sorted(k for k in set(mine) | set(settings) if mine.get(k) != settings.get(k))
        why = f"this Dask worker's {', '.join(differ)} differ from the grader's; not graded"
        r = error_result(lab.name, path, sid, why)
        r = _finish(r, Path(), 0.0, write_files=False)
        return {**r, "id_note": note}
    return _safe_grade(
        lab, Path(path), sid, Path("."), 1, keep, content, work_root, refused, note, box, settings, write_files=False
    )
