"""Benchmark: how long `dgmlab grade` takes for one correct submission and for a class of them.

The reference solution of a lab (its source notebook, solutions included) is copied N times as if N students had
handed it in, then graded twice for each sandbox setting: one submission alone with one worker, and all N with
``--workers``. Every copy must get full marks, otherwise the benchmark fails (a fast grader that gives wrong grades
is no use). For the one submission it also reports where the time went: the batch's setup (once per batch: the
sandbox probe, the grader's imports and data), the kernel's cells as papermill timed them (the grader's first cell
includes importing PyTorch), starting and stopping the sandbox, the runner and the kernel, and the grader's work
outside the run (judging, writing the results). With ``--n 1`` only the one submission is graded.

    python benchmarks/bench_grading.py                       # both labs, 20 submissions, 2 workers, sandbox on and off
    python benchmarks/bench_grading.py --labs lab1_vae --n 4 --workers 2 --sandbox bwrap
    python benchmarks/bench_grading.py --labs lab1_vae --n 1 --sandbox bwrap none   # one submission, both settings
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from dgmlab.grading import grade as grade_mod
from dgmlab.grading.grade import grade
from dgmlab.grading.lab import load_lab

ROOT = Path(__file__).resolve().parents[1]


def timed_grade(lab, files: list[Path], out: Path, workers: int, sandbox: str) -> tuple[float, list[dict]]:
    t0 = time.perf_counter()
    paths = [str(f) for f in files]
    results = grade(lab, paths, str(out), workers=workers, force=True, progress=False, sandbox=sandbox)
    return time.perf_counter() - t0, results


def where_time_went(student_dir: Path, total: float) -> str:
    """Where ``total`` (one submission graded alone, in a fresh batch) went: the batch's own setup, the run (the
    slowest cells as papermill timed them, and the rest: starting the sandbox, the runner and the kernel, and
    stopping them), and the grader's work on the submission outside the run (scan, judging, writing)."""
    nb = json.loads((student_dir / "executed.ipynb").read_text())
    result = json.loads((student_dir / "result.json").read_text())
    cells = []
    for i, c in enumerate(nb["cells"]):
        seconds = c.get("metadata", {}).get("papermill", {}).get("duration") or 0.0
        first = "".join(c.get("source", "")).splitlines()[:1] or [""]
        cells.append((seconds, i, first[0][:50]))
    in_cells = sum(s for s, _, _ in cells)
    run_s = float(result.get("run", {}).get("seconds", 0.0))
    submission_s = float(result.get("grader_seconds", 0.0))
    top = ", ".join(f"cell {i} {s:.1f} s ({text})" for s, i, text in sorted(cells, reverse=True)[:4])
    return (
        f"the batch's setup {total - submission_s:.1f} s; the run {run_s:.1f} s: cells {in_cells:.1f} s [{top}], "
        f"sandbox, runner and kernel start and stop {run_s - in_cells:.1f} s; the grader outside the run "
        f"{submission_s - run_s:.1f} s"
    )


def check_full_marks(results: list[dict], max_total: float) -> None:
    wrong = [(r.get("student"), r.get("total")) for r in results if r.get("total") != max_total]
    if wrong:
        raise SystemExit(f"the reference solution did not get full marks ({max_total}) for: {wrong}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labs", nargs="+", default=["lab1_vae", "lab2_gan"])
    parser.add_argument("--n", type=int, default=20, help="submissions in the class run (default 20)")
    parser.add_argument("--workers", type=int, default=2, help="workers for the class run (default 2)")
    parser.add_argument("--sandbox", nargs="+", default=["bwrap", "none"], help="sandbox settings to measure")
    args = parser.parse_args()

    for name in args.labs:
        lab = load_lab(ROOT / "labs" / name)
        for sandbox in args.sandbox:
            with tempfile.TemporaryDirectory(prefix="dgmlab-bench-") as tmp:
                tmp = Path(tmp)
                subs = tmp / "submissions"
                subs.mkdir()
                files = [subs / f"student{i:03d}.ipynb" for i in range(args.n)]
                for f in files:
                    shutil.copyfile(lab.notebook, f)
                grade_mod._PREPARED.clear()  # each setting pays the batch setup once, as a `dgmlab grade` run does
                one_s, one = timed_grade(lab, files[:1], tmp / "one", 1, sandbox)
                split = where_time_went(tmp / "one" / "students" / "student000", one_s)
                many = []
                if args.n > 1:
                    class_s, many = timed_grade(lab, files, tmp / "class", args.workers, sandbox)
                check_full_marks(one + many, one[0].get("max_total"))
            line = f"{name}, sandbox {sandbox}: one correct submission {one_s:.1f} s (1 worker: {split})"
            if args.n > 1:
                line += (
                    f"; {args.n} submissions {class_s:.1f} s ({args.workers} workers, {class_s / args.n:.1f} s "
                    f"each, {args.n * one_s / class_s:.2f}x the one-at-a-time rate)"
                )
            print(f"{line}; load average {os.getloadavg()[0]:.2f} at the end; all got full marks", flush=True)


if __name__ == "__main__":
    main()
