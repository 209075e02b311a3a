"""DSMI vs label corruption on random-walk branches, next to binned CSMI and a kNN MI estimator.

Toy study of Liao, Liu et al. 2023 (arXiv 2312.04823), Sec. IV: PHATE-style data of C random-walk
branches (C = 2, 5, 10) of 100 points each in D = 20. Branch c starts at the origin and walks
with a fixed unit drift direction (random per branch) plus N(0, 0.3^2) steps, so the branches
fan out from a common root and nearby points early on are mixed. A fraction f of the labels
(chosen at random) is shuffled among themselves; for f from 0 to 1 we compute

* diffusion spectral mutual information DSMI(Z; Y) (bits, the paper's sigma = 10, t = 1; the
  branches span ~100 units, so sigma = 10 resolves them without merging neighbours);
* classic binned Shannon mutual information CSMI(Z; Y) (2 bins per dimension, bits);
* a k-nearest-neighbour MI estimator for a discrete label (Ross 2014, PLoS ONE 9: e87357, the
  estimator behind scikit-learn's ``mutual_info_classif``, here applied to the whole 20-D vector
  instead of per feature; k = 3, bits), written below.

Each point is the mean over seeds (data and shuffle redrawn), error bars one standard deviation.
The paper also varies noise and t; this script uses one noise level and t = 1.

    python examples/dsmi_label_corruption.py            # ~1-3 min on 2 CPU cores
    python examples/dsmi_label_corruption.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from scipy.special import digamma
from sklearn.neighbors import KDTree, NearestNeighbors

from lightning_info.functional import (
    classic_shannon_mutual_information,
    diffusion_spectral_mutual_information,
)

SIGMA = 10.0
AMBIENT = 20
STEP = 0.3


def knn_mutual_information(x: np.ndarray, y: np.ndarray, k: int = 3) -> float:
    """Ross (2014) kNN estimate of I(X; Y) for continuous ``x`` (N, D) and labels ``y``, in bits.

    For each point, r_i is the distance to its k-th neighbour among points of the same label and
    m_i the number of other points (any label) within r_i; then
    I = psi(N) + psi(k) - <psi(N_{y_i})> - <psi(m_i)>, clipped at 0 (as scikit-learn does).
    """
    n = len(y)
    radius = np.empty(n)
    class_sizes = np.empty(n)
    k_used = np.empty(n)
    for label in np.unique(y):
        mask = y == label
        size = int(mask.sum())
        class_sizes[mask] = size
        if size < 2:
            radius[mask], k_used[mask] = 0.0, 0
            continue
        kk = min(k, size - 1)
        dist, _ = NearestNeighbors(n_neighbors=kk + 1).fit(x[mask]).kneighbors(x[mask])
        radius[mask] = np.nextafter(dist[:, kk], 0.0)
        k_used[mask] = kk
    keep = k_used > 0
    counts = KDTree(x).query_radius(x[keep], r=radius[keep], count_only=True)
    m = np.maximum(counts - 1, 1)  # exclude the point itself
    nats = (
        digamma(keep.sum())
        + np.mean(digamma(k_used[keep]))
        - np.mean(digamma(class_sizes[keep]))
        - np.mean(digamma(m + 1))
    )
    return max(float(nats), 0.0) / math.log(2.0)


def random_walk_branches(
    num_branches: int, per_branch: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """C branches from the origin: cumulative sums of (unit drift + N(0, STEP^2)) steps."""
    xs, ys = [], []
    for c in range(num_branches):
        drift = rng.normal(size=AMBIENT)
        drift /= np.linalg.norm(drift)
        steps = drift + rng.normal(scale=STEP, size=(per_branch, AMBIENT))
        xs.append(np.cumsum(steps, axis=0))
        ys.append(np.full(per_branch, c))
    return np.concatenate(xs), np.concatenate(ys)


def shuffle_fraction(y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Copy of ``y`` where a random ``fraction`` of the entries is permuted among themselves."""
    y = y.copy()
    idx = rng.choice(len(y), size=round(fraction * len(y)), replace=False)
    y[idx] = y[rng.permutation(idx)]
    return y


def run(
    *, branches: list[int], per_branch: int, fractions: list[float], seeds: int
) -> dict[str, np.ndarray]:
    """Return arrays of shape (branch counts, fractions, seeds) for 'dsmi', 'csmi', 'knn'."""
    shape = (len(branches), len(fractions), seeds)
    out = {key: np.zeros(shape) for key in ("dsmi", "csmi", "knn")}
    for a, num in enumerate(branches):
        for s in range(seeds):
            rng = np.random.default_rng([s, num])
            x, y = random_walk_branches(num, per_branch, rng)
            for b, frac in enumerate(fractions):
                yy = shuffle_fraction(y, frac, rng)
                out["dsmi"][a, b, s] = diffusion_spectral_mutual_information(
                    x, yy, sigma=SIGMA, t=1, seed=s
                ).item()
                out["csmi"][a, b, s] = classic_shannon_mutual_information(x, yy).item()
                out["knn"][a, b, s] = knn_mutual_information(x, yy)
    return out


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds instead of minutes")
    parser.add_argument("--out", default="examples/figures", help="folder for the PNG")
    args = parser.parse_args(argv)
    if args.quick:
        branches, per_branch, fractions, seeds = [2, 5], 40, [0.0, 0.5, 1.0], 1
    else:
        branches, per_branch, seeds = [2, 5, 10], 100, 3
        fractions = [round(0.1 * i, 1) for i in range(11)]
    res = run(branches=branches, per_branch=per_branch, fractions=fractions, seeds=seeds)

    print(
        f"\n{per_branch} points per branch, D = {AMBIENT}, sigma = {SIGMA}, t = 1, "
        f"{seeds} seeds (mean +- std, bits)"
    )
    header = (
        f"{'C':>3} {'shuffled':>8} | {'DSMI':>6} {'+-':>5} | {'CSMI':>6} {'+-':>5} | "
        f"{'kNN MI':>6} {'+-':>5}"
    )
    print(header)
    print("-" * len(header))
    for a, num in enumerate(branches):
        for b, frac in enumerate(fractions):
            cells = " | ".join(
                f"{res[key][a, b].mean():>6.3f} {res[key][a, b].std():>5.3f}"
                for key in ("dsmi", "csmi", "knn")
            )
            print(f"{num:>3} {frac:>8.1f} | {cells}")

    fig, axes = plt.subplots(1, len(branches), figsize=(4.6 * len(branches), 4.0))
    labels = {
        "dsmi": f"DSMI (sigma = {SIGMA:g}, t = 1)",
        "csmi": "CSMI (2 bins/dim)",
        "knn": "kNN MI (Ross 2014, k = 3)",
    }
    for ax, a, num in zip(np.atleast_1d(axes), range(len(branches)), branches):
        for key in ("dsmi", "csmi", "knn"):
            mean, std = res[key][a].mean(axis=1), res[key][a].std(axis=1)
            ax.errorbar(fractions, mean, yerr=std, marker="o", ms=3, capsize=2, label=labels[key])
        ax.axhline(math.log2(num), color="grey", ls=":", lw=1)
        ax.axhline(0.0, color="black", lw=0.5)
        ax.set_xlabel("fraction of labels shuffled")
        ax.set_ylabel("mutual information with labels (bits)")
        ax.set_title(f"{num} branches (log2 C = {math.log2(num):.2f} bits dotted)", fontsize=10)
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle(f"Random-walk branches in D = {AMBIENT}, {per_branch} points each, {seeds} seeds")
    fig.tight_layout()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "dsmi_label_corruption.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    print(f"saved {png}")
    return {"branches": branches, "fractions": fractions, "results": res, "png": png}


if __name__ == "__main__":
    main()
