"""End-to-end grading: real kernels run the labs' reference solutions, their released (unfilled) versions and the
deliberately broken submissions in tests/fixtures/submissions, two at a time, with the limits below.

The expected scores are what the failure modes should cost and nothing more (see make_fixtures.py).
"""

import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from dgmlab.grading.cli import main as cli_main
from dgmlab.grading.grade import grade
from dgmlab.grading.lab import load_lab
from dgmlab.grading.release import release

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "submissions"
LIMITS = {"cell_timeout_s": 30.0, "total_timeout_s": 75.0, "memory_mb": 3000.0}
FULL1 = {
    "reparam": 10,
    "kl": 10,
    "elbo": 15,
    "train_step": 10,
    "training": 20,
    "samples": 5,
    "manifold": 15,
    "answers": 15,
}
NO_TRAINING = {**FULL1, "training": 0, "samples": 0}

# submission -> (expected status, expected points per question, a phrase its feedback must contain)
EXPECTED_LAB1 = {
    "reference": ("graded", FULL1, "100 / 100"),
    "correct_messy": ("graded", FULL1, "100 / 100"),
    "empty": ("unreadable", dict.fromkeys(FULL1, 0), "the file is empty"),
    "not_a_notebook": ("unreadable", dict.fromkeys(FULL1, 0), "not a Jupyter notebook"),
    "syntax_and_missing": ("graded", {**FULL1, "manifold": 0, "answers": 0}, "syntax error in cell"),
    "hang": ("graded", NO_TRAINING, "time limit of 75 s"),
    "memory_bomb": ("graded", NO_TRAINING, "memory limit of 3000 MB"),
    "dataloader_workers": ("graded", FULL1, "100 / 100"),
    "old_format_v3": ("graded", FULL1, "100 / 100"),
    "huge_output": ("graded", FULL1, "output passed the 1 MB the grader keeps"),
    "many_cells": ("graded", FULL1, "100 / 100"),
    "forbidden_top_level": ("review", FULL1, "your instructor will review"),
    "laundered_budget": ("graded", NO_TRAINING, "while your model trained, epochs was 15"),
    "os_exit": ("graded", NO_TRAINING, "kernel died"),
    "sys_exit": ("graded", NO_TRAINING, "called sys.exit()"),
    "forbidden": ("review", {**FULL1, "reparam": 0, "kl": 0}, "torch.distributions is not allowed"),
    "overrides_params": ("graded", NO_TRAINING, "epochs = 3 but the grader set epochs = 5"),
}


def _points(result: dict) -> dict:
    return {q["id"]: q["points"] for q in result["questions"] if not q["manual"]}


@pytest.fixture(scope="module")
def lab1_batch(tmp_path_factory):
    """Grade the lab 1 reference, its released version and every broken submission, 2 workers."""
    root = tmp_path_factory.mktemp("grading-lab1")
    (root / "HOSTILE_TEST_ROOT").write_text("the hostile fixture may attack files under this folder")
    subs = root / "submissions"
    subs.mkdir()
    for nb in sorted((FIXTURES / "lab1").glob("*.ipynb")):
        shutil.copy(nb, subs / nb.name)
    lab = load_lab(ROOT / "labs" / "lab1_vae")
    shutil.copy(lab.notebook, subs / "reference.ipynb")
    released = release(lab.notebook, root / "release")
    shutil.copy(released, subs / "released_unfilled.ipynb")
    for key, value in LIMITS.items():
        setattr(lab.limits, key, value)
    paths = sorted(subs.glob("*.ipynb"))
    results = grade(lab, paths, root / "out", workers=2, progress=False, work_root=root / "runs")
    return lab, root, {r["student"]: r for r in results}


@pytest.mark.parametrize("student", sorted(EXPECTED_LAB1))
def test_lab1_submission_scores(lab1_batch, student):
    _, root, results = lab1_batch
    status, points, phrase = EXPECTED_LAB1[student]
    r = results[student]
    assert r["status"] == status
    assert _points(r) == points, json.dumps(r["questions"], indent=1)[:3000]
    feedback = (root / "out" / "students" / student / "feedback.md").read_text()
    assert phrase in feedback


def test_memory_counts_shared_pages_once_and_still_stops_a_bomb(lab1_batch):
    results = lab1_batch[2]
    workers = results["dataloader_workers"]["run"]  # a kernel and six DataLoader workers sharing its pages
    limit = LIMITS["memory_mb"]
    assert workers["status"] == "completed"
    assert workers["peak_rss_mb"] > limit  # what summing RSS counted: the old watchdog killed this correct run
    assert 0 < workers["peak_pss_mb"] < limit and workers["peak_memory_mb"] <= limit
    bomb = results["memory_bomb"]["run"]
    assert bomb["status"] == "memory" and limit < bomb["stopped_at_mb"] < limit + 300, bomb


def test_huge_outputs_are_capped_on_disk(lab1_batch):
    _, root, results = lab1_batch
    folder = root / "out" / "students" / "huge_output"
    stored = sum(f.stat().st_size for f in folder.iterdir())
    assert stored < 2 * 2**20, stored  # it printed 30 MB; the grader keeps 1 MB of a cell's output
    assert (
        "output passed the 1 MB" in next(row for row in _gradebook(root) if row["student"] == "huge_output")["reason"]
    )


def test_forbidden_uses_outside_graded_functions_are_in_the_gradebook(lab1_batch):
    _, root, results = lab1_batch
    r = results["forbidden_top_level"]
    assert r["status"] == "review" and r["total"] == 100
    review = " ".join(r["review"])
    assert "`import torch.distributions`" in review and "at top level" in review
    assert "used torch.distributions.Normal at run time (cell" in review  # the sys.modules route, with its cell
    row = next(row for row in _gradebook(root) if row["student"] == "forbidden_top_level")
    assert row["status"] == "review" and "at run time" in row["reason"]


def test_many_cells_cost_linear_time(lab1_batch):
    many = lab1_batch[2]["many_cells"]["run"]
    assert many["status"] == "completed" and many["seconds"] < LIMITS["total_timeout_s"]


def _gradebook(root: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO((root / "out" / "gradebook.csv").read_text())))


def test_naive_elbo_loses_only_the_stability_check(lab1_batch):
    r = lab1_batch[2]["naive_elbo"]
    elbo = next(q for q in r["questions"] if q["id"] == "elbo")
    assert [c["name"] for c in elbo["checks"] if not c["passed"]] == ["stable"]
    assert "NaN or infinite" in next(c["message"] for c in elbo["checks"] if c["name"] == "stable")


def test_hostile_submission_gains_nothing_and_harms_no_one(lab1_batch):
    lab, root, results = lab1_batch
    hostile = _points(results["hostile"])
    assert hostile["kl"] == 4  # the wrong KL: shape and gradient only, whatever it did to torch.allclose
    # it deleted the submission files and rewrote any result it found: the grader had read the submissions first
    # and rewrote every result from memory at the end
    assert not list((root / "submissions").glob("*.ipynb"))
    text = (root / "out" / "gradebook.csv").read_text()
    assert text.startswith("student,reparam,kl,elbo")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert sorted(row["student"] for row in rows) == sorted(results)  # one row per submission, no other
    for row in rows:
        assert float(row["total"]) == results[row["student"]]["total"]
    on_disk = json.loads((root / "out" / "students" / "reference" / "result.json").read_text())
    assert on_disk["total"] == 100 and _points(on_disk) == FULL1


def test_released_version_gets_zero_on_code_without_crashing(lab1_batch):
    r = lab1_batch[2]["released_unfilled"]
    assert r["status"] == "graded" and r["total"] == 0
    messages = [c["message"] for q in r["questions"] if not q["manual"] for c in q["checks"]]
    assert any("not written yet" in m for m in messages)


def test_feedback_does_not_leak_hidden_material(lab1_batch):
    lab, root, _ = lab1_batch
    checks_source = (lab.folder / "checks.py").read_text()
    for feedback in (root / "out" / "students").glob("*/feedback.md"):
        text = feedback.read_text()
        assert "VAL_THRESHOLD" not in text and "_neg_elbo" not in text and "def " not in text
        assert "1.3069" not in text  # the value of answer_kl
    assert "1.3069" not in (lab.folder / "export.py").read_text()  # the kernel-side code holds no answers
    assert "def _kl" in checks_source


def test_regrading_is_resumable(lab1_batch):
    lab, root, results = lab1_batch
    # a student already graded is skipped (same file content, same lab version): the result is reused
    shutil.copy(FIXTURES / "lab1" / "empty.ipynb", root / "empty.ipynb")
    before = json.loads((root / "out" / "students" / "empty" / "result.json").read_text())
    skipped = grade(lab, [root / "empty.ipynb"], root / "out", progress=False)
    assert skipped[0]["graded_at"] == before["graded_at"]
    forced = grade(lab, [root / "empty.ipynb"], root / "out", progress=False, force=True)
    assert forced[0]["graded_at"] > before["graded_at"] and forced[0]["status"] == "unreadable"
    # a new student joins the gradebook next to everyone graded before
    (root / "late.ipynb").write_text("not a notebook")
    grade(lab, [root / "late.ipynb"], root / "out", progress=False)
    rows = (root / "out" / "gradebook.csv").read_text().splitlines()
    assert len(rows) == 1 + len(results) + 1 and any(r.startswith("late,") for r in rows)


def test_lab2_reference_released_and_saturating_loss(tmp_path, capsys):
    lab = load_lab(ROOT / "labs" / "lab2_gan")
    subs = tmp_path / "subs"
    subs.mkdir()
    shutil.copy(lab.notebook, subs / "reference.ipynb")
    shutil.copy(FIXTURES / "lab2" / "saturating.ipynb", subs / "saturating.ipynb")
    shutil.copy(release(lab.notebook, tmp_path / "release"), subs / "released_unfilled.ipynb")
    code = cli_main(
        ["grade", str(ROOT / "labs" / "lab2_gan"), str(subs), "--out", str(tmp_path / "out"), "--workers", "2"]
    )
    assert code == 0
    assert "3 submission(s)" in capsys.readouterr().out
    results = json.loads((tmp_path / "out" / "gradebook.json").read_text())["results"]
    by = {r["student"]: r for r in results}
    assert by["reference"]["total"] == by["reference"]["max_total"] == lab.auto_points
    assert by["released_unfilled"]["total"] == 0
    gloss = next(q for q in by["saturating"]["questions"] if q["id"] == "gloss")
    assert gloss["points"] == 0
    assert "saturating minimax loss" in next(c["message"] for c in gloss["checks"] if c["name"] == "values")
    assert _points(by["saturating"])["dloss"] == 15 and _points(by["saturating"])["interpolate"] == 10
