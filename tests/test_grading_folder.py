"""What the grader reads from a messy class folder and what it writes: one row per submission found, stable unique
ids, no ghost rows, no symlinks out of the folder, old notebook formats upgraded (issue 15).

These tests need no kernel: the submissions are unreadable on purpose (each in its own recognisable way), so a
row can be traced back to the file it came from by its reason.
"""

import copy
import csv
import io
import json
import os
from pathlib import Path

import nbformat
import pytest

from dgmlab.grading import grade as g
from dgmlab.grading.cli import main as cli_main
from dgmlab.grading.lab import load_lab
from dgmlab.grading.notebook import SubmissionError, parse_notebook

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lab():
    return load_lab(ROOT / "labs" / "lab1_vae")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _rows(out: Path) -> dict[str, dict]:
    rows = list(csv.DictReader(io.StringIO((out / "gradebook.csv").read_text())))
    assert len({r["student"] for r in rows}) == len(rows)
    return {r["student"]: r for r in rows}


def test_ids_are_unique_stable_and_independent_of_order(lab, tmp_path):
    names = ["dup id.ipynb", "dup_id.ipynb", "dup_id_2.ipynb", "alice.ipynb", "alice/lab1_vae.ipynb", "Alice.ipynb"]
    paths = [tmp_path / n for n in names]
    ids = g.student_ids(paths, lab)
    assert len({i.lower() for i in ids}) == len(ids) == 6
    by_name = dict(zip(names, ids))
    assert by_name["dup_id.ipynb"] == "dup_id" and by_name["dup_id_2.ipynb"] == "dup_id_2"  # the names that fit
    assert by_name["dup id.ipynb"].startswith("dup_id-") and len(by_name["dup id.ipynb"]) == len("dup_id-") + 6
    assert by_name["alice/lab1_vae.ipynb"] == "alice-lab1_vae"
    assert {by_name["alice.ipynb"], by_name["Alice.ipynb"]} & {"alice", "Alice"}  # one keeps it, one gets a suffix
    for order in (list(reversed(range(6))), [2, 0, 4, 1, 5, 3]):
        again = dict(zip([names[i] for i in order], g.student_ids([paths[i] for i in order], lab)))
        assert again == by_name
    notes = dict(zip(names, (n for _, n in g.assign_ids(paths, lab))))
    assert "another submission has the id 'dup_id'" in notes["dup id.ipynb"] and notes["dup_id.ipynb"] == ""


def test_every_submission_gets_its_own_row_and_keeps_it_when_resumed(lab, tmp_path, capsys):
    subs = tmp_path / "subs"
    _write(subs / "dup id.ipynb", "this one is text")
    (subs / "dup_id.ipynb").write_bytes(b"")
    _write(subs / "dup_id_2.ipynb", '{"a": 1}')
    _write(subs / "alice.ipynb", "alice's text")
    (subs / "alice").mkdir()
    (subs / "alice" / "lab1_vae.ipynb").write_bytes(b"")
    _write(subs / ".ipynb_checkpoints" / "alice-checkpoint.ipynb", "an editor's copy, not a submission")
    _write(subs / "bob" / "lab1_vae.py", "handed in as a script")
    out = tmp_path / "out"
    base = ["grade", str(ROOT / "labs" / "lab1_vae"), str(subs), "--out", str(out), "--quiet"]
    assert cli_main(base) == 0
    captured = capsys.readouterr()
    terminal = captured.out
    assert "not graded (not .ipynb files)" in captured.err and os.path.join("bob", "lab1_vae.py") in captured.err
    rows = _rows(out)
    assert len(rows) == 5  # the checkpoint copy is not a student
    reasons = {sid: r["reason"] for sid, r in rows.items()}
    assert "empty" in reasons["dup_id"] and "no list of cells" in reasons["dup_id_2"]
    suffixed = next(sid for sid in rows if sid.startswith("dup_id-"))
    assert "not a Jupyter notebook" in reasons[suffixed] and rows[suffixed]["file"].endswith("dup id.ipynb")
    assert "another submission has the id 'dup_id'" in rows[suffixed]["id_note"]
    assert rows["alice-lab1_vae"]["file"].endswith(os.path.join("alice", "lab1_vae.ipynb"))
    assert suffixed in terminal and "alice-lab1_vae" in terminal  # the ids that are not the file name are reported

    # resumed with a late submission named like an existing id: everyone keeps their id and their row
    _write(subs / "dup-id" / "dup_id.ipynb", "late")
    assert cli_main(base) == 0
    again = _rows(out)
    assert set(rows) < set(again) and len(again) == 6
    for sid, row in rows.items():
        assert again[sid]["reason"] == row["reason"] and again[sid]["file"] == row["file"], sid
    capsys.readouterr()


def test_files_planted_in_the_output_folder_never_become_rows(lab, tmp_path):
    subs = tmp_path / "subs"
    (subs).mkdir()
    (subs / "ann.ipynb").write_bytes(b"")
    out = tmp_path / "out"
    g.grade(lab, [subs / "ann.ipynb"], out, progress=False)
    ghost = {"student": "ghost", "total": 100, "max_total": 100, "status": "graded", "questions": [], "notes": []}
    _write(out / "students" / "ghost" / "result.json", json.dumps(ghost))  # as a kernel could during a batch
    g.grade(lab, [subs / "ann.ipynb"], out, progress=False)
    assert set(_rows(out)) == {"ann"}
    book = json.loads((out / "gradebook.json").read_text())
    assert [r["student"] for r in book["results"]] == ["ann"]


def test_a_symlink_out_of_the_submissions_folder_is_refused(lab, tmp_path):
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "bob.ipynb").symlink_to(lab.notebook)  # the lab's own solution, as an extracted archive can hold
    (subs / "inside.ipynb").write_bytes(b"")
    (subs / "carol.ipynb").symlink_to(subs / "inside.ipynb")  # a link inside the folder is a file inside it
    os.mkfifo(subs / "pipe.ipynb")  # reading it would block the grader forever
    out = tmp_path / "out"
    results = {r["student"]: r for r in g.grade(lab, sorted(subs.glob("*.ipynb")), out, progress=False, root=subs)}
    bob = results["bob"]
    assert bob["status"] == "refused" and bob["total"] == 0
    assert "symbolic link" in bob["notes"][0] and "outside the submissions folder" in bob["notes"][0]
    assert "symbolic link" in _rows(out)["bob"]["reason"]
    assert results["carol"]["status"] == "unreadable" and "empty" in results["carol"]["notes"][0]
    assert results["pipe"]["status"] == "refused" and "not a regular file" in results["pipe"]["notes"][0]
    feedback = (out / "students" / "bob" / "feedback.md").read_text()
    assert "symbolic link" in feedback and "BEGIN SOLUTION" not in feedback


def test_a_symlinked_folder_leading_out_is_refused_too(lab, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "dave.ipynb").write_text("x")
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "dave").symlink_to(elsewhere, target_is_directory=True)
    r = g.grade(lab, [subs / "dave" / "dave.ipynb"], tmp_path / "out", progress=False, root=subs)[0]
    assert r["status"] == "refused" and "outside the submissions folder" in r["notes"][0]


def test_old_notebook_formats_are_upgraded(lab):
    nb = nbformat.read(str(lab.notebook), as_version=4)
    v3 = nbformat.writes(nbformat.convert(copy.deepcopy(nb), 3), version=3)
    assert '"worksheets"' in v3 and '"nbformat": 3' in v3
    upgraded = parse_notebook(v3.encode(), "old.ipynb")
    assert upgraded.nbformat == 4 and len(upgraded.cells) == len(nb.cells)
    assert [c.source for c in upgraded.cells if c.cell_type == "code"] == [
        c.source for c in nb.cells if c.cell_type == "code"
    ]
    assert any("parameters" in c.metadata.get("tags", []) for c in upgraded.cells)
    with pytest.raises(SubmissionError, match="not a Jupyter notebook"):
        parse_notebook(b'{"worksheets": [], "nbformat": 3', "broken.ipynb")
    with pytest.raises(SubmissionError, match="without its nbformat version"):
        parse_notebook(b'{"worksheets": []}', "odd.ipynb")
