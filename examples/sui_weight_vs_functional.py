"""Weight SI vs functional SI of the same training run: how far they agree and where they do not.

Harutyunyan et al., *Estimating informativeness of samples with Smooth Unique Information* (ICLR
2021, arXiv 2101.06640) define two smoothed leave-one-out informations of a training sample: about
the weights, SI = ||w_S - w_{S-i}||^2 / (2 sigma^2), and about the function, F-SI = mean over
held-out x of ||f_S(x) - f_{S-i}(x)||^2 / (2 sigma^2), and argue that they behave differently
(the weights can move in directions the held-out predictions do not see). Here both are computed
for one run: scikit-learn digits (70/15/15 split), 5% of the training labels flipped to another
class, an MLP 64-64-10 trained by plain SGD on the MSE to one-hot targets, scored by
``SmoothUniqueInformation`` linearized at the initial weights (replaying the run's lr x steps),
F-SI over the validation split. Printed: Pearson (raw and log10) and Spearman correlation, the
overlap of the top 5% by each score, what distinguishes the samples that only one score puts on
top (class, flipped label, training loss, input norm, Jacobian norm at the initialization), the
Spearman correlation of each score with those sample properties, and per-class and per-type
(clean / flipped) means; then the same comparison when the linearized run is replayed for 0.1x,
10x the real number of steps and to convergence. The figure: log-log scatter, per-class means,
agreement vs horizon.

    python examples/sui_weight_vs_functional.py            # ~1 min on 2 CPU cores
    python examples/sui_weight_vs_functional.py --quick    # seconds: 300 training samples
"""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import roc_auc_score
from torch import Tensor
from torch.utils.data import TensorDataset

from lightning_info.callbacks.sui import SmoothUniqueInformation
from lightning_info.functional.jacobian import jacobian_features
from lightning_info.models import MLPClassifier
from lightning_info.utilities.data import corrupt_labels, load_dataset

HIDDEN = (64,)
LR = 0.5
BATCH = 32
FLIP_FRACTION = 0.05
TOP_FRACTION = 0.05


def top_set(score: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask of the ceil(fraction N) highest scores (ties broken by index, stable)."""
    k = int(np.ceil(fraction * score.size))
    mask = np.zeros(score.size, dtype=bool)
    mask[np.argsort(-score, kind="stable")[:k]] = True
    return mask


def jacobian_sq_norm(model: torch.nn.Module, x: Tensor, chunk: int = 200) -> Tensor:
    """||J(x_i)||_F^2 of the outputs w.r.t. all parameters, per sample (the NTK trace Theta_ii)."""
    return torch.cat(
        [
            jacobian_features(model, x[i : i + chunk]).pow(2).sum((1, 2))
            for i in range(0, len(x), chunk)
        ]
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds instead of a minute")
    parser.add_argument("--out", default="examples/figures", help="folder for the PNG")
    args = parser.parse_args(argv)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*exceeds the stability limit.*")
            return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> dict:
    ds = load_dataset("digits")
    perm = torch.randperm(len(ds.targets), generator=torch.Generator().manual_seed(0))
    n_tr, n_val = round(0.7 * len(perm)), round(0.15 * len(perm))
    tr, va = perm[:n_tr], perm[n_tr : n_tr + n_val]
    steps = 600
    if args.quick:
        tr, va, steps = tr[:300], va[:100], 150
    x, y_true = ds.inputs[tr], ds.targets[tr]
    y, flipped = corrupt_labels(y_true, fraction=FLIP_FRACTION, num_classes=10, seed=0)
    xv, yv = ds.inputs[va], ds.targets[va]

    torch.manual_seed(0)
    model = MLPClassifier(64, 10, hidden=HIDDEN, loss="mse", optimizer="sgd", lr=LR)
    init = {k: v.detach().clone() for k, v in model.named_parameters()}
    jac_sq = jacobian_sq_norm(model, x).numpy()  # at the initialization (the linearization point)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(0)
    onehot = F.one_hot(y, 10).float()
    for _ in range(steps):
        b = torch.randint(0, x.shape[0], (BATCH,), generator=gen)
        loss = 0.5 * (model(x[b]) - onehot[b]).pow(2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        out = model(x)
        train_loss = (0.5 * (out - onehot).pow(2).sum(1)).numpy()
        val_acc = float((model(xv).argmax(1) == yv).float().mean())
    scorer = SmoothUniqueInformation(
        learning_rate=LR, num_steps=steps, max_samples=None, max_heldout=None
    )
    s = scorer.score(
        model, TensorDataset(x, y), TensorDataset(xv, yv), init_state=init, write=False
    )
    w = s.weight_si.numpy()
    f = s.functional_si.numpy()
    flip = flipped.numpy()
    labels = y.numpy()
    x_sq = x.pow(2).sum(1).numpy()
    st = s.settings
    print(
        f"digits: {len(tr)} train ({int(flip.sum())} labels flipped) / {len(va)} validation; MLP "
        f"64-{'-'.join(map(str, HIDDEN))}-10, MSE, SGD lr {LR}, batch {BATCH}, {steps} steps; "
        f"validation accuracy {val_acc:.3f}"
    )
    print(
        f"SUI at the initial weights: replayed lr {st['learning_rate']:.3f} x {st['num_steps']} "
        f"steps (lr {LR} is beyond the linearized GD's stability limit), {st['ntk']} NTK, "
        f"method '{st['method']}'; nats, sigma = 1"
    )

    res: dict = {"weight_si": w, "functional_si": f, "flipped": flip, "labels": labels}
    res["pearson"] = float(pearsonr(w, f)[0])
    res["pearson_log"] = float(pearsonr(np.log10(w), np.log10(f))[0])
    res["spearman"] = float(spearmanr(w, f)[0])
    print(
        f"\nweight SI: median {np.median(w):.3g}, range {w.min():.3g} .. {w.max():.3g}; "
        f"F-SI: median {np.median(f):.3g}, range {f.min():.3g} .. {f.max():.3g}"
    )
    print(
        f"correlation of weight SI and F-SI over {len(w)} samples: Pearson {res['pearson']:.3f}, "
        f"Pearson of log10 {res['pearson_log']:.3f}, Spearman {res['spearman']:.3f}"
    )
    for name, mask in (("clean", ~flip), ("flipped", flip)):
        print(f"  Spearman within {name:>7} samples: {spearmanr(w[mask], f[mask])[0]:.3f}")

    top_w, top_f = top_set(w, TOP_FRACTION), top_set(f, TOP_FRACTION)
    both, only_w, only_f = top_w & top_f, top_w & ~top_f, top_f & ~top_w
    res["top_k"] = int(top_w.sum())
    res["top_overlap"] = int(both.sum())
    print(
        f"\ntop {TOP_FRACTION:.0%} ({res['top_k']} samples) by each score: {res['top_overlap']} in "
        f"both, {int(only_w.sum())} only by weight SI, {int(only_f.sum())} only by F-SI"
    )
    props = {
        "flipped label": flip.astype(float),
        "training loss": train_loss,
        "||x||^2": x_sq,
        "||J(x)||^2 at init": jac_sq,
    }
    header = f"{'group':>20} {'n':>4} | " + " ".join(f"{p:>18}" for p in props)
    print(header)
    groups = {
        "top by both": both,
        "top by weight only": only_w,
        "top by F-SI only": only_f,
        "all samples": np.ones_like(flip),
    }
    res["groups"] = {}
    for gname, mask in groups.items():
        means = {p: float(v[mask].mean()) if mask.any() else float("nan") for p, v in props.items()}
        res["groups"][gname] = {"n": int(mask.sum()), **means}
        print(
            f"{gname:>20} {int(mask.sum()):>4} | " + " ".join(f"{means[p]:>18.3g}" for p in props)
        )
    for gname, mask in (("top by weight only", only_w), ("top by F-SI only", only_f)):
        counts = np.bincount(labels[mask], minlength=10)
        print(f"{gname:>20} classes (0..9): {' '.join(str(c) for c in counts)}")

    res["spearman_with"] = {}
    print("\nSpearman correlation of each score with sample properties")
    print(f"{'property':>20} | {'weight SI':>9} {'F-SI':>6}")
    for p, v in props.items():
        if p == "flipped label":
            continue
        pair = (float(spearmanr(w, v)[0]), float(spearmanr(f, v)[0]))
        res["spearman_with"][p] = pair
        print(f"{p:>20} | {pair[0]:>9.3f} {pair[1]:>6.3f}")
    res["auroc_flipped"] = tuple(float(roc_auc_score(flip, v)) for v in (w, f, train_loss))
    print(
        "AUROC for the flipped labels: weight SI {:.3f}, F-SI {:.3f}, training loss {:.3f}".format(
            *res["auroc_flipped"]
        )
    )

    print("\nby type and class: mean score / mean over all samples")
    res["by_type"] = {}
    for name, mask in (("clean", ~flip), ("flipped", flip)):
        res["by_type"][name] = (float(w[mask].mean() / w.mean()), float(f[mask].mean() / f.mean()))
        print(
            f"{name:>8} n = {int(mask.sum()):>4} | weight SI {res['by_type'][name][0]:.2f}  "
            f"F-SI {res['by_type'][name][1]:.2f}"
        )
    clean = ~flip
    res["by_class"] = {}
    for c in range(10):
        mask = clean & (labels == c)
        res["by_class"][c] = (float(w[mask].mean() / w.mean()), float(f[mask].mean() / f.mean()))
    cw = np.array([res["by_class"][c][0] for c in range(10)])
    cf = np.array([res["by_class"][c][1] for c in range(10)])
    res["class_spearman"] = float(spearmanr(cw, cf)[0])
    print("class (clean samples): " + " ".join(f"{c:>5}" for c in range(10)))
    print("weight SI            : " + " ".join(f"{v:>5.2f}" for v in cw))
    print("F-SI                 : " + " ".join(f"{v:>5.2f}" for v in cf))
    print(f"Spearman of the 10 class means: {res['class_spearman']:.3f}")

    # the same run scored at other horizons: shorter, longer, converged (t = None)
    res["horizons"] = []
    print(
        "\nother GD horizons of the linearized run (t = run's steps x 0.1, 1, 10, converged):"
        f"\n{'steps':>9} | {'Spearman':>8} {'top-5% shared':>13} | AUROC flipped: {'weight SI':>9} "
        f"{'F-SI':>6} | median weight SI / F-SI"
    )
    for horizon in (steps // 10, steps, steps * 10, None):
        if horizon == steps:
            hw, hf = w, f
        else:
            sc = SmoothUniqueInformation(
                learning_rate=LR,
                num_steps=horizon,
                max_samples=None,
                max_heldout=None,
            )
            hs = sc.score(
                model, TensorDataset(x, y), TensorDataset(xv, yv), init_state=init, write=False
            )
            hw, hf = hs.weight_si.numpy(), hs.functional_si.numpy()
        row = {
            "steps": horizon,
            "spearman": float(spearmanr(hw, hf)[0]),
            "top_overlap": int((top_set(hw, TOP_FRACTION) & top_set(hf, TOP_FRACTION)).sum()),
            "auroc_weight": float(roc_auc_score(flip, hw)),
            "auroc_functional": float(roc_auc_score(flip, hf)),
            "median_ratio": float(np.median(hw / hf)),
        }
        res["horizons"].append(row)
        label = "converged" if horizon is None else f"{horizon}"
        print(
            f"{label:>9} | {row['spearman']:>8.3f} {row['top_overlap']:>6}/{res['top_k']:<6} | "
            f"{'':>15}{row['auroc_weight']:>9.3f} {row['auroc_functional']:>6.3f} | "
            f"{row['median_ratio']:.3g}"
        )

    fig, axes = plt.subplots(1, 3, figsize=(17, 5), gridspec_kw={"width_ratios": [1.2, 1.2, 0.8]})
    ax = axes[0]
    ax.scatter(w[~flip], f[~flip], s=6, c="tab:blue", alpha=0.5, label="clean label")
    ax.scatter(w[flip], f[flip], s=14, c="tab:red", marker="x", label="flipped label")
    ax.axvline(np.sort(w)[-res["top_k"]], color="grey", ls=":", lw=1)
    ax.axhline(np.sort(f)[-res["top_k"]], color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("weight SI (nats)")
    ax.set_ylabel("functional SI (nats)")
    ax.set_title(
        f"Spearman {res['spearman']:.2f}, Pearson(log) {res['pearson_log']:.2f}; dotted: top "
        f"{TOP_FRACTION:.0%} ({res['top_overlap']}/{res['top_k']} shared)",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    ax = axes[1]
    pos = np.arange(10)
    ax.bar(pos - 0.2, cw, 0.4, label="weight SI")
    ax.bar(pos + 0.2, cf, 0.4, label="functional SI")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(pos)
    ax.set_xlabel("class (clean-label samples)")
    ax.set_ylabel("class mean / mean over all samples")
    ax.set_title(
        f"per-class means (Spearman of class means {res['class_spearman']:.2f})", fontsize=10
    )
    ax.legend(fontsize=8)
    ax = axes[2]
    hx = np.arange(len(res["horizons"]))
    ax.plot(hx, [r["spearman"] for r in res["horizons"]], "o-", label="Spearman(weight SI, F-SI)")
    ax.plot(
        hx,
        [r["top_overlap"] / res["top_k"] for r in res["horizons"]],
        "s-",
        label=f"shared fraction of the top {TOP_FRACTION:.0%}",
    )
    ax.plot(
        hx, [r["auroc_weight"] for r in res["horizons"]], "^--", label="AUROC flipped, weight SI"
    )
    ax.plot(
        hx, [r["auroc_functional"] for r in res["horizons"]], "v--", label="AUROC flipped, F-SI"
    )
    ax.set_xticks(
        hx, ["converged" if r["steps"] is None else str(r["steps"]) for r in res["horizons"]]
    )
    ax.set_xlabel(f"GD steps of the linearized run (the real run: {steps})")
    ax2 = ax.twinx()
    ax2.semilogy(
        hx, [r["median_ratio"] for r in res["horizons"]], "kx:", label="median weight SI / F-SI"
    )
    ax2.set_ylabel("median weight SI / F-SI (black, log)")
    ax2.legend(fontsize=8, loc="lower right")
    ax.set_ylim(0, 1.05)
    ax.set_title("agreement vs horizon", fontsize=10)
    ax.legend(fontsize=8, loc="center left")
    fig.suptitle(
        f"Weight vs functional SI, one run: digits, {len(tr)} samples, {FLIP_FRACTION:.0%} flipped "
        f"labels, MLP 64-{'-'.join(map(str, HIDDEN))}-10"
    )
    fig.tight_layout()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "sui_weight_vs_functional.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    print(f"saved {png}")
    res["png"] = png
    return res


if __name__ == "__main__":
    main()
