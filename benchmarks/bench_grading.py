"""Benchmark: how long `dgmlab grade` takes for one correct submission and for a class of them.

The reference solution of a lab (its source notebook, solutions included) is copied N times as if N students had
handed it in, then graded twice in one run: one submission alone with one worker, and all N with ``--workers``.
Every copy must get full marks, otherwise the benchmark fails (a fast grader that gives wrong grades is no use).

    python benchmarks/bench_grading.py                       # both labs, 20 submissions, 2 workers
    python benchmarks/bench_grading.py --labs lab1_vae --n 4 --workers 2
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from dgmlab.grading.grade import grade
from dgmlab.grading.lab import load_lab

ROOT = Path(__file__).resolve().parents[1]


def timed_grade(lab, files: list[Path], out: Path, workers: int) -> tuple[float, list[dict]]:
    t0 = time.perf_counter()
    results = grade(lab, [str(f) for f in files], str(out), workers=workers, force=True, progress=False)
    return time.perf_counter() - t0, results


def check_full_marks(results: list[dict], max_total: float) -> None:
    wrong = [(r.get("student"), r.get("total")) for r in results if r.get("total") != max_total]
    if wrong:
        raise SystemExit(f"the reference solution did not get full marks ({max_total}) for: {wrong}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labs", nargs="+", default=["lab1_vae", "lab2_gan"])
    parser.add_argument("--n", type=int, default=20, help="submissions in the class run (default 20)")
    parser.add_argument("--workers", type=int, default=2, help="workers for the class run (default 2)")
    args = parser.parse_args()

    rows = []
    for name in args.labs:
        lab = load_lab(ROOT / "labs" / name)
        with tempfile.TemporaryDirectory(prefix="dgmlab-bench-") as tmp:
            tmp = Path(tmp)
            subs = tmp / "submissions"
            subs.mkdir()
            files = [subs / f"student{i:03d}.ipynb" for i in range(args.n)]
            for f in files:
                shutil.copyfile(lab.notebook, f)
            one_s, one = timed_grade(lab, files[:1], tmp / "one", workers=1)
            class_s, many = timed_grade(lab, files, tmp / "class", workers=args.workers)
            max_total = one[0].get("max_total")
            check_full_marks(one + many, max_total)
        rows.append((name, one_s, class_s))
        print(
            f"{name}: one correct submission {one_s:.1f} s (1 worker); {args.n} submissions {class_s:.1f} s "
            f"({args.workers} workers, {class_s / args.n:.1f} s each, {args.n * one_s / class_s:.2f}x the "
            "one-at-a-time rate); all got full marks"
        )


if __name__ == "__main__":
    main()
