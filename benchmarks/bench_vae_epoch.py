"""One epoch of the same models on 60,000 images, several ways, measured side by side in one run.

VAE (784-400-20, batch 128):
1. dgmlab's loop: ``fit(VAEStep(model, config), train)`` (data as one tensor, shuffled index slices, fused Adam,
   terms kept on the device until the epoch ends);
2. a plain eager PyTorch loop in the pytorch/examples style (``torch.optim.Adam`` with its defaults, the loss with
   ``F.binary_cross_entropy_with_logits``) over the same in-memory tensor, and the same loop with ``Adam(fused=True)``;
3. the common torchvision pipeline: ``datasets.MNIST`` + ``ToTensor`` + ``DataLoader`` reading the same images from
   torchvision's file layout written to a temporary folder (PIL image and tensor conversion per sample);
4. with ``--compile``: dgmlab's loop with ``compile=True`` (the compile time is reported apart).

GAN (dgmlab's MLP Generator and Discriminator, batch 128): ``fit(GANStep(G, D, config), train)`` against a plain
loop in the style of pytorch/examples' DCGAN (one G(z) per batch, D on real and detached fake, then G through D).

Data: Fashion-MNIST's 60,000 training images when its files are present (Debian's dataset-fashion-mnist), else the
embedded MNIST subset repeated to 60,000. Prints seconds per epoch (best of ``--repeats`` interleaved epochs, after a
warm-up), the ratios against the targets (VAE: dgmlab at most 0.8x the plain eager loop and at least 2.5x faster
than the DataLoader pipeline; GAN: dgmlab at most 0.9x its plain loop) and the share of a measured matmul peak.
On a shared machine add ``--cpu-time``: every method is timed in CPU seconds of this process on one thread, so
another program on the other core barely moves the ratios.
Usage: ``python benchmarks/bench_vae_epoch.py [--repeats 3] [--threads N] [--compile] [--cpu-time]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dgmlab.data import Split, find_full_files, load_mnist, read_idx, write_idx
from dgmlab.models.gan import Discriminator, GANConfig, GANStep, GANTrainConfig, Generator
from dgmlab.models.vae import VAE, VAEConfig, VAEStep, VAETrainConfig
from dgmlab.train import fit

BATCH, LR, N = 128, 1e-3, 60_000
# wall-clock seconds by default; ``--cpu-time`` switches to this process's CPU seconds on one thread, which other
# processes on a shared machine disturb far less than wall time (they still share caches and memory bandwidth)
clock = time.perf_counter
CONFIG = VAEConfig(hidden_dims=(400,), z_dim=20)


def images_60k() -> tuple[np.ndarray, np.ndarray, str]:
    folder = find_full_files("fashion-mnist")
    if folder is not None:
        images = read_idx(next(folder.glob("train-images-idx3-ubyte*")))
        labels = read_idx(next(folder.glob("train-labels-idx1-ubyte*")))
        return images, labels, f"Fashion-MNIST training images from {folder}"
    split = load_mnist("train", source="embedded", verbose=False)
    reps = -(-N // len(split))
    images = (split.x.numpy() * 255).round().astype(np.uint8).reshape(-1, 28, 28)
    return np.tile(images, (reps, 1, 1))[:N], np.tile(split.y.numpy(), reps)[:N], "embedded MNIST repeated"


def fresh_model() -> VAE:
    torch.manual_seed(0)
    return VAE(CONFIG)


def as_split(x: torch.Tensor) -> Split:
    return Split(x, torch.zeros(len(x), dtype=torch.long), "bench", "memory")


def run_dgmlab(x: torch.Tensor, compile: bool = False) -> float:
    step = VAEStep(fresh_model(), VAETrainConfig(epochs=1, batch_size=BATCH, lr=LR, device="cpu", compile=compile))
    start = clock()
    fit(step, as_split(x), progress=False)
    return clock() - start


def plain_step(model, optimizer, xb):
    mu, logvar = model.encode(xb)
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    x_logits = model.decode(z)
    recon = F.binary_cross_entropy_with_logits(x_logits, xb, reduction="sum")
    kl = 0.5 * (logvar.exp() + mu**2 - 1 - logvar).sum()
    loss = (recon + kl) / len(xb)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def run_plain(x: torch.Tensor, fused: bool = False) -> float:
    model = fresh_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, fused=fused or None)
    start = clock()
    for idx in torch.randperm(len(x)).split(BATCH):
        plain_step(model, optimizer, x[idx])
    return clock() - start


def run_torchvision(root: Path) -> float:
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    dataset = datasets.MNIST(str(root), train=True, transform=transforms.ToTensor())
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True)
    model = fresh_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    start = clock()
    for xb, _ in loader:
        plain_step(model, optimizer, xb.view(-1, 784))
    return clock() - start


# --- GAN ---------------------------------------------------------------------------------------------------------

GAN = GANConfig()


def fresh_gan() -> tuple[Generator, Discriminator]:
    torch.manual_seed(0)
    return Generator(GAN), Discriminator(GAN)


def run_gan_dgmlab(x: torch.Tensor) -> float:
    step = GANStep(*fresh_gan(), GANTrainConfig(epochs=1, batch_size=BATCH, device="cpu"))
    start = clock()
    fit(step, as_split(x), progress=False)
    return clock() - start


def run_gan_plain(x: torch.Tensor) -> float:
    G, D = fresh_gan()
    opt_G = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_D = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = torch.nn.BCEWithLogitsLoss()
    start = clock()
    for idx in torch.randperm(len(x)).split(BATCH):
        real = x[idx]
        ones, zeros = torch.ones(len(real)), torch.zeros(len(real))
        fake = G(torch.randn(len(real), GAN.z_dim))
        opt_D.zero_grad()
        loss_D = bce(D(real), ones) + bce(D(fake.detach()), zeros)
        loss_D.backward()
        opt_D.step()
        opt_G.zero_grad()
        loss_G = bce(D(fake), ones)
        loss_G.backward()
        opt_G.step()
    return clock() - start


def matmul_peak(n: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        a @ b
        best = min(best, clock() - start)
    return 2 * n**3 / best / 1e9


def vae_flops_per_example(config: VAEConfig) -> float:
    """Multiply-adds of the linear layers, x2 for FLOPs, x3 for forward + backward (both gradients)."""
    h, z, d = config.hidden_dims[0], config.z_dim, config.x_dim
    macs = d * h + h * 2 * z + z * h + h * d
    return 2 * macs * 3


def compile_time(x: torch.Tensor) -> float:
    """Seconds of the first compiled epoch on a few batches, i.e. mostly compiling."""
    torch._dynamo.reset()
    return run_dgmlab(x[: 20 * BATCH + 7], compile=True)  # a full and a ragged batch size: both shapes compile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="epochs per method; the best is reported (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--compile", action="store_true", help="also time compile=True (adds about a minute)")
    parser.add_argument("--cpu-time", action="store_true", help="time in process CPU seconds on one thread")
    args = parser.parse_args()
    global clock
    if args.cpu_time:
        clock, args.threads = time.process_time, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    images, labels, what = images_60k()
    x = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255.0)
    print(f"data: {len(x)} images ({what}); VAE 784-400-20, GAN {GAN.z_dim}-{GAN.g_hidden}-784 / 784-{GAN.d_hidden}-1; "
          f"batch {BATCH}; torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"{'CPU' if args.cpu_time else 'wall-clock'} seconds")
    methods = {
        "VAE dgmlab fit": lambda: run_dgmlab(x),
        "VAE plain eager loop": lambda: run_plain(x),
        "VAE plain loop, fused Adam": lambda: run_plain(x, fused=True),
        "VAE torchvision DataLoader": None,  # set below, needs the temporary folder
        "GAN dgmlab fit": lambda: run_gan_dgmlab(x),
        "GAN plain loop": lambda: run_gan_plain(x),
    }
    compiled = None
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "MNIST" / "raw"
        write_idx(raw / "train-images-idx3-ubyte", images)
        write_idx(raw / "train-labels-idx1-ubyte", labels)
        write_idx(raw / "t10k-images-idx3-ubyte", images[:10])
        write_idx(raw / "t10k-labels-idx1-ubyte", labels[:10])
        methods["VAE torchvision DataLoader"] = lambda: run_torchvision(Path(tmp))
        if args.compile:
            compiled = compile_time(x)
            methods["VAE dgmlab fit, compile=True"] = lambda: run_dgmlab(x, compile=True)
        run_plain(x[: 50 * BATCH])  # warm-up (thread pool, allocator), so the first method timed does not pay it
        run_gan_plain(x[: 20 * BATCH])
        times = {name: [] for name in methods}
        for _ in range(args.repeats):  # interleaved, so background load hits all methods alike
            for name, run in methods.items():
                times[name].append(run())
    best = {k: min(v) for k, v in times.items()}
    peak = matmul_peak()
    flops = vae_flops_per_example(CONFIG) * len(x)
    print(f"\n{'method':30s} {'s/epoch':>8s} {'GFLOP/s':>8s}  runs")
    for name, t in best.items():
        runs = ", ".join(f"{v:.2f}" for v in times[name])
        gflops = f"{flops / t / 1e9:8.1f}" if name.startswith("VAE") else " " * 8
        print(f"{name:30s} {t:8.2f} {gflops}  [{runs}]")
    share = flops / best["VAE dgmlab fit"] / 1e9 / peak
    print(f"\nmatmul peak (1024x1024 fp32): {peak:.1f} GFLOP/s; dgmlab's VAE epoch reaches {share:.0%} of it")
    verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    vae_ratio = best["VAE dgmlab fit"] / best["VAE plain eager loop"]
    loader_ratio = best["VAE torchvision DataLoader"] / best["VAE dgmlab fit"]
    gan_ratio = best["GAN dgmlab fit"] / best["GAN plain loop"]
    fused_ratio = best["VAE dgmlab fit"] / best["VAE plain loop, fused Adam"]
    print(f"VAE dgmlab / plain eager loop   = {vae_ratio:.2f}x  (target <= 0.8x: {verdict(vae_ratio <= 0.8)})")
    print(f"VAE dgmlab / plain + fused Adam = {fused_ratio:.2f}x  (for information)")
    print(f"VAE DataLoader / dgmlab         = {loader_ratio:.2f}x  (target >= 2.5x: {verdict(loader_ratio >= 2.5)})")
    print(f"GAN dgmlab / plain loop         = {gan_ratio:.2f}x  (target <= 0.9x: {verdict(gan_ratio <= 0.9)})")
    if compiled is not None:
        c = best["VAE dgmlab fit, compile=True"]
        gain = best["VAE dgmlab fit"] - c
        breakeven = compiled / gain if gain > 0 else float("inf")
        print(f"VAE compile=True: {c:.2f} s/epoch ({c / best['VAE dgmlab fit']:.2f}x eager dgmlab) after compiling "
              f"for {compiled:.0f} s; pays off after about {breakeven:.0f} epochs of 60,000 images")


if __name__ == "__main__":
    main()
