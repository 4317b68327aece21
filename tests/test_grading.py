"""Fast tests of the grading machinery that need no kernel: release, static checks, the data loader, the
exporter, the judge, the gradebook, and the labs' rubrics."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from dgmlab.grading import grade as g
from dgmlab.grading import kernel
from dgmlab.grading.judge import Context, ExportData, Fail, expect_close
from dgmlab.grading.lab import LabError, load_lab
from dgmlab.grading.notebook import SubmissionError, definitions_only, parse_notebook, read_notebook, scan
from dgmlab.grading.release import ReleaseError, release, release_notebook

ROOT = Path(__file__).resolve().parents[1]
LABS = ["lab1_vae", "lab2_gan"]


def nb_of(*sources, tags=None):
    cells = [nbformat.v4.new_code_cell(s) for s in sources]
    if tags:
        cells[0].metadata["tags"] = tags
    return nbformat.v4.new_notebook(cells=cells)


# --- release ---------------------------------------------------------------------------------------------------

SOURCE = nb_of(
    "x = 1",
    "def f(a):\n    '''doc'''\n    ### BEGIN SOLUTION\n    secret_value = a * 4242\n"
    "    return secret_value\n    ### END SOLUTION",
    tags=["parameters"],
)


def test_release_replaces_solutions_and_strips_everything_else(tmp_path):
    nb = nbformat.from_dict(json.loads(json.dumps(SOURCE)))
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="secret_value = 4242\n")]
    nb.cells[1].execution_count = 3
    nb.cells[1].metadata["secret"] = "secret_value"
    nb.cells.append(
        nbformat.v4.new_markdown_cell("Answer:\n### BEGIN SOLUTION\nThe hidden prose answer.\n### END SOLUTION")
    )
    nb.cells.append(nbformat.v4.new_code_cell("assert f(1) == 4242", metadata={"tags": ["remove-in-release"]}))
    nb.metadata["papermill"] = {"parameters": {"secret_value": 1}}
    src = tmp_path / "lab.ipynb"
    nbformat.write(nb, str(src))
    out = release(src, tmp_path / "release")
    text = out.read_text()
    for trace in ("secret_value", "4242", "hidden prose", "BEGIN SOLUTION", "papermill"):
        assert trace not in text, trace
    student = nbformat.read(str(out), as_version=4)
    assert "raise NotImplementedError" in student.cells[1].source and "    # YOUR CODE HERE" in student.cells[1].source
    assert "YOUR ANSWER HERE" in student.cells[2].source
    assert len(student.cells) == 3 and all(c.get("outputs", []) == [] for c in student.cells if c.cell_type == "code")
    assert student.cells[0].metadata["tags"] == ["parameters"]


@pytest.mark.parametrize(
    "source", ["### BEGIN SOLUTION\nx = 1", "x = 1\n### END SOLUTION", "### BEGIN SOLUTION\n### BEGIN SOLUTION\n"]
)
def test_release_rejects_unbalanced_markers(source):
    with pytest.raises(ReleaseError):
        release_notebook(nb_of(source))


@pytest.mark.parametrize("lab", LABS)
def test_released_labs_hold_no_solution_line(lab, tmp_path):
    source = ROOT / "labs" / lab / f"{lab}.ipynb"
    student, removed = release_notebook(read_notebook(source))
    text = release(source, tmp_path).read_text()
    public = {line.strip() for c in student.cells for line in c.source.splitlines()}  # e.g. "with torch.no_grad():"
    code = [line.strip() for line in removed if len(line.strip()) > 15 and not line.strip().startswith("#")]
    code = [line for line in code if line not in public]
    assert code and not [line for line in code if line in text]
    assert text.count("raise NotImplementedError") >= 4


# --- reading submissions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty"),
        (b"def f(): pass", "not a Jupyter notebook"),
        (b'{"a": 1}', "no list of cells"),
        (b'{"cells": [{"cell_type": "nonsense"}], "nbformat": 4, "nbformat_minor": 5, "metadata": {}}', "invalid"),
        (b"\xff\xfe\x00", "not a Jupyter notebook"),
    ],
)
def test_unreadable_submissions_get_a_reason(content, reason):
    with pytest.raises(SubmissionError, match=reason):
        parse_notebook(content, "alice.ipynb")


# --- static checks ---------------------------------------------------------------------------------------------

FORBIDDEN = ("torch.distributions",)


@pytest.mark.parametrize(
    "code",
    [
        "import torch.distributions",
        "import torch.distributions as td",
        "from torch import distributions",
        "from torch.distributions import Normal",
        "from torch.distributions.normal import Normal as N",
        "import torch as T\ndef f():\n    return T.distributions.Normal(0, 1)",
        "import torch\ndef f():\n    return getattr(torch, 'distributions')",
        "import importlib\ndef f():\n    return importlib.import_module('torch.distributions')",
        "def f():\n    return __import__('torch.distributions')",
        "import sys\ndef f():\n    return sys.modules['torch.distributions']",
    ],
)
def test_static_scan_finds_forbidden_module_however_reached(code):
    report = scan(nb_of(code), FORBIDDEN)
    assert report.findings, code


def test_static_scan_attributes_uses_to_functions_and_their_helpers():
    report = scan(
        nb_of(
            "from torch.distributions import Normal",
            "def helper(m):\n    return Normal(m, 1).rsample()",
            "def graded(m):\n    return helper(m)",
            "def other_graded(m):\n    return graded(m)",
            "def clean(m):\n    import torch\n    return torch.randn_like(m)",
        ),
        FORBIDDEN,
    )
    assert report.forbidden_in("graded") and report.forbidden_in("helper")
    assert not report.forbidden_in("clean")
    # another graded function answers for itself: calling it does not spread the penalty
    assert report.forbidden_in("other_graded") and not report.forbidden_in("other_graded", stop={"graded"})
    assert set(report.functions) == {"helper", "graded", "other_graded", "clean"}


def test_static_scan_ignores_allowed_code_and_reports_syntax_errors():
    report = scan(
        nb_of("import torch\nx = torch.distributions_like = 3", "def f(:\n  pass", "%matplotlib inline"), FORBIDDEN
    )
    assert not report.findings
    assert report.syntax_errors == ["cell 2, line 1: invalid syntax"] or report.syntax_errors[0].startswith("cell 2")


@pytest.mark.parametrize(
    "code",
    [
        "x = !ls\nimport torch.distributions",
        "files = !ls -la\n%matplotlib inline\nfrom torch.distributions import Normal",
        "len?\nimport torch.distributions as td",
        "%time import torch.distributions",
        "%%capture out\nimport torch\nd = torch.distributions.Normal(0, 1)",
        "%%time\nfrom torch import distributions",
    ],
)
def test_static_scan_reads_through_ipython_magics(code):
    report = scan(nb_of(code), FORBIDDEN)
    assert not report.syntax_errors, report.syntax_errors
    assert report.findings, code


@pytest.mark.parametrize(
    "code", ["x = !ls", "%time y = 1", "%%bash\necho hi", "%%capture\nprint(1)", "len?", "!pip list"]
)
def test_a_magic_alone_is_not_a_syntax_error(code):
    report = scan(nb_of(code, "def after():\n    return 1"), FORBIDDEN)
    assert report.syntax_errors == [] and not report.findings and "after" in report.functions


def test_findings_inside_cell_magics_keep_their_line_numbers():
    report = scan(nb_of("%%capture\nimport torch\n\nfrom torch.distributions import Normal"), FORBIDDEN)
    assert [(f.cell, f.line) for f in report.findings] == [(0, 4)]


def test_definitions_only_keeps_definitions_and_drops_work():
    nb = nb_of(
        "import torch\nN = 3\ndevice = torch.device('cpu')\nanswer_kl = 0.5 * abs(-2)\nwhile True:\n    pass",
        "@staticmethod\ndef f(x):\n    return x\ntrain(model)",
        "def broken(:",
    )
    out = definitions_only(nb)
    assert out.cells[0].source == "import torch\n\nN = 3\n\nanswer_kl = 0.5 * abs(-2)"
    assert out.cells[1].source.startswith("@staticmethod\ndef f(x):") and "train(model)" not in out.cells[1].source
    assert out.cells[2].source == ""


# --- the exporter, in this process -----------------------------------------------------------------------------


def test_exporter_records_results_errors_and_missing_functions(tmp_path):
    def ok(a):
        return a * 2, {"n": 3}

    def bad(a):
        raise ValueError("boom")

    def todo(a):
        raise NotImplementedError

    ex = kernel.Exporter({"ok": ok, "bad": bad, "todo": todo, "x": 5}, str(tmp_path), "nonce1")
    ex.call("ok", "ok", torch.ones(3))
    ex.call("bad", "bad", 1)
    ex.call("todo", "todo", 1)
    ex.call("missing", "nothere", 1)
    ex.call("notfn", "x", 1)
    ex.save("weird", object)
    ex.finish()
    data = ExportData(tmp_path, "nonce1")
    value = data.get("ok")
    assert torch.equal(value[0], torch.full((3,), 2.0)) and value[1] == {"n": 3}
    assert "boom" in data.message("bad") and "not written yet" in data.message("todo")
    assert data.status("missing") == "missing" and "not defined" in data.message("missing")
    assert "not a function" in data.message("notfn")
    assert data.status("weird") == "error"
    with pytest.raises(Fail, match="boom"):
        data.get("bad")
    assert ExportData(tmp_path, "other-nonce").problem  # a manifest from another run is ignored


def test_exporter_stops_a_slow_function(tmp_path):
    def slow():
        while True:
            pass

    ex = kernel.Exporter({"slow": slow}, str(tmp_path), "n", call_timeout=0.5)
    assert ex.call("slow", "slow") is None
    assert "longer than 0.5 s" in ex.manifest["items"]["slow"]["message"]


def test_export_data_refuses_pickles_and_escapes(tmp_path):
    np.save(tmp_path / "ignored.npy", np.zeros(2))
    np.savez(tmp_path / "obj.npz", a=np.array([{"x": 1}], dtype=object))
    manifest = {
        "nonce": "n",
        "complete": True,
        "items": {
            "obj": {"status": "ok", "file": "obj.npz", "data": {"tensor": ""}},
            "escape": {"status": "ok", "file": "../outside.npz", "data": {"tensor": ""}},
        },
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    data = ExportData(tmp_path, "n")
    with pytest.raises(Fail, match="could not be read"):
        data.get("obj")  # object arrays would need pickle: refused
    with pytest.raises(Fail, match="missing"):
        data.get("escape")


def test_guard_records_forbidden_use_from_student_code(tmp_path):
    # in a subprocess: the guard replaces modules process-wide
    student = (
        "import importlib\n"
        "def student_fn():\n"
        "    m = getattr(torch, 'distri' + 'butions')\n"
        "    return m.Normal(0.0, 1.0)\n"
        "def via_import():\n"
        "    return importlib.import_module('torch.distributions').Normal\n"
        "def from_import():\n"
        "    from torch.distributions import Normal\n"
        "    return Normal\n"
        "def clean():\n"
        "    return torch.randn(2)\n"
    )
    script = textwrap.dedent(
        f"""
        import dgmlab.grading.kernel as k
        k.install_guard(["torch.distributions"])
        import torch
        ns = {{"torch": torch}}
        exec(compile({student!r}, "/tmp/ipykernel_0/cell.py", "exec"), ns)
        ns["student_fn"](); ns["via_import"](); ns["from_import"](); ns["clean"]()
        print(sorted({{e["functions"][0] for e in k.GUARD_EVENTS if e["functions"]}}))
        print(all(e["direct"] for e in k.GUARD_EVENTS))
        # a library (its file under sys.prefix) that uses the module internally, called by the student
        import os, sys
        lib = {{}}
        exec(compile("def lib_fn():\\n    import torch.distributions as d\\n    return d.Normal",
                     os.path.join(sys.prefix, "lib", "fake_lib.py"), "exec"), lib)
        ns["lib_fn"] = lib["lib_fn"]
        exec(compile("def uses_lib():\\n    return lib_fn()", "/tmp/ipykernel_0/cell2.py", "exec"), ns)
        k.GUARD_EVENTS.clear()
        ns["uses_lib"]()
        print(sorted({{(e["attribute"], e["functions"][0], e["direct"]) for e in k.GUARD_EVENTS}}))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "['from_import', 'student_fn', 'via_import']"
    assert lines[1] == "True"  # the student's own accesses, import statements included
    assert lines[2] == "[('Normal', 'uses_lib', False)]"  # recorded (the question pays), but not the student's use


def test_guard_walks_no_stack_for_dunders_and_resolves_each_file_once():
    """A traceback in a guarded kernel asks every loaded module for ``__file__`` and friends once per frame
    (``inspect.getmodule``); walking the stack and resolving every frame's file on each of those lookups made a
    failing cell cost over a second. Dunder lookups are never recorded, so they walk nothing; a file is resolved
    once, however many accesses the student makes."""
    script = textwrap.dedent(
        """
        import inspect, os.path
        import dgmlab.grading.kernel as k
        k.install_guard(["torch.distributions"])
        import torch
        walks, resolved, real = [], [], os.path.realpath
        stack = k._student_stack
        k._student_stack = lambda frame: walks.append(1) or stack(frame)
        os.path.realpath = lambda path, *a, **kw: resolved.append(path) or real(path, *a, **kw)
        ns = {"torch": torch, "inspect": inspect}
        code = ("def lookup():\\n    return inspect.getmodule(inspect.currentframe())\\n"
                "def use():\\n    return torch.distributions.Normal")
        exec(compile(code, "/tmp/ipykernel_0/cell.py", "exec"), ns)
        ns["lookup"]()
        print(len(walks), len(k.GUARD_EVENTS))
        ns["use"]()
        first = len(resolved)
        for _ in range(5):
            ns["use"]()
        print(len(walks), len(k.GUARD_EVENTS), first > 0, len(resolved) - first)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "0 0"  # getmodule read every guarded module's dunders: no walk, nothing recorded
    assert lines[1] == "6 6 True 0"  # six uses recorded; the files on the stack were resolved during the first


# --- judge helpers, budget, attribution ------------------------------------------------------------------------


def test_expect_close_reports_the_error_not_the_reference():
    with pytest.raises(Fail) as e:
        expect_close(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.123456]), "the KL")
    assert "2.123456" not in str(e.value) and "50%" in str(e.value)
    with pytest.raises(Fail, match="NaN"):
        expect_close(torch.tensor([float("nan")]), torch.tensor([1.0]), "x")


class FakeData(ExportData):
    def __init__(self, items, events=()):
        self.items, self.guard_events, self.problem, self._arrays = items, list(events), "", {}


def _params(**kw):
    return {"_params": {"status": "ok", "data": {"mapping": {k: {"value": v} for k, v in kw.items()}}}}


def test_budget_problem_names_the_overwritten_parameter():
    budget = {"seed": 0, "epochs": 5}
    assert g.budget_problem(FakeData(_params(seed=0, epochs=5, grading=True)), budget) == ""
    assert "epochs = 3" in g.budget_problem(FakeData(_params(seed=0, epochs=3, grading=True)), budget)
    assert "grading" in g.budget_problem(FakeData(_params(seed=0, epochs=5, grading=False)), budget)
    assert "could not verify" in g.budget_problem(FakeData({}), budget)


def test_student_ids_are_unique_and_safe(tmp_path):
    lab = load_lab(ROOT / "labs" / "lab1_vae")
    paths = [Path("a/alice.ipynb"), Path("b/lab1_vae.ipynb"), Path("c/lab1_vae.ipynb"), Path("x/../we ird$.ipynb")]
    ids = g.student_ids(paths, lab)
    assert ids[0] == "alice" and ids[1] == "b-lab1_vae" and ids[2] == "c-lab1_vae" and ids[3] == "we_ird"
    assert len(set(ids)) == 4


@pytest.mark.parametrize("lab", LABS)
def test_lab_rubric_and_checks_agree(lab):
    spec = load_lab(ROOT / "labs" / lab)
    assert spec.auto_points > 0 and spec.total_points > spec.auto_points  # one written question graded by hand
    inputs = spec.make_inputs()
    assert inputs and all(isinstance(v, np.ndarray) and v.dtype != object for v in inputs.values())
    nb = read_notebook(spec.notebook)
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
    report = scan(nb, spec.forbidden)
    assert not report.findings and not report.syntax_errors
    assert {f for q in spec.questions for f in q.functions} <= set(report.functions)


def test_broken_lab_folder_is_reported(tmp_path):
    (tmp_path / "rubric.yml").write_text("lab: x\nnotebook: missing.ipynb\nbudget: {}\nquestions: []\n")
    with pytest.raises(LabError, match="missing.ipynb"):
        load_lab(tmp_path)


def test_judge_never_lets_a_check_crash_the_grader(tmp_path):
    lab = load_lab(ROOT / "labs" / "lab1_vae")
    data = ExportData(None, "", "the kernel died")
    questions = g.judge(
        lab, data, scan(nb_of("x = 1"), lab.forbidden), Context(lab.budget, inputs=g.grader_inputs(lab))
    )
    auto = [q for q in questions if not q["manual"]]
    assert all(q["points"] == 0 for q in auto)
    assert all("the kernel died" in c["message"] for q in auto for c in q["checks"])


def test_resume_reruns_after_a_change_of_limits_or_grader_code(tmp_path, monkeypatch, capsys):
    """A stored result is reused only under the same settings: the limits given on the command line, the
    budget and the grader's own code (simulated on a copy of dgmlab/grading, the real tree is never edited)."""
    from dgmlab.grading import cli
    from dgmlab.grading import lab as lab_module

    runs = []
    real = g.grade_submission
    monkeypatch.setattr(
        g, "grade_submission", lambda lab, path, sid, *a, **k: runs.append(sid) or real(lab, path, sid, *a, **k)
    )
    sub = tmp_path / "ann.ipynb"
    sub.write_bytes(b"")  # unreadable: graded without a kernel, so this test stays fast
    base = ["grade", str(ROOT / "labs" / "lab1_vae"), str(sub), "--out", str(tmp_path / "out"), "--quiet"]

    def graded(*extra):
        before = len(runs)
        assert cli.main(base + list(extra)) == 0
        return len(runs) - before

    assert graded() == 1
    assert graded() == 0  # identical settings: reused
    assert graded("--total-timeout", "900") == 1  # a student who timed out must get the longer limit
    assert graded("--total-timeout", "900") == 0
    assert graded("--total-timeout", "900", "--memory-mb", "5000") == 1
    assert graded("--total-timeout", "900", "--memory-mb", "5000", "--cell-timeout", "7") == 1
    stored = json.loads((tmp_path / "out" / "students" / "ann" / "result.json").read_text())
    assert stored["settings"]["limits"]["cell_timeout_s"] == 7 and stored["settings"]["limits"]["memory_mb"] == 5000

    copy = tmp_path / "grading_copy"
    shutil.copytree(lab_module.GRADER_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(lab_module, "GRADER_DIR", copy)
    same = ["--total-timeout", "900", "--memory-mb", "5000", "--cell-timeout", "7"]
    assert graded(*same) == 0  # an identical copy of the grader: same fingerprint
    (copy / "judge.py").write_text((copy / "judge.py").read_text() + "\n# a changed check helper\n")
    assert graded(*same) == 1
    assert graded(*same) == 0
    capsys.readouterr()


def test_gradebook_is_written_atomically(tmp_path):
    lab = load_lab(ROOT / "labs" / "lab1_vae")
    results = [
        {
            "student": "bob",
            "total": 10,
            "max_total": 100,
            "status": "graded",
            "questions": [{"id": "kl", "points": 10}],
        },
        {"student": "ann", "total": 0, "max_total": 100, "status": "unreadable", "questions": []},
    ]
    g.write_gradebook(lab, results, tmp_path)
    rows = (tmp_path / "gradebook.csv").read_text().splitlines()
    assert rows[0].startswith("student,reparam,kl,") and rows[0].endswith(
        "total,max_total,status,reason,file,id_note,sandbox"
    )
    assert rows[1].startswith("ann,") and rows[2].startswith("bob,,10,")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert os.path.getsize(tmp_path / "gradebook.json") > 0
