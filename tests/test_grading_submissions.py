"""End-to-end grading: real kernels run the labs' reference solutions, their released (unfilled) versions and the
deliberately broken submissions in tests/fixtures/submissions, two at a time, with the limits below.

The expected scores are what the failure modes should cost and nothing more (see make_fixtures.py). Lab 1's batch
also holds the attacks on the grader itself (``attack_*``, and a FIFO handed in as a notebook): each is graded as
expected, achieves nothing (the line it prints says so), and the files it went for, the project tree, site-packages,
the grader's data cache and the grades of students graded earlier are byte-identical afterwards.
"""

import csv
import hashlib
import io
import json
import os
import shutil
import sysconfig
import time
from pathlib import Path

import nbformat
import psutil
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
    "fifo": ("refused", dict.fromkeys(FULL1, 0), "not a regular file"),
    **{
        f"attack_{name}": ("graded", dict.fromkeys(FULL1, 0), "is not defined in your notebook")
        for name in ("site_packages", "pycache", "rewrite_grader", "signal_grader", "poison_cache", "daemon", "bloat")
    },
}
# what each attack that runs to its end prints about what it achieved (in its executed notebook)
ATTACK_LINES = {
    "attack_site_packages": "ATTACK site_packages: 0 of 2 files written",
    "attack_pycache": "ATTACK pycache: 0 of 2 files written",
    "attack_rewrite_grader": "ATTACK rewrite_grader: 0 of 7 files written, 1 visible",
    "attack_signal_grader": "ATTACK signal_grader: 0 grader or runner processes signalled",
    "attack_poison_cache": "ATTACK poison_cache: 0 grader caches overwritten",
}
BYSTANDERS = ("empty", "not_a_notebook")  # graded in an earlier batch; their grades must not change by a byte


def _points(result: dict) -> dict:
    return {q["id"]: q["points"] for q in result["questions"] if not q["manual"]}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "absent"


def _protected(cache: Path) -> dict[str, str]:
    """What the attacks went for: the grader's code and the labs, the packages the grader imports, the places a
    planted .pth or .pyc would go, and the grader's data cache."""
    state = {}
    for folder in (ROOT / "dgmlab" / "grading", ROOT / "labs"):
        for p in sorted(folder.rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts:
                state[str(p)] = _sha(p)
    purelib = Path(sysconfig.get_paths()["purelib"])
    import mlxtend

    state["mlxtend"] = _sha(Path(mlxtend.__file__))
    state[".pth files"] = " ".join(sorted(f"{p.name}:{_sha(p)}" for p in purelib.glob("*.pth")))
    for d in (ROOT / "dgmlab" / "__pycache__", ROOT / "dgmlab" / "grading" / "__pycache__"):
        state[f"planted in {d}"] = " ".join(sorted(p.name for p in d.glob("zz_*")))
    for p in sorted(cache.glob("*")):
        state[str(p)] = _sha(p)
    return state


@pytest.fixture(scope="module")
def lab1_batch(tmp_path_factory):
    """Grade the lab 1 reference, its released version, every broken submission and every attack, 2 workers; the
    bystanders were graded in an earlier batch (and are resumed in this one)."""
    from dgmlab.grading.grade import prepare_grader

    root = tmp_path_factory.mktemp("grading-lab1")
    (root / "HOSTILE_TEST_ROOT").write_text("the hostile fixture may attack files under this folder")
    subs = root / "submissions"
    subs.mkdir()
    for nb in sorted((FIXTURES / "lab1").glob("*.ipynb")):
        if nb.name.startswith("attack_") and _no_sandbox():
            continue  # without the OS sandbox an attack would really tamper with this checkout: not handed in
        shutil.copy(nb, subs / nb.name)
    os.mkfifo(subs / "fifo.ipynb")  # a named pipe handed in as a notebook: reading it would block
    lab = load_lab(ROOT / "labs" / "lab1_vae")
    shutil.copy(lab.notebook, subs / "reference.ipynb")
    released = release(lab.notebook, root / "release")
    shutil.copy(released, subs / "released_unfilled.ipynb")
    for key, value in LIMITS.items():
        setattr(lab.limits, key, value)
    cache = root / "grader-cache"  # the grader's data cache, with a copy of the embedded MNIST in it
    cache.mkdir()
    (cache / "HOSTILE_TEST_ROOT").write_text("the poison_cache attack may overwrite the data here")
    for f in prepare_grader(lab).glob("*.npz"):
        shutil.copy(f, cache / f.name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DGMLAB_CACHE", str(cache))
        out = root / "out"
        grade(lab, [subs / f"{b}.ipynb" for b in BYSTANDERS], out, progress=False)
        before = {b: (out / "students" / b / "result.json").read_bytes() for b in BYSTANDERS}
        protected = _protected(cache)
        paths = sorted(subs.glob("*.ipynb"))
        results = grade(lab, paths, out, workers=2, progress=False, work_root=root / "runs")
        after = _protected(cache)
        kept = {b: (out / "students" / b / "result.json").read_bytes() for b in BYSTANDERS}
    time.sleep(1)
    daemons = [p.pid for p in psutil.process_iter(["cmdline"]) if "dgmlab-fixture-daemon" in (p.info["cmdline"] or [])]
    untouched = {"protected": (protected, after), "bystanders": (before, kept), "daemons": daemons}
    return lab, root, {r["student"]: r for r in results}, untouched


@pytest.mark.parametrize("student", sorted(EXPECTED_LAB1))
def test_lab1_submission_scores(lab1_batch, student):
    if student.startswith("attack_") and _no_sandbox():
        pytest.skip(f"attack fixtures are graded only in the sandbox: {_no_sandbox()}")
    _, root, results, _ = lab1_batch
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
    _, root, results, _ = lab1_batch
    folder = root / "out" / "students" / "huge_output"
    stored = sum(f.stat().st_size for f in folder.iterdir())
    assert stored < 2 * 2**20, stored  # it printed 30 MB; the grader keeps 1 MB of a cell's output
    assert (
        "output passed the 1 MB" in next(row for row in _gradebook(root) if row["student"] == "huge_output")["reason"]
    )


def test_forbidden_uses_outside_graded_functions_are_in_the_gradebook(lab1_batch):
    _, root, results, _ = lab1_batch
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
    lab, root, results, _ = lab1_batch
    hostile = _points(results["hostile"])
    assert hostile["kl"] == 4  # the wrong KL: shape and gradient only, whatever it did to torch.allclose
    # without the sandbox it deleted the submission files and rewrote any result it found (the grader had read the
    # submissions first and rewrote every result from memory at the end); in the sandbox it saw none of them
    left = sorted(p.name for p in (root / "submissions").glob("*.ipynb"))
    if results["hostile"]["settings"]["sandbox"] == "bwrap":
        assert len(left) == len(results), left  # every notebook handed in is still there
    else:
        assert not left
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
    lab, root, _, _ = lab1_batch
    checks_source = (lab.folder / "checks.py").read_text()
    for feedback in (root / "out" / "students").glob("*/feedback.md"):
        text = feedback.read_text()
        assert "VAL_THRESHOLD" not in text and "_neg_elbo" not in text and "def " not in text
        assert "1.3069" not in text  # the value of answer_kl
    assert "1.3069" not in (lab.folder / "export.py").read_text()  # the kernel-side code holds no answers
    assert "def _kl" in checks_source


def test_regrading_is_resumable(lab1_batch):
    lab, root, results, _ = lab1_batch
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


def _outputs(root: Path, student: str) -> str:
    nb = nbformat.read(str(root / "out" / "students" / student / "executed.ipynb"), as_version=4)
    return "".join(str(o.get("text", "")) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def _no_sandbox() -> str:
    from dgmlab.grading import sandbox

    return sandbox.probe()


# these attacks are stopped by the OS sandbox alone: without a working bubblewrap they are skipped, with its reason
needs_bwrap = pytest.mark.skipif(bool(_no_sandbox()), reason=f"{_no_sandbox()}; .ci/run installs bubblewrap")


@needs_bwrap
@pytest.mark.parametrize("student", sorted(ATTACK_LINES))
def test_each_attack_achieves_nothing(lab1_batch, student):
    _, root, results, _ = lab1_batch
    assert results[student]["settings"]["sandbox"] == "bwrap", "these attacks are only stopped by the sandbox"
    assert ATTACK_LINES[student] in _outputs(root, student)


@needs_bwrap
def test_attacks_leave_every_file_byte_identical_and_no_process_behind(lab1_batch):
    _, root, results, untouched = lab1_batch
    before, after = untouched["protected"]
    assert after == before  # the project tree, site-packages, the lab files, the grader's data cache
    assert untouched["daemons"] == []  # the double-forked daemon died with its sandbox
    before, kept = untouched["bystanders"]
    assert kept == before  # graded in the earlier batch: not a byte of their grades changed in this one


@needs_bwrap
def test_bloated_run_files_are_cut_not_loaded(lab1_batch):
    _, root, results, _ = lab1_batch
    r = results["attack_bloat"]
    assert r["run"]["status"] == "runner_error" and "300.0 MiB" in r["run"]["message"]
    assert any("could not be kept" in n and "500.0 MiB" in n for n in r["notes"])
    folder = root / "out" / "students" / "attack_bloat"
    assert sum(f.stat().st_size for f in folder.iterdir()) < 2**20  # 800 MB planted, kilobytes kept
    assert results["attack_daemon"]["run"]["status"] == "runner_error"  # it killed its runner: no status


FULL2 = {"dloss": 15, "gloss": 15, "steps": 20, "training": 20, "snapshots": 5, "interpolate": 10, "answers": 10}
NO_TRAINING2 = {**FULL2, "training": 0, "snapshots": 0}
EXPECTED_LAB2 = {
    "reference": ("graded", FULL2, "95 / 95"),
    "released_unfilled": ("graded", dict.fromkeys(FULL2, 0), "not written yet"),
    "empty": ("unreadable", dict.fromkeys(FULL2, 0), "the file is empty"),
    "not_a_notebook": ("unreadable", dict.fromkeys(FULL2, 0), "not a Jupyter notebook"),
    "syntax_and_missing": ("graded", {**FULL2, "interpolate": 0, "answers": 0}, "syntax error in cell"),
    "hang": ("graded", NO_TRAINING2, "time limit of 75 s"),
    "memory_bomb": ("graded", NO_TRAINING2, "memory limit of 3000 MB"),
    "os_exit": ("graded", NO_TRAINING2, "kernel died"),
    "sys_exit": ("graded", NO_TRAINING2, "called sys.exit()"),
    "forbidden": ("review", {**FULL2, "gloss": 0}, "torch.distributions is not allowed"),
    "forbidden_top_level": ("review", FULL2, "your instructor will review"),
    "overrides_params": ("graded", NO_TRAINING2, "epochs = 2 but the grader set epochs = 4"),
    "laundered_budget": ("graded", NO_TRAINING2, "while your model trained, epochs was 5"),
    "naive_dloss": ("graded", {**FULL2, "dloss": 11}, "NaN or infinite"),
    "huge_output": ("graded", FULL2, "output passed the 1 MB the grader keeps"),
    # the minimax loss also costs the generator step's check (it returns that loss) and the trained samples
    "saturating": ("graded", {**FULL2, "gloss": 0, "steps": 16, "training": 5}, "saturating minimax loss"),
}


@pytest.fixture(scope="module")
def lab2_batch(tmp_path_factory):
    """Lab 2's reference, released version and broken submissions, graded through the command line, 2 workers."""
    lab = load_lab(ROOT / "labs" / "lab2_gan")
    root = tmp_path_factory.mktemp("grading-lab2")
    subs = root / "subs"
    subs.mkdir()
    for nb in sorted((FIXTURES / "lab2").glob("*.ipynb")):
        shutil.copy(nb, subs / nb.name)
    shutil.copy(lab.notebook, subs / "reference.ipynb")
    shutil.copy(release(lab.notebook, root / "release"), subs / "released_unfilled.ipynb")
    limits = ["--cell-timeout", str(LIMITS["cell_timeout_s"]), "--total-timeout", str(LIMITS["total_timeout_s"])]
    code = cli_main(["grade", str(lab.folder), str(subs), "--out", str(root / "out"), "--workers", "2", *limits])
    results = json.loads((root / "out" / "gradebook.json").read_text())["results"]
    return lab, root, code, {r["student"]: r for r in results}


def test_lab2_batch_is_graded_from_the_command_line(lab2_batch, capsys):
    lab, _, code, results = lab2_batch
    assert code == 0 and sorted(results) == sorted(EXPECTED_LAB2)
    assert results["reference"]["total"] == results["reference"]["max_total"] == lab.auto_points == 95


@pytest.mark.parametrize("student", sorted(EXPECTED_LAB2))
def test_lab2_submission_scores(lab2_batch, student):
    _, root, _, results = lab2_batch
    status, points, phrase = EXPECTED_LAB2[student]
    r = results[student]
    assert r["status"] == status
    assert _points(r) == points, json.dumps(r["questions"], indent=1)[:3000]
    assert phrase in (root / "out" / "students" / student / "feedback.md").read_text()
