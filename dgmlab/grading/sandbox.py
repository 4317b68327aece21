"""The operating-system sandbox each submission's run goes into: ``bubblewrap`` (``bwrap``), no daemon, no setup.

The grader starts the runner (papermill, and through it the student's kernel) inside ``bwrap``:

* the whole file system is mounted **read-only** (the project tree, ``dgmlab``, site-packages, the interpreter);
  only the run's own folders (the kernel's working directory, which is also its ``HOME``, and the runner's folder
  for the executed notebook) are writable, and ``/tmp`` and ``/dev/shm`` are private, size-limited ``tmpfs``;
* what a student must not see is **hidden** under empty read-only ``tmpfs`` mounts: the lab's folder (``checks.py``)
  and the other labs next to it, the grades folder, the submissions folder, the folder holding every run folder
  (other students' runs), the grader's data cache, and the grader's ``HOME``; the interpreter and the packages the
  kernel imports are mounted back read-only where they live inside one of those;
* own **namespaces** for everything bwrap supports (``--unshare-all``): no network (a private loopback only, which
  is where papermill and the kernel talk ZMQ, both inside), its own PID namespace (the grader and other
  submissions cannot be seen, let alone signalled), IPC, UTS, and a user namespace where the kernel allows one;
* ``--die-with-parent`` and the PID namespace together mean **nothing outlives the run**: when the runner exits
  or is killed (or the grader dies), the namespace's init exits and the kernel kills every process left in it,
  double-forked daemons included; all capabilities are dropped (``--cap-drop ALL``), so the mounts cannot be
  undone.

Why papermill runs inside the sandbox together with the kernel, rather than the kernel alone: the kernel and its
client talk over ZMQ sockets on loopback, and a private network namespace has its own loopback, so both ends must
share it; putting the whole runner inside keeps the connection file, the ports and the runner's subreaper in the
sandbox, and the grader outside only starts ``bwrap``, watches its process tree (wall clock, memory, disk) and
reads back *data*. The price is that the executed notebook and the runner's status file are written by a process
the student can tamper with, so the grader reads them as untrusted input (``grade.py``: size caps, regular files
only, outputs capped again).

``--sandbox auto`` uses bwrap when it works on this machine (:func:`resolve`), else runs without it and says so in
one line; ``bwrap`` makes its absence an error; ``none`` runs the runner as a plain process of the grader's user.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

MODES = ("auto", "bwrap", "none")
TMP_BYTES = 512 * 2**20  # the private /tmp
SHM_BYTES = 1024 * 2**20  # the private /dev/shm (DataLoader workers share tensors through it)
PRIVATE = (Path("/tmp"), Path("/dev/shm"))  # fresh in every sandbox: what lies under them needs no hiding
NONE_WARNING = (
    "no OS sandbox (--sandbox none): each notebook runs as your user and can read checks.py and other students' "
    "files, change the grader's code, site-packages and caches, signal the grader, and use the network; grade only "
    "notebooks you trust this way (install the Debian package bubblewrap for the sandbox)"
)


class SandboxError(Exception):
    """``--sandbox bwrap`` was asked for and bubblewrap does not work here; the message says why and what to do."""


@functools.lru_cache(maxsize=4)
def probe(bwrap: str | None = None) -> str:
    """'' if ``bwrap`` can build this module's sandbox on this machine, else why not (one line)."""
    bwrap = bwrap or shutil.which("bwrap")
    if not bwrap:
        return "bubblewrap (bwrap) is not installed (Debian package bubblewrap)"
    argv = [bwrap, *_base_args(), "--", sys.executable, "-c", "pass"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bwrap could not be started ({type(e).__name__}: {e})"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1][:200]
        return f"bwrap does not work here ({last}; are unprivileged user namespaces disabled?)"
    return ""


def _base_args() -> list[str]:
    return [
        "--die-with-parent",
        "--new-session",  # no TIOCSTI into the grader's terminal
        "--unshare-all",  # user (where allowed), IPC, PID, network, UTS, cgroup
        "--cap-drop",
        "ALL",
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--size",
        str(TMP_BYTES),
        "--tmpfs",
        "/tmp",
        "--size",
        str(SHM_BYTES),
        "--tmpfs",
        "/dev/shm",
        *[a for k in private_keeps() for a in ("--ro-bind", str(k), str(k))],
    ]


@dataclass
class Sandbox:
    """How runs are isolated in one grading batch.

    Args:
        mode: ``bwrap`` or ``none`` (already resolved from ``auto``).
        hidden: folders the kernel must not see (made empty and read-only inside).
        warning: one line for the terminal and the gradebook when the runs are not sandboxed.
    """

    mode: str
    hidden: list[Path] = field(default_factory=list)
    warning: str = ""
    bwrap: str = ""

    @property
    def on(self) -> bool:
        return self.mode == "bwrap"

    def wrap(self, argv: list[str], writable: list[Path], cwd: Path) -> list[str]:
        """``argv`` as the sandbox runs it: unchanged without bwrap, else inside ``bwrap`` with only ``writable``
        folders writable and ``cwd`` as its working directory."""
        if not self.on:
            return list(argv)
        args = [self.bwrap, *_base_args()]
        kept = private_keeps()  # under /tmp but mounted back: what is hidden inside them must be hidden again
        hidden = [
            h
            for h in _existing(self.hidden)
            if not any(_within(h, p) for p in PRIVATE) or any(_within(h, k) for k in kept)
        ]
        hidden = _outermost(hidden)
        for h in hidden:
            args += ["--tmpfs", str(h)]
        for k in _outermost(keep_paths(hidden)):
            args += ["--ro-bind", str(k), str(k)]
        for w in writable:
            args += ["--bind", str(w), str(w)]
        for h in hidden:
            args += ["--remount-ro", str(h)]
        return [*args, "--chdir", str(cwd), "--", *argv]


def resolve(mode: str, hidden: list[Path] | None = None) -> Sandbox:
    """The sandbox for ``--sandbox mode``: ``auto`` picks bwrap when :func:`probe` says it works.

    Raises:
        SandboxError: ``mode`` is ``bwrap`` and bubblewrap does not work here, or ``mode`` is unknown.
    """
    if mode not in MODES:
        raise SandboxError(f"unknown sandbox {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "none":
        return Sandbox("none", [], NONE_WARNING)
    why = probe()
    if not why:
        return Sandbox("bwrap", list(hidden or []), "", shutil.which("bwrap") or "bwrap")
    if mode == "bwrap":
        raise SandboxError(
            f"--sandbox bwrap: {why}. Install bubblewrap (apt-get install bubblewrap), or pass --sandbox none to "
            "grade without an OS sandbox"
        )
    return Sandbox("none", [], f"{why}: {NONE_WARNING}")


def hidden_paths(lab_folder: Path, out_dir: Path, submissions_root: Path | None, work_root: Path | None) -> list[Path]:
    """What a kernel must not see: the lab and its sibling labs (``checks.py``), the grades, the submissions, every
    run folder, the grader's data cache and its ``HOME``."""
    from dgmlab.utils import cache_dir

    lab_folder = Path(os.path.abspath(lab_folder))
    hidden = [lab_folder, Path(os.path.abspath(out_dir)), Path(os.path.abspath(cache_dir())), Path.home()]
    try:
        hidden += [p for p in lab_folder.parent.iterdir() if p.is_dir() and (p / "rubric.yml").is_file()]
    except OSError:
        pass
    if submissions_root is not None:
        hidden.append(Path(os.path.abspath(submissions_root)))
    hidden.append(Path(os.path.abspath(work_root)) if work_root else Path(tempfile.gettempdir()))
    return [Path(os.path.realpath(h)) for h in hidden]


def keep_paths(hidden: list[Path]) -> list[Path]:
    """Folders the kernel needs (the interpreter, the import path, ``dgmlab``) that lie inside a hidden folder: they
    are mounted back read-only, unless one of them holds a hidden folder itself (then it stays hidden)."""
    out = []
    for n in _needed():
        inside = any(_within(n, h) and n != h for h in hidden)
        covers = any(_within(h, n) for h in hidden)
        if inside and not covers:
            out.append(n)
    return out


def _needed() -> list[Path]:
    """The folders a kernel needs to start and import: the interpreter, the import path, ``dgmlab``."""
    from dgmlab.grading.lab import PACKAGE_DIR

    needed = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    needed |= {p for p in sys.path if p and os.path.isdir(p)}
    needed.add(str(PACKAGE_DIR))
    return _existing([Path(os.path.realpath(p)) for p in needed])


def private_keeps() -> list[Path]:
    """Needed folders (see :func:`_needed`) under a folder the sandbox replaces by an empty tmpfs (``/tmp``, for a
    project or virtual environment that lives there): mounted back read-only after the tmpfs."""
    return _outermost([n for n in _needed() if any(_within(n, p) for p in PRIVATE)])


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _existing(paths: list[Path]) -> list[Path]:
    return sorted({p for p in paths if p.is_dir() and p != Path("/")})


def _outermost(paths: list[Path]) -> list[Path]:
    """Drop paths inside another of them; sorted by depth (bwrap applies mounts in order)."""
    paths = sorted(set(paths), key=lambda p: (len(p.parts), str(p)))
    return [p for i, p in enumerate(paths) if not any(_within(p, q) for q in paths[:i])]
