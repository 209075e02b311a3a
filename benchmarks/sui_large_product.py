"""Benchmark: the product entry point ``smooth_unique_information`` at large N (issue 23).

One fresh process per run; the resident high-water mark is reset after the inputs are built
(Linux ``clear_refs``), so the peak printed is the call's own plus what was resident then.
ResNet-20 at its initial weights (BatchNorm in eval mode), K = 10, N MNIST digits padded to 32x32x3 (N above
5,000: shifted copies, as ``sui_resnet.py --sections large``), trace NTK, ``projection="kronecker"``
d = 512, t = ∞ (``num_steps=None``), weight decay 1e-3, the default memory limit. The
learning rate only enters the stability check at t = ∞; a small one is passed.

Usage::

    python benchmarks/sui_large_product.py --n 50000 --threads 2
    python benchmarks/sui_large_product.py --n 2000 --resnet18   # the ResNet-18-width network
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from sui_resnet import K, load, mnist32, onehot, resnet20

from lightning_info.functional import smooth_unique_information
from lightning_info.models import ResNet


def _peak_gb() -> float:
    """The process's resident high-water mark (``VmHWM``), in GB."""
    with open("/proc/self/status") as fh:
        kb = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    return kb / 2**20


def _reset_peak() -> float | None:
    """Reset the resident high-water mark (Linux ``clear_refs``); None where unsupported.

    Returns:
        The resident size in GB at the reset (inputs and model included in the later peak).
    """
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _peak_gb()
    except OSError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--resnet18", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.resnet18:
        torch.manual_seed(0)
        model, name = ResNet.resnet18(num_classes=K).eval(), "ResNet-18 width"
    else:
        model, name = resnet20(), "ResNet-20"
    x, y = mnist32(args.n)
    base = _reset_peak()  # the data generation's own peak is not the call's
    t0 = time.perf_counter()
    out = smooth_unique_information(
        model,
        x,
        onehot(y),
        learning_rate=1e-3,
        num_steps=None,
        weight_decay=1e-3,
        ntk="trace",
        projection_dim=args.dim,
        projection="kronecker",
    )
    t = time.perf_counter() - t0
    assert torch.isfinite(out.weight_si).all()
    peak = (
        _peak_gb()
        if base is not None
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    print(
        f"| {name} | {args.n} | `smooth_unique_information(ntk='trace', projection='kronecker', "
        f"projection_dim={args.dim})`, t = inf | {t:.0f} | {1000 * t / args.n:.1f} | "
        f"{peak:.1f} | {load()} | threads {args.threads}; resident before the call "
        f"{'n/a' if base is None else f'{base:.1f}'} GB (inputs, model) |"
    )


if __name__ == "__main__":
    main()
