"""The runner's changes to papermill's defaults: outputs capped per cell and per notebook, and the executed notebook
saved at most every few seconds instead of twice per cell (issue 15), both without a kernel; the kernel killed once
the last cell is done (issue 14)."""

import nbformat
import papermill.engines
import pytest
from nbclient.client import NotebookClient
from papermill.engines import NotebookExecutionManager

from dgmlab.grading import runner


@pytest.fixture
def capped(monkeypatch):
    monkeypatch.setattr(NotebookClient, "output", NotebookClient.output)  # restored after the test
    runner.cap_outputs(cell_bytes=1000, notebook_bytes=1500)  # a 300-character output takes ~350 bytes
    client = NotebookClient(nbformat.v4.new_notebook())
    client.reset_execution_trackers()
    client.clear_before_next_output = False  # set per cell by nbclient
    return client


def _stream(text):
    return {
        "msg_type": "stream",
        "header": {"msg_type": "stream"},
        "parent_header": {"msg_id": "m"},
        "content": {"name": "stdout", "text": text},
    }


def test_outputs_are_capped_per_cell_and_per_notebook(capped):
    cell0, cell1, cell2 = [], [], []
    for _ in range(5):
        capped.output(cell0, _stream("a" * 300), None, 0)
    assert len(cell0) == 2 + 1 and cell0[-1]["text"].startswith(runner.CUT_NOTE)  # 2 fit in 1000 bytes, one note
    assert "this cell's output" in cell0[-1]["text"]
    for _ in range(2):
        capped.output(cell1, _stream("b" * 300), None, 1)
    capped.output(cell2, _stream("c" * 300), None, 2)  # the notebook's 1500 bytes are used up by now
    assert [o["text"][:1] for o in cell1] == ["b", "b"]
    assert len(cell2) == 1 and "the notebook's output" in cell2[0]["text"]
    error = {
        "msg_type": "error",
        "header": {"msg_type": "error"},
        "parent_header": {"msg_id": "m"},
        "content": {"ename": "ValueError", "evalue": "v" * 10_000, "traceback": ["t"] * 100},
    }
    capped.output(cell2, error, None, 2)  # errors are always kept (the feedback reports them), but shortened
    assert cell2[-1]["output_type"] == "error" and len(cell2[-1]["evalue"]) < 5000 and len(cell2[-1]["traceback"]) == 13


def test_the_executed_notebook_is_not_rewritten_after_every_cell(monkeypatch, tmp_path):
    monkeypatch.setattr(NotebookExecutionManager, "save", NotebookExecutionManager.save)
    monkeypatch.setattr(NotebookExecutionManager, "notebook_complete", NotebookExecutionManager.notebook_complete)
    writes = []
    monkeypatch.setattr(papermill.engines, "write_ipynb", lambda nb, path: writes.append(path))
    runner.throttle_saves(every_s=60)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(f"x = {i}") for i in range(500)])
    nb.metadata.papermill = {}  # as papermill's execute_notebook prepares it
    manager = NotebookExecutionManager(nb, output_path=str(tmp_path / "out.ipynb"), progress_bar=False)
    manager.notebook_start()
    for i, cell in enumerate(nb.cells):
        manager.cell_start(cell, i)
        manager.cell_complete(cell, i)
    assert len(writes) == 1  # papermill's default: 1 + 2 per cell = 1001 writes of a growing notebook
    manager.notebook_complete()
    assert len(writes) == 2  # the final save always happens


def test_the_kernel_is_killed_once_the_last_cell_is_done(tmp_path):
    """The runner kills the kernel instead of asking it to shut down (which took 1-2 s with PyTorch loaded): the
    outputs are all in, and nothing the notebook registered to run at exit runs after the grader's last cell."""
    from dgmlab.grading.grade import run_notebook

    work = tmp_path / "work"
    work.mkdir()
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("import atexit, pathlib\natexit.register(pathlib.Path('at_exit').touch)"),
            nbformat.v4.new_code_cell("print('last cell')"),
        ]
    )
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    run = run_notebook(nb, {}, work, tmp_path / "staging", 60, 120, 3000)
    assert run["status"] == "completed", run
    executed = nbformat.read(run["executed"], as_version=4)
    assert executed.cells[1].outputs[0]["text"] == "last cell\n"
    assert not (work / "at_exit").exists()
