"""The ``release`` and ``grade`` subcommands (registered on the ``dgmlab`` command by :func:`add_subcommands`).

Examples::

    dgmlab release labs/lab1_vae --out release/
    dgmlab grade labs/lab1_vae submissions/*.ipynb --out grades/lab1 --workers 2
    dgmlab grade labs/lab1_vae submissions/ --out grades/lab1 --scheduler tcp://head-node:8786
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path


def _release(args: argparse.Namespace) -> int:
    from dgmlab.grading.lab import LabError, find_lab, load_lab
    from dgmlab.grading.release import ReleaseError, release

    try:
        source = Path(args.lab)
        if source.suffix != ".ipynb":
            source = load_lab(find_lab(args.lab)).notebook
        path = release(source, args.out)
    except (LabError, ReleaseError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"released {path}")
    return 0


def _grade(args: argparse.Namespace) -> int:
    from dgmlab.grading.grade import grade
    from dgmlab.grading.lab import LabError, load_lab
    from dgmlab.grading.report import summary

    try:
        lab = load_lab(args.lab)
    except LabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    files: list[str] = []
    folders = [Path(s) for s in args.submissions if Path(s).is_dir()]
    for s in args.submissions:  # accept folders and globs too (shells on Windows do not expand them)
        p = Path(s)
        if p.is_dir():  # the whole tree (alice/lab1_vae.ipynb too), not hidden folders (.ipynb_checkpoints)
            visible = [x for x in p.rglob("*") if not any(part.startswith(".") for part in x.relative_to(p).parts)]
            files += sorted(str(x) for x in visible if x.suffix == ".ipynb" and not x.is_dir())
            others = sorted(str(x.relative_to(p)) for x in visible if x.suffix != ".ipynb" and x.is_file())
            if others:  # nothing disappears silently: say what is not graded
                shown = ", ".join(others[:10]) + (f" and {len(others) - 10} more" if len(others) > 10 else "")
                print(f"not graded (not .ipynb files) in {p}: {shown}", file=sys.stderr)
        elif any(ch in s for ch in "*?["):
            files += sorted(glob.glob(s))
        else:
            files.append(s)
    if not files:
        print("error: no submissions given (pass .ipynb files or a folder holding them)", file=sys.stderr)
        return 2
    for key in ("cell_timeout", "total_timeout", "memory_mb"):
        value = getattr(args, key)
        if value is not None:
            setattr(
                lab.limits, {"cell_timeout": "cell_timeout_s", "total_timeout": "total_timeout_s"}.get(key, key), value
            )
    from dgmlab.grading.fanout import SchedulerError
    from dgmlab.grading.sandbox import SandboxError

    try:
        results = grade(
            lab,
            files,
            args.out,
            workers=args.workers,
            force=args.force,
            progress=not args.quiet,
            keep=args.keep,
            work_root=args.work_root,
            root=folders[0] if len(folders) == 1 and len(args.submissions) == 1 else None,
            sandbox=args.sandbox,
            scheduler=args.scheduler,
        )
    except (SandboxError, SchedulerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary(results))
    print(
        f"gradebook: {Path(args.out) / 'gradebook.csv'}; feedback: {Path(args.out) / 'students'}/<student>/feedback.md"
    )
    return 0


def add_subcommands(subparsers) -> None:
    """Register ``release`` and ``grade`` on an ``argparse`` subparsers object."""
    p = subparsers.add_parser("release", help="write the student version of a lab (solutions removed)")
    p.add_argument("lab", help="a lab folder (holding rubric.yml), a lab name under labs/, or a source .ipynb")
    p.add_argument("--out", required=True, help="folder for the student notebook")
    p.set_defaults(func=_release)

    g = subparsers.add_parser("grade", help="grade submissions of a lab; writes a gradebook and feedback")
    g.add_argument("lab", help="a lab folder (holding rubric.yml) or a lab name under labs/")
    g.add_argument("submissions", nargs="+", help=".ipynb files, globs or folders (searched recursively)")
    g.add_argument("--out", required=True, help="output folder (gradebook.csv, gradebook.json, students/)")
    g.add_argument("--workers", type=int, default=1, help="submissions graded in parallel (default 1)")
    g.add_argument("--force", action="store_true", help="re-grade submissions already graded")
    g.add_argument("--keep", action="store_true", help="keep the temporary run folders (debugging)")
    g.add_argument("--work-root", default=None, help="folder for the temporary run folders (default: system temp)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--cell-timeout", type=float, default=None, help="seconds per cell (default: the lab's)")
    g.add_argument("--total-timeout", type=float, default=None, help="seconds per submission (default: the lab's)")
    g.add_argument("--memory-mb", type=float, default=None, help="memory limit of a kernel (default: the lab's)")
    g.add_argument(
        "--sandbox",
        choices=("auto", "bwrap", "none"),
        default="auto",
        help="OS sandbox per run: bwrap (bubblewrap; an error if it does not work), none, or auto (bwrap when it "
        "works, else none with a warning; the default)",
    )
    g.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="a Dask scheduler (tcp://host:8786): one task per submission on its workers instead of --workers",
    )
    g.set_defaults(func=_grade)


def main(argv: list[str] | None = None) -> int:
    """``python -m dgmlab.grading.cli release|grade ...`` (the same as ``dgmlab release|grade``)."""
    parser = argparse.ArgumentParser(prog="dgmlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_subcommands(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
