"""Four uses of smooth unique information (SUI): summarization, a rare class, data sources, bad inputs.

Reproduces the application findings of Harutyunyan et al., *Estimating informativeness of samples
with Smooth Unique Information* (ICLR 2021, arXiv 2101.06640) on scikit-learn's digits (8x8
images, 70/15/15 train/validation/test split) with a small MLP (64-64-10) trained by plain SGD on
the MSE to one-hot targets (the setting of the closed form). Every score is computed by
``SmoothUniqueInformation.score`` linearized at the initial weights, replaying the run's learning
rate and number of steps; functional SI averages over the validation split.

a. Data summarization: keep the top-k% of the training set by functional SI (one-shot, and
   iterative: drop 20% of the remaining samples with the lowest score and rescore), the bottom-k%,
   or a random k% (3 seeds); retrain from the same initialization for the same number of steps
   (mean over 3 mini-batch orders); test accuracy vs k.
b. Under-sampled class: digit 8 cut to 10% of its training samples; per-class mean SUI.
c. Data sources: 60% of the training images clean, 20% with Gaussian pixel noise (std 0.3), 20%
   blurred (3x3 box filter), all different images with their true labels; per-source mean SUI.
d. Corrupted and adversarial inputs: 5% of the training images replaced by noise-corrupted copies
   (Gaussian, std 0.5) and 5% by FGSM copies (eps = 0.25, against an MLP trained on the clean
   training set), all with their true labels; AUROC of weight SI, functional SI and the final
   training loss for flagging each kind.

    python examples/sui_applications.py            # ~2-3 min on 2 CPU cores
    python examples/sui_applications.py --quick    # seconds: 300 training samples, fewer steps
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
from scipy.stats import rankdata
from torch import Tensor
from torch.utils.data import TensorDataset

from lightning_info.applications import aggregate_by_group, summarize_dataset
from lightning_info.callbacks.sui import SmoothUniqueInformation, SUIScores
from lightning_info.models import MLPClassifier
from lightning_info.utilities.data import load_dataset

HIDDEN = (64,)
LR = 0.5
BATCH = 32
RARE_CLASS = 8
FGSM_EPS = 0.25
CORRUPT_STD = 0.5
SOURCE_NOISE_STD = 0.3


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def auroc(is_positive: np.ndarray | Tensor, score: np.ndarray | Tensor) -> float:
    """Area under the ROC curve of ``score`` for flagging ``is_positive`` (Mann-Whitney U).

    AUROC = (sum of the positives' ranks - n1 (n1 + 1) / 2) / (n1 n0), with average ranks for
    ties, i.e. the probability that a random positive scores above a random negative (ties 1/2).
    """
    pos = np.asarray(is_positive, dtype=bool).reshape(-1)
    s = np.asarray(score, dtype=np.float64).reshape(-1)
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        raise ValueError("AUROC needs at least one positive and one negative sample.")
    ranks = rankdata(s)  # average ranks for ties
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def fgsm(
    model: torch.nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    loss: str = "cross_entropy",
    clip: tuple[float, float] | None = (0.0, 1.0),
) -> Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015): x + eps * sign(grad_x loss(model(x), y)).

    ``loss`` is ``"cross_entropy"`` on the logits or ``"mse"`` (half squared error to one-hot);
    ``clip`` keeps the pixels in range (None: no clipping, so every coordinate with a non-zero
    gradient moves by exactly eps).
    """
    was_training = model.training
    model.eval()
    x_adv = x.detach().clone().requires_grad_(True)
    logits = model(x_adv)
    if loss == "cross_entropy":
        value = F.cross_entropy(logits, y, reduction="sum")
    elif loss == "mse":
        value = 0.5 * (logits - F.one_hot(y, logits.shape[1]).to(logits.dtype)).pow(2).sum()
    else:
        raise ValueError(f"`loss` must be 'cross_entropy' or 'mse'; got {loss!r}.")
    (grad,) = torch.autograd.grad(value, x_adv)
    model.train(was_training)
    out = x.detach() + eps * grad.sign()
    if clip is not None:
        out = out.clamp(*clip)
    return out


def make_model(seed: int) -> tuple[MLPClassifier, dict[str, Tensor]]:
    """A fresh 64-64-10 MLP (MSE, SGD) and a copy of its initial parameters."""
    torch.manual_seed(seed)
    model = MLPClassifier(64, 10, hidden=HIDDEN, loss="mse", optimizer="sgd", lr=LR)
    return model, {k: v.detach().clone() for k, v in model.named_parameters()}


def train_sgd(
    model: torch.nn.Module, x: Tensor, y: Tensor, steps: int, *, seed: int = 0
) -> torch.nn.Module:
    """Plain mini-batch SGD (no momentum) on the half squared error to one-hot targets."""
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(seed)
    onehot = F.one_hot(y, 10).float()
    model.train()
    for _ in range(steps):
        b = torch.randint(0, x.shape[0], (min(BATCH, x.shape[0]),), generator=gen)
        loss = 0.5 * (model(x[b]) - onehot[b]).pow(2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model


def accuracy(model: torch.nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def sample_loss(model: torch.nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Per-sample training loss 0.5 ||f(x) - onehot(y)||^2 at the current weights."""
    with torch.no_grad():
        return 0.5 * (model(x) - F.one_hot(y, 10).float()).pow(2).sum(1)


def score_sui(
    model: torch.nn.Module,
    init: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    x_val: Tensor,
    y_val: Tensor,
    steps: int,
) -> SUIScores:
    """SUI of every sample of (x, y) for the run of ``steps`` SGD steps from ``init``."""
    scorer = SmoothUniqueInformation(
        learning_rate=LR, num_steps=steps, max_samples=None, max_heldout=None
    )
    return scorer.score(
        model, TensorDataset(x, y), TensorDataset(x_val, y_val), init_state=init, write=False
    )


def blur(x: Tensor, shape: tuple[int, int]) -> Tensor:
    """3x3 box blur of flat images (borders averaged over the pixels inside the image)."""
    img = x.reshape(-1, 1, *shape)
    out = F.avg_pool2d(img, 3, stride=1, padding=1, count_include_pad=False)
    return out.reshape(x.shape[0], -1)


def splits(n: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_tr, n_val = round(0.7 * n), round(0.15 * n)
    return perm[:n_tr], perm[n_tr : n_tr + n_val], perm[n_tr + n_val :]


# ------------------------------------------------------------------------------------------------
# a. summarization
# ------------------------------------------------------------------------------------------------
def summarization(data: dict, cfg: dict) -> dict:
    x, y, xv, yv, xt, yt = (data[k] for k in ("x", "y", "xv", "yv", "xt", "yt"))
    model, init = make_model(0)
    steps = cfg["steps"]
    cache: dict[tuple[int, ...], Tensor] = {}

    def score_fn(indices: Tensor) -> Tensor:
        key = tuple(indices.tolist())
        if key not in cache:  # iterative runs for different k share their first rounds
            cache[key] = score_sui(model, init, x[indices], y[indices], xv, yv, steps).functional_si
        return cache[key]

    def retrain(keep: Tensor, seeds: range) -> float:
        """Mean test accuracy over mini-batch orders; always the initial weights `init`."""
        accs = []
        for seed in seeds:
            m, _ = make_model(0)
            accs.append(accuracy(train_sgd(m, x[keep], y[keep], steps, seed=seed), xt, yt))
        return float(np.mean(accs))

    full_scores = score_fn(torch.arange(x.shape[0]))
    res: dict[str, list] = {
        k: [] for k in ("iterative", "one_shot", "bottom", "random", "random_std", "min_class")
    }
    for frac in cfg["fractions"]:
        keep_top = summarize_dataset(full_scores, keep_fraction=frac)
        keep_it = summarize_dataset(
            score_fn, keep_fraction=frac, num_samples=x.shape[0], step_fraction=cfg["step_fraction"]
        )
        keep_bottom = summarize_dataset(-full_scores, keep_fraction=frac)
        # smallest class count in the kept set (iterative, one-shot, bottom): class balance
        res["min_class"].append(
            tuple(
                int(torch.bincount(y[k], minlength=10).min())
                for k in (keep_it, keep_top, keep_bottom)
            )
        )
        orders = range(cfg["random_seeds"])
        res["one_shot"].append(retrain(keep_top, orders))
        res["iterative"].append(retrain(keep_it, orders))
        res["bottom"].append(retrain(keep_bottom, orders))
        rand = []
        for seed in orders:
            perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(100 + seed))
            rand.append(retrain(perm[: keep_top.numel()], range(seed, seed + 1)))
        res["random"].append(float(np.mean(rand)))
        res["random_std"].append(float(np.std(rand)))
    res["full"] = retrain(torch.arange(x.shape[0]), range(cfg["random_seeds"]))
    res["fractions"] = list(cfg["fractions"])
    res["num_rescorings"] = len(cache)
    return res


# ------------------------------------------------------------------------------------------------
# b. under-sampled class
# ------------------------------------------------------------------------------------------------
def rare_class(data: dict, cfg: dict) -> dict:
    x, y, xv, yv = (data[k] for k in ("x", "y", "xv", "yv"))
    members = torch.nonzero(y == RARE_CLASS).flatten()
    n_keep = max(2, round(0.1 * members.numel()))
    kept = members[torch.randperm(members.numel(), generator=torch.Generator().manual_seed(1))]
    keep = torch.cat([torch.nonzero(y != RARE_CLASS).flatten(), kept[:n_keep]]).sort().values
    model, init = make_model(1)
    train_sgd(model, x[keep], y[keep], cfg["steps"], seed=1)
    s = score_sui(model, init, x[keep], y[keep], xv, yv, cfg["steps"])
    out: dict = {"class": RARE_CLASS, "kept": n_keep, "of": int(members.numel())}
    for by in ("weight_si", "functional_si"):
        g = aggregate_by_group(s, s.labels, by=by)
        overall = float(getattr(s, by).mean())
        out[by] = {int(c): float(m) / overall for c, m in zip(g.groups, g.mean)}
        others = [v for c, v in out[by].items() if c != RARE_CLASS]
        out[f"{by}_ratio"] = out[by][RARE_CLASS] / float(np.mean(others))
        out[f"{by}_rank"] = 1 + sum(v > out[by][RARE_CLASS] for v in others)
    out["counts"] = {int(c): int(n) for c, n in zip(g.groups, g.count)}
    return out


# ------------------------------------------------------------------------------------------------
# c. data sources
# ------------------------------------------------------------------------------------------------
SOURCES = ("clean", f"noisy (std {SOURCE_NOISE_STD})", "blurred 3x3")


def data_sources(data: dict, cfg: dict) -> dict:
    x, y, xv, yv = (data[k] for k in ("x", "y", "xv", "yv"))
    n = x.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(2))
    source = torch.zeros(n, dtype=torch.long)
    source[perm[round(0.6 * n) : round(0.8 * n)]] = 1
    source[perm[round(0.8 * n) :]] = 2
    gen = torch.Generator().manual_seed(3)
    x_mixed = x.clone()
    noisy = source == 1
    x_mixed[noisy] = (
        x[noisy] + SOURCE_NOISE_STD * torch.randn(x[noisy].shape, generator=gen)
    ).clamp(0, 1)
    x_mixed[source == 2] = blur(x[source == 2], data["shape"])
    model, init = make_model(2)
    train_sgd(model, x_mixed, y, cfg["steps"], seed=2)
    s = score_sui(model, init, x_mixed, y, xv, yv, cfg["steps"])
    out: dict = {"names": list(SOURCES), "counts": [int((source == k).sum()) for k in range(3)]}
    for by in ("weight_si", "functional_si"):
        g = aggregate_by_group(s, source, by=by)
        overall = float(getattr(s, by).mean())
        out[by] = [float(m) / overall for m in g.mean]
    out["val_acc"] = accuracy(model, xv, yv)
    return out


# ------------------------------------------------------------------------------------------------
# d. corrupted and adversarial inputs
# ------------------------------------------------------------------------------------------------
def corrupted_inputs(data: dict, cfg: dict) -> dict:
    x, y, xv, yv = (data[k] for k in ("x", "y", "xv", "yv"))
    n = x.shape[0]
    clean_model, _ = make_model(3)
    train_sgd(clean_model, x, y, cfg["steps"], seed=3)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(4))
    n_bad = round(0.05 * n)
    kind = torch.zeros(n, dtype=torch.long)  # 0 clean, 1 noise-corrupted, 2 FGSM
    kind[perm[:n_bad]] = 1
    kind[perm[n_bad : 2 * n_bad]] = 2
    gen = torch.Generator().manual_seed(5)
    x_mixed = x.clone()
    x_mixed[kind == 1] = (
        x[kind == 1] + CORRUPT_STD * torch.randn(x[kind == 1].shape, generator=gen)
    ).clamp(0, 1)
    x_adv = fgsm(clean_model, x[kind == 2], y[kind == 2], FGSM_EPS)
    x_mixed[kind == 2] = x_adv
    out: dict = {
        "eps": FGSM_EPS,
        "noise_std": CORRUPT_STD,
        "n_each": n_bad,
        "attacked_acc_before": accuracy(clean_model, x[kind == 2], y[kind == 2]),
        "attacked_acc_after": accuracy(clean_model, x_adv, y[kind == 2]),
        "corrupted_acc_clean_model": accuracy(clean_model, x_mixed[kind == 1], y[kind == 1]),
    }
    model, init = make_model(4)
    train_sgd(model, x_mixed, y, cfg["steps"], seed=4)
    s = score_sui(model, init, x_mixed, y, xv, yv, cfg["steps"])
    out["replayed"] = (s.settings["learning_rate"], s.settings["num_steps"], s.settings["ntk"])
    out["replayed"] += (s.settings["method"],)
    scores = {
        "weight SI": s.weight_si,
        "functional SI": s.functional_si,
        "training loss": sample_loss(model, x_mixed, y),
    }
    out["auroc"] = {}
    for k, name in ((1, "noise-corrupted"), (2, "FGSM")):
        mask = (kind == 0) | (kind == k)
        out["auroc"][name] = {
            score: auroc((kind == k)[mask], value[mask]) for score, value in scores.items()
        }
    out["val_acc"] = accuracy(model, xv, yv)
    return out


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------
def plot(res: dict, png: Path, cfg: dict) -> None:
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    a = res["summarization"]
    ax = axes[0, 0]
    fr = [*a["fractions"], 1.0]
    ax.plot(fr, [*a["iterative"], a["full"]], "o-", label="top by F-SI, iterative (20%/round)")
    ax.plot(fr, [*a["one_shot"], a["full"]], "s-", label="top by F-SI, one-shot")
    ax.plot(fr, [*a["bottom"], a["full"]], "v-", label="bottom by F-SI (least informative)")
    ax.errorbar(
        fr,
        [*a["random"], a["full"]],
        yerr=[*a["random_std"], 0.0],
        fmt="k--",
        capsize=2,
        label=f"random ({cfg['random_seeds']} seeds, +- std)",
    )
    ax.set_xlabel("fraction of the training set kept")
    ax.set_ylabel("test accuracy after retraining")
    ax.set_title("a. data summarization", fontsize=10)
    ax.legend(fontsize=8)

    b = res["rare_class"]
    ax = axes[0, 1]
    classes = sorted(b["weight_si"])
    pos = np.arange(len(classes))
    ax.bar(pos - 0.2, [b["weight_si"][c] for c in classes], 0.4, label="weight SI")
    ax.bar(pos + 0.2, [b["functional_si"][c] for c in classes], 0.4, label="functional SI")
    ax.set_xticks(pos, [f"{c}{'*' if c == RARE_CLASS else ''}" for c in classes])
    ax.set_yscale("log")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel(f"class (* = cut to {b['kept']} of {b['of']} training samples)")
    ax.set_ylabel("class mean SUI / mean over all samples")
    ax.set_title("b. under-sampled class", fontsize=10)
    ax.legend(fontsize=8)

    c = res["sources"]
    ax = axes[1, 0]
    pos = np.arange(3)
    ax.bar(pos - 0.2, c["weight_si"], 0.4, label="weight SI")
    ax.bar(pos + 0.2, c["functional_si"], 0.4, label="functional SI")
    ax.set_xticks(pos, [f"{nm}\n(n = {k})" for nm, k in zip(c["names"], c["counts"])])
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_ylabel("source mean SUI / mean over all samples")
    ax.set_title("c. data sources", fontsize=10)
    ax.legend(fontsize=8)

    d = res["corrupted"]
    ax = axes[1, 1]
    kinds = list(d["auroc"])
    score_names = list(d["auroc"][kinds[0]])
    pos = np.arange(len(kinds))
    for j, sn in enumerate(score_names):
        ax.bar(pos + (j - 1) * 0.27, [d["auroc"][k][sn] for k in kinds], 0.27, label=sn)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xticks(
        pos,
        [
            f"noise-corrupted (std {d['noise_std']})\nn = {d['n_each']}",
            f"FGSM (eps {d['eps']})\nn = {d['n_each']}",
        ],
    )
    ax.set_ylim(0, 1.2)
    ax.set_ylabel("AUROC for flagging them among clean samples")
    ax.set_title("d. corrupted and adversarial training inputs (true labels)", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", ncol=3)
    fig.suptitle(
        f"SUI applications on digits (MLP 64-{'-'.join(map(str, HIDDEN))}-10, MSE + SGD, "
        f"{cfg['steps']} steps, {cfg['n_train']} training samples)"
    )
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds instead of minutes")
    parser.add_argument("--out", default="examples/figures", help="folder for the PNG")
    args = parser.parse_args(argv)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            # printed below instead: the replayed lr and steps of the stable linearized GD
            warnings.filterwarnings("ignore", message=".*exceeds the stability limit.*")
            return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> dict:
    ds = load_dataset("digits")
    tr, va, te = splits(len(ds.targets))
    cfg = dict(steps=600, fractions=[0.05, 0.1, 0.2, 0.3, 0.5, 0.7], random_seeds=3)
    cfg["step_fraction"] = 0.2
    if args.quick:
        tr, va, te = tr[:300], va[:100], te[:150]
        cfg.update(steps=150, fractions=[0.2, 0.5], random_seeds=2, step_fraction=0.5)
    data = dict(
        x=ds.inputs[tr],
        y=ds.targets[tr],
        xv=ds.inputs[va],
        yv=ds.targets[va],
        xt=ds.inputs[te],
        yt=ds.targets[te],
        shape=ds.image_shape,
    )
    cfg["n_train"] = len(tr)
    print(
        f"digits: {len(tr)} train / {len(va)} validation (F-SI) / {len(te)} test; MLP "
        f"64-{'-'.join(map(str, HIDDEN))}-10, MSE, SGD lr {LR}, batch {BATCH}, {cfg['steps']} steps"
    )
    res: dict = {}

    res["summarization"] = a = summarization(data, cfg)
    print(
        "\na. Summarization: test accuracy after retraining on the kept fraction (mean over "
        f"{cfg['random_seeds']} mini-batch orders; random: {cfg['random_seeds']} subsets)"
    )
    print(
        f"{'kept':>5} | {'top iterative':>13} {'top one-shot':>12} {'bottom':>7} | "
        f"{'random +- std':>15} | smallest class (iterative / one-shot / bottom)"
    )
    for i, frac in enumerate(a["fractions"]):
        print(
            f"{frac:>5.0%} | {a['iterative'][i]:>13.3f} {a['one_shot'][i]:>12.3f} "
            f"{a['bottom'][i]:>7.3f} | {a['random'][i]:.3f} +- {a['random_std'][i]:.3f} | "
            + " / ".join(str(v) for v in a["min_class"][i])
        )
    print(f"{1.0:>5.0%} | {a['full']:>13.3f} (full training set)")

    res["rare_class"] = b = rare_class(data, cfg)
    print(
        f"\nb. Under-sampled class {RARE_CLASS} ({b['kept']} of {b['of']} training samples kept): "
        "class mean SUI / mean over all samples"
    )
    print(f"{'class':>5} {'n':>4} | {'weight SI':>9} {'F-SI':>7}")
    for c in sorted(b["weight_si"]):
        print(
            f"{c:>5} {b['counts'][c]:>4} | {b['weight_si'][c]:>9.2f} {b['functional_si'][c]:>7.2f}"
        )
    print(
        f"rare class / mean of the other classes: weight SI x{b['weight_si_ratio']:.2f} "
        f"(rank {b['weight_si_rank']} of 10), functional SI x{b['functional_si_ratio']:.2f} "
        f"(rank {b['functional_si_rank']} of 10)"
    )

    res["sources"] = c = data_sources(data, cfg)
    print(
        "\nc. Data sources: source mean SUI / mean over all samples "
        f"(validation accuracy of the mixed-source model {c['val_acc']:.3f})"
    )
    for name, n, w, f in zip(c["names"], c["counts"], c["weight_si"], c["functional_si"]):
        print(f"{name:>18} n = {n:>4} | weight SI {w:.2f}  F-SI {f:.2f}")

    res["corrupted"] = d = corrupted_inputs(data, cfg)
    print(
        f"\nd. Corrupted inputs: {d['n_each']} noise-corrupted (std {d['noise_std']}) and "
        f"{d['n_each']} FGSM (eps {d['eps']}) training images, true labels"
    )
    print(
        f"clean model's accuracy on the attacked images: {d['attacked_acc_before']:.3f} before, "
        f"{d['attacked_acc_after']:.3f} after FGSM; on the noise-corrupted ones "
        f"{d['corrupted_acc_clean_model']:.3f}"
    )
    lr, steps, ntk, method = d["replayed"]
    print(
        f"(SUI replays the run as linearized GD: lr {LR} is beyond its stability limit, so "
        f"lr {lr:.3f} for {steps} steps, same lr x steps; {ntk} NTK, method '{method}')"
    )
    print(f"{'AUROC':>16} | {'weight SI':>9} {'F-SI':>6} {'train loss':>10}")
    for kind, row in d["auroc"].items():
        print(
            f"{kind:>16} | {row['weight SI']:>9.3f} {row['functional SI']:>6.3f} "
            f"{row['training loss']:>10.3f}"
        )

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "sui_applications.png"
    plot(res, png, cfg)
    print(f"saved {png}")
    res["png"] = png
    return res


if __name__ == "__main__":
    main()
