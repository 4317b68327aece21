"""The OS sandbox of every run (bubblewrap), first without a kernel: a small Python program run the way the grader
runs its runner, trying what a hostile notebook would. Then, in tests/test_grading_attacks.py, whole submissions.

Each attack here is harmless if the sandbox failed (it only opens files for appending without writing, creates
and removes one empty file, connects to a socket of this test, signals nothing but ``0``), so a broken sandbox
shows up as a failed assertion, never as damage.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from dgmlab.grading import sandbox as sb
from dgmlab.grading.lab import PACKAGE_DIR

ROOT = Path(__file__).resolve().parents[1]
LAB = ROOT / "labs" / "lab1_vae"

needs_bwrap = pytest.mark.skipif(
    bool(sb.probe()), reason=f"bubblewrap does not work here ({sb.probe()}); .ci/run installs the Debian package"
)

PROBE = textwrap.dedent(
    r"""
    import json, os, socket, subprocess, sys, tempfile
    spec = json.loads(sys.argv[1])
    out = {}

    def appendable(path):  # opening for append changes nothing when it succeeds
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
            return True
        except OSError:
            return False

    def creatable(folder):
        try:
            fd, name = tempfile.mkstemp(dir=folder)
        except OSError:
            return False
        os.close(fd)
        os.unlink(name)
        return True

    out["append"] = {k: appendable(p) for k, p in spec["files"].items()}
    out["create"] = {k: creatable(p) for k, p in spec["folders"].items()}
    out["visible"] = {k: os.path.exists(p) for k, p in spec["hidden"].items()}
    try:
        socket.create_connection(("127.0.0.1", spec["port"]), timeout=2).close()
        out["network"] = True
    except OSError:
        out["network"] = False
    try:
        os.kill(spec["grader_pid"], 0)
        out["grader_signalable"] = True
    except ProcessLookupError:
        out["grader_signalable"] = False
    except PermissionError:
        out["grader_signalable"] = True
    out["processes"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    if os.fork() == 0:  # a double-forked daemon that would sleep for two minutes
        os.setsid()
        if os.fork() == 0:
            os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(120)", spec["marker"]])
        os._exit(0)
    import torch, dgmlab  # the kernel's imports still work
    out["torch"] = torch.__version__
    out["cwd"] = os.getcwd()
    with open(os.path.join(spec["run"], "probe.json"), "w") as f:
        json.dump(out, f)
    """
)


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    """Run the probe once in the sandbox the grader builds for a lab 1 batch, with everything it must not reach."""
    base = tmp_path_factory.mktemp("sandbox")
    out_dir, subs, runs = base / "grades", base / "subs", base / "runs"
    for d in (out_dir, subs, runs / "other-student"):
        d.mkdir(parents=True)
    (subs / "alice.ipynb").write_text("{}")
    (runs / "other-student" / "secret.txt").write_text("another student's run")
    run = runs / "me" / "work"
    run.mkdir(parents=True)
    hidden = sb.hidden_paths(LAB, out_dir, subs, runs)
    box = sb.resolve("bwrap", hidden)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    marker = f"dgmlab-sandbox-test-daemon-{os.getpid()}-{time.time_ns()}"
    site = Path(psutil.__file__).resolve().parents[1]
    spec = {
        "files": {
            "dgmlab_init": str(PACKAGE_DIR / "__init__.py"),
            "grading_kernel": str(PACKAGE_DIR / "grading" / "kernel.py"),
            "psutil_in_site_packages": str(Path(psutil.__file__).resolve()),
        },
        "folders": {
            "run": str(run),
            "tmp": "/tmp",
            "dgmlab_pycache": str(PACKAGE_DIR),
            "site_packages": str(site),
            "project": str(ROOT),
        },
        "hidden": {
            "checks": str(LAB / "checks.py"),
            "other_lab": str(ROOT / "labs" / "lab2_gan" / "checks.py"),
            "submission": str(subs / "alice.ipynb"),
            "other_run": str(runs / "other-student" / "secret.txt"),
            "grades": str(out_dir),
            "home": str(Path.home()),
        },
        "port": listener.getsockname()[1],
        "grader_pid": os.getpid(),
        "marker": marker,
        "run": str(run),
    }
    argv = box.wrap([sys.executable, "-c", PROBE, json.dumps(spec)], writable=[run], cwd=run)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    listener.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    time.sleep(0.5)  # the namespace is torn down with its init
    daemons = [p.pid for p in psutil.process_iter(["cmdline"]) if marker in (p.info["cmdline"] or [])]
    return json.loads((run / "probe.json").read_text()), daemons, spec


@needs_bwrap
def test_the_file_system_is_read_only_but_the_run_folder(probed):
    out, _, _ = probed
    assert out["append"] == dict.fromkeys(out["append"], False)  # dgmlab, the grader, site-packages
    assert out["create"] == {
        "run": True,
        "tmp": True,
        "dgmlab_pycache": False,
        "site_packages": False,
        "project": False,
    }


@needs_bwrap
def test_hidden_files_are_not_there_at_all(probed):
    out, _, spec = probed
    # the lab's checks, the other lab, the submissions, other runs and the grader's HOME: empty folders at most
    assert {k: v for k, v in out["visible"].items() if k not in ("grades", "home")} == dict.fromkeys(
        ["checks", "other_lab", "submission", "other_run"], False
    )
    assert Path(spec["hidden"]["checks"]).is_file()  # ... while they are there outside


@needs_bwrap
def test_no_network_no_grader_and_nothing_survives(probed):
    out, daemons, _ = probed
    assert out["network"] is False  # a socket listening on the grader's loopback is out of reach
    assert out["grader_signalable"] is False
    assert len(out["processes"]) <= 4  # bwrap's init, the probe and its forks: its own PID namespace
    assert daemons == []  # the double-forked daemon died with the sandbox
    assert out["torch"] and out["cwd"] == probed[2]["run"]


def test_modes_and_what_none_says():
    none = sb.resolve("none")
    assert not none.on and "no OS sandbox" in none.warning and "checks.py" in none.warning
    assert none.wrap(["python", "-c", "1"], [], Path.cwd()) == ["python", "-c", "1"]
    with pytest.raises(sb.SandboxError, match="unknown sandbox"):
        sb.resolve("docker")


def test_auto_falls_back_with_a_warning_and_bwrap_is_an_error_when_it_does_not_work(monkeypatch):
    monkeypatch.setattr(sb, "probe", lambda bwrap=None: "bubblewrap (bwrap) is not installed")
    auto = sb.resolve("auto")
    assert auto.mode == "none" and auto.warning.startswith("bubblewrap (bwrap) is not installed: no OS sandbox")
    with pytest.raises(sb.SandboxError, match="apt-get install bubblewrap"):
        sb.resolve("bwrap")


def test_needed_folders_inside_hidden_ones_are_mounted_back(tmp_path, monkeypatch):
    home = tmp_path / "home"
    venv, labs = home / "course" / ".venv", home / "course" / "labs" / "lab1"
    for d in (venv, labs):
        d.mkdir(parents=True)
    monkeypatch.setattr(sys, "prefix", str(venv))
    monkeypatch.setattr(sb, "PRIVATE", ())  # tmp_path is under /tmp, which is private anyway
    argv = sb.Sandbox("bwrap", [home, labs], bwrap="bwrap").wrap(["x"], [tmp_path / "run"], tmp_path)
    text = " ".join(argv)
    assert f"--tmpfs {home} " in text and f"--ro-bind {venv} {venv}" in text and f"--remount-ro {home}" in text
    assert f"--tmpfs {labs}" not in text  # already inside the hidden HOME, and not mounted back
    assert argv.index(f"{tmp_path / 'run'}") < argv.index("--remount-ro")
