"""``dgmlab grade --scheduler``: the same class graded on a Dask cluster (a ``distributed.LocalCluster`` of two
worker processes here) gives the same gradebook as the local pool, and a worker killed in the middle of a run
costs only that submission: killed once, it is graded again elsewhere; killed twice, its row says so.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import nbformat
import pytest

from dgmlab.grading import fanout
from dgmlab.grading.grade import grade
from dgmlab.grading.lab import load_lab

distributed = pytest.importorskip("distributed", reason="dask and distributed are in requirements.txt")
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
LIMITS = {"cell_timeout_s": 60.0, "total_timeout_s": 150.0}


def _executing(dask_worker) -> tuple[int, list[str]]:
    """Run on a worker: its process id and the keys of the tasks it is executing now (not those queued)."""
    return os.getpid(), [str(ts.key) for ts in dask_worker.state.executing]


def _killer(client, victims: dict[str, int], stop: threading.Event, killed: list[str]) -> None:
    """Kill the worker process running a victim's task, ``victims[student]`` times, a few seconds into its run."""
    seen: dict[str, float] = {}
    while not stop.is_set():
        try:
            running = client.run(_executing, on_error="ignore")  # a worker being replaced does not answer
        except Exception:  # a worker is being replaced
            time.sleep(0.2)
            continue
        for pid, keys in running.values():
            for key in keys:
                sid = next((s for s in victims if key.startswith(f"dgmlab-grade-{s}-")), None)
                if sid is None or victims[sid] <= 0:
                    continue
                first = seen.setdefault(key, time.monotonic())
                if time.monotonic() - first < 4:  # let the kernel start: killed mid-run, not before
                    continue
                os.kill(pid, signal.SIGKILL)
                victims[sid] -= 1
                killed.append(key)
        time.sleep(0.2)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """One class graded twice: by the local pool and on a two-worker LocalCluster with workers killed mid-run."""
    import dask

    lab = load_lab(ROOT / "labs" / "lab1_vae")
    for k, v in LIMITS.items():
        setattr(lab.limits, k, v)
    base = tmp_path_factory.mktemp("dask")
    subs = base / "subs"
    subs.mkdir()
    shutil.copy(lab.notebook, subs / "alice.ipynb")  # correct; its first attempt on Dask is killed
    (subs / "bob.ipynb").write_bytes(b"")  # unreadable, graded without a kernel
    sleeper = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import time\ntime.sleep(100)")])
    nbformat.write(sleeper, str(subs / "carol.ipynb"))  # both its attempts are killed
    local = grade(lab, [subs / "alice.ipynb", subs / "bob.ipynb"], base / "local", workers=2, progress=False)
    data_folders = set(Path(tempfile.gettempdir()).glob("dgmlab-grader-data-*"))  # this process's is among them
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):  # only the grader's own retry
        with (
            distributed.LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
            ) as cluster,
            distributed.Client(cluster) as client,
        ):
            stop, killed = threading.Event(), []
            killer = threading.Thread(target=_killer, args=(client, {"alice": 1, "carol": 2}, stop, killed))
            killer.start()
            try:
                paths = sorted(subs.glob("*.ipynb"))
                remote = grade(lab, paths, base / "dask", progress=False, scheduler=cluster.scheduler_address)
            finally:
                stop.set()
                killer.join()
    left = set(Path(tempfile.gettempdir()).glob("dgmlab-grader-data-*")) - data_folders
    return base, {r["student"]: r for r in local}, {r["student"]: r for r in remote}, killed, left


def _rows(path: Path) -> dict[str, dict]:
    rows = csv.DictReader(io.StringIO((path / "gradebook.csv").read_text()))
    return {r["student"]: r for r in rows}


def test_the_cluster_gives_the_local_pool_s_gradebook(graded):
    base, local, remote, killed, _ = graded
    assert any(k.startswith("dgmlab-grade-alice-1-") for k in killed)  # alice's first attempt died mid-run
    assert remote["alice"]["total"] == 100, json.dumps(remote["alice"], indent=1)[:3000]
    assert remote["bob"]["status"] == "unreadable"
    local_rows, remote_rows = _rows(base / "local"), _rows(base / "dask")
    for sid in ("alice", "bob"):
        mine, theirs = dict(local_rows[sid]), dict(remote_rows[sid])
        mine.pop("file"), theirs.pop("file")
        assert mine == theirs
        assert remote[sid]["fingerprint"] == local[sid]["fingerprint"]
    executed = nbformat.read(str(base / "dask" / "students" / "alice" / "executed.ipynb"), as_version=4)
    assert any(c.cell_type == "code" and c.outputs for c in executed.cells)  # sent back by the worker


def test_a_submission_whose_worker_is_lost_twice_is_reported_and_costs_no_one_else(graded):
    base, _, remote, killed, _ = graded
    carol = remote["carol"]
    assert sum(k.startswith("dgmlab-grade-carol-") for k in killed) == 2, (killed, carol["notes"], carol["run"])
    assert carol["status"] == "grader_error" and "worker grading this submission was lost twice" in carol["notes"][0]
    book = json.loads((base / "dask" / "gradebook.json").read_text())
    assert sorted(r["student"] for r in book["results"]) == ["alice", "bob", "carol"]


def test_workers_even_killed_ones_leave_no_data_folder_behind(graded):
    """Each worker process keeps its copy of the grader's data in its own Dask folder: three of them were killed
    here (their ``atexit`` never ran), and the cluster's clean-up still removed every copy."""
    *_, killed, left = graded
    assert len(killed) == 3 and not left, left


def test_an_unreachable_scheduler_is_a_clear_error(tmp_path):
    lab = load_lab(ROOT / "labs" / "lab1_vae")
    todo = [(tmp_path / "x.ipynb", "x", b"", "", "")]
    with pytest.raises(fanout.SchedulerError, match="cannot reach the Dask scheduler"):
        fanout.grade_on_dask(
            "tcp://127.0.0.1:9", lab, todo, tmp_path, {}, None, False, None, print, hidden=[], connect_timeout=2
        )
