"""The lab notebooks run top to bottom under nbval (``--nbval-lax``) in fast mode, and release cleanly."""

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from dgmlab.grading.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
LABS = ["lab1_vae", "lab2_gan"]


@pytest.mark.slow
@pytest.mark.parametrize("lab", LABS)
def test_lab_runs_under_nbval_in_fast_mode(lab, tmp_path):
    env = {**os.environ, "DGMLAB_FAST": "1", "MPLBACKEND": "Agg"}
    notebook = ROOT / "labs" / lab / f"{lab}.ipynb"
    # -p no:cacheprovider: write nothing into the repository; --rootdir: do not pick up the project's pytest options
    cmd = [sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path)]
    out = subprocess.run([*cmd, str(notebook)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "failed" not in out.stdout


@pytest.mark.parametrize("lab", LABS)
def test_release_command_writes_the_student_version(lab, tmp_path, capsys):
    assert cli_main(["release", str(ROOT / "labs" / lab), "--out", str(tmp_path)]) == 0
    assert "released" in capsys.readouterr().out
    student = nbformat.read(str(tmp_path / f"{lab}.ipynb"), as_version=4)
    code = "\n".join(c.source for c in student.cells if c.cell_type == "code")
    assert "# YOUR CODE HERE" in code and "raise NotImplementedError" in code
    assert sum("parameters" in c.metadata.get("tags", []) for c in student.cells) == 1
    assert all(not c.get("outputs") for c in student.cells if c.cell_type == "code")


def test_release_command_reports_a_bad_lab(tmp_path, capsys):
    assert cli_main(["release", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    assert "no lab found" in capsys.readouterr().err
