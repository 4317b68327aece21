"""Small helpers: device choice, fast mode, cache folders, atomic writes."""

import pytest
import torch

from dgmlab.utils import atomic_write_text, checkpoint_path, fast_mode, get_device


def test_auto_device_follows_cuda_availability():
    assert get_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert get_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_missing_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        get_device("cuda")


@pytest.mark.parametrize("value,expected", [("1", True), ("true", True), ("0", False), ("", False), ("no", False)])
def test_fast_mode_switch(monkeypatch, value, expected):
    monkeypatch.setenv("DGMLAB_FAST", value)
    assert fast_mode() is expected


def test_checkpoint_paths_differ_in_fast_mode(monkeypatch, tmp_path):
    monkeypatch.setenv("DGMLAB_CACHE", str(tmp_path))
    monkeypatch.setenv("DGMLAB_FAST", "0")
    slow = checkpoint_path("vae")
    monkeypatch.setenv("DGMLAB_FAST", "1")
    assert checkpoint_path("vae") != slow and slow.parent == tmp_path / "checkpoints"


def test_atomic_write_replaces_whole_files(tmp_path):
    path = atomic_write_text(tmp_path / "a" / "grades.csv", "x,y\n")
    atomic_write_text(path, "x,y\n1,2\n")
    assert path.read_text() == "x,y\n1,2\n" and [p.name for p in path.parent.iterdir()] == ["grades.csv"]


def test_glue_hands_myst_nb_python_numbers(monkeypatch):
    import myst_nb
    import numpy as np

    from dgmlab.utils import glue

    seen = {}
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display=True: seen.update({name: value}))
    glue("a", np.float64(0.25), display=False)
    glue("b", torch.tensor(3), display=False)
    glue("c", "text", display=False)
    assert seen == {"a": 0.25, "b": 3, "c": "text"}
    assert type(seen["a"]) is float and type(seen["b"]) is int  # repr "0.25", not "np.float64(0.25)"
