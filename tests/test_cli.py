"""The dgmlab command: a one-epoch training run, evaluation, argparse errors."""

import json
import subprocess
import sys

import pytest
import torch

from dgmlab.cli import main
from dgmlab.train import load_checkpoint


def test_train_then_eval(tmp_path, capsys):
    out = tmp_path / "vae2"
    rc = main(["train", "vae", "--latent-dim", "2", "--hidden", "64", "--epochs", "1", "--limit", "500",
               "--source", "embedded", "--out", str(out), "--no-progress", "--device", "cpu"])
    assert rc == 0
    assert {p.name for p in out.iterdir()} == {"checkpoint.pt", "history.json", "samples.png"}
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 1 and history[0]["val_elbo"] < 0
    model, saved_history, extra = load_checkpoint(out / "checkpoint.pt")
    assert model.config.z_dim == 2 and saved_history == history and extra["source"] == "embedded"
    assert (out / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main(["eval", str(out / "checkpoint.pt"), "--k", "20", "--n", "30", "--source", "embedded",
                 "--no-progress"]) == 0
    line = capsys.readouterr().out
    assert "IWAE log p(x) estimate (k=20)" in line and "30 images" in line


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "vae", "--epochs", "0", "--out", "x"], "expected a positive integer, got 0"),
        (["train", "vae", "--epochs", "3"], "the following arguments are required: --out"),
        (["train", "vae", "--out", "x", "--source", "web"], "invalid choice: 'web'"),
        (["eval", "ckpt.pt", "--k", "many"], "expected a positive integer, got 'many'"),
        (["fly"], "invalid choice: 'fly'"),
    ],
)
def test_bad_flags_give_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_eval_of_a_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "none.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_console_script_and_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "dgmlab", "data", "info"], capture_output=True, text=True)
    assert result.returncode == 0 and "embedded: 5,000 images" in result.stdout
    assert torch.__version__  # the entry point imports cleanly alongside torch
