"""DSE vs intrinsic dimension under noise, next to binned Shannon entropy and a kNN estimator.

Toy study of Liao, Liu et al. 2023 (arXiv 2312.04823), Sec. IV: N points uniform in the cube
[-1, 1]^d, placed in the first d of D ambient coordinates (the other D - d coordinates are 0),
plus uniform noise U[-eps, eps] in **all** D coordinates (eps relative to the cube half-width
1). For each intrinsic dimension d and noise level eps we compute

* diffusion spectral entropy (DSE, bits) with the paper's fixed sigma = 10 and t = 1. DSE is not
  scale-free: sigma = 10 suits this cube (mean pairwise distance sqrt(2d/3), 1.2 at d = 2 and 13 at
  d = 256), so the kernel neither decouples (sigma = 1 saturates at log2 N by d = 16) nor merges
  everything;
* classic binned Shannon entropy (CSE, 2 bins per dimension, bits), ``classic_shannon_entropy``;
* the Kozachenko-Leonenko k-nearest-neighbour differential entropy (k = 3, bits), written below.

The paper uses N = 500, D = 2048; here N = 500, D = 256 (quick: N = 150, D = 48, 1 seed) with 3 seeds.

    python examples/dse_intrinsic_dimension.py            # ~10-30 s on 2 CPU cores
    python examples/dse_intrinsic_dimension.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from scipy.special import digamma, gammaln
from sklearn.neighbors import NearestNeighbors

from lightning_info.functional import (
    classic_shannon_entropy,
    diffusion_spectral_entropy,
)

NOISE_LEVELS = (0.0, 0.01, 0.1, 0.5)
SIGMA = 10.0


def kozachenko_leonenko_entropy(x: np.ndarray, k: int = 3) -> float:
    """Kozachenko-Leonenko kNN estimate of the differential entropy of ``x`` (N, D), in bits.

    H = psi(N) - psi(k) + log V_D + (D / N) sum_i log r_i, with r_i the Euclidean distance of
    point i to its k-th neighbour and V_D the volume of the unit D-ball (Kozachenko & Leonenko
    1987; Kraskov et al. 2004, Eq. 20), converted from nats to bits.
    """
    n, dim = x.shape
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    r = np.maximum(dist[:, k], 1e-300)  # column 0 is the point itself
    log_unit_ball = 0.5 * dim * math.log(math.pi) - gammaln(0.5 * dim + 1.0)
    nats = digamma(n) - digamma(k) + log_unit_ball + dim * float(np.mean(np.log(r)))
    return nats / math.log(2.0)


def sample(n: int, ambient: int, d: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """N points uniform in [-1, 1]^d in the first d of ``ambient`` coordinates, plus noise."""
    x = np.zeros((n, ambient))
    x[:, :d] = rng.uniform(-1.0, 1.0, size=(n, d))
    if noise > 0:
        x += rng.uniform(-noise, noise, size=(n, ambient))
    return x


def run(*, n: int, ambient: int, dims: list[int], seeds: int) -> dict[str, np.ndarray]:
    """Return arrays of shape (noise levels, dims, seeds) for 'dse', 'cse' and 'knn'."""
    shape = (len(NOISE_LEVELS), len(dims), seeds)
    out = {key: np.zeros(shape) for key in ("dse", "cse", "knn")}
    for a, noise in enumerate(NOISE_LEVELS):
        for b, d in enumerate(dims):
            for s in range(seeds):
                rng = np.random.default_rng([s, a, d])
                x = sample(n, ambient, d, noise, rng)
                out["dse"][a, b, s] = diffusion_spectral_entropy(x, sigma=SIGMA, t=1).item()
                out["cse"][a, b, s] = classic_shannon_entropy(x).item()
                out["knn"][a, b, s] = kozachenko_leonenko_entropy(x)
    return out


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds instead of a minute")
    parser.add_argument("--out", default="examples/figures", help="folder for the PNG")
    args = parser.parse_args(argv)
    if args.quick:
        n, ambient, dims, seeds = 150, 48, [1, 8, 48], 1
    else:
        n, ambient, dims, seeds = 500, 256, [1, 2, 4, 8, 16, 32, 64, 96, 128, 192, 256], 3
    res = run(n=n, ambient=ambient, dims=dims, seeds=seeds)

    print(
        f"\nN = {n}, ambient D = {ambient}, sigma = {SIGMA}, t = 1, {seeds} seeds "
        f"(mean; log2 N = {math.log2(n):.2f} bits)"
    )
    header = f"{'noise':>5} {'d':>4} | {'DSE':>6} {'+-':>5} | {'CSE':>6} | {'kNN (KL)':>9}"
    print(header)
    print("-" * len(header))
    for a, noise in enumerate(NOISE_LEVELS):
        for b, d in enumerate(dims):
            print(
                f"{noise:>5.2f} {d:>4d} | {res['dse'][a, b].mean():>6.3f} "
                f"{res['dse'][a, b].std():>5.3f} | {res['cse'][a, b].mean():>6.3f} | "
                f"{res['knn'][a, b].mean():>9.1f}"
            )

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    titles = {
        "dse": f"DSE (sigma = {SIGMA:g}, t = 1)",
        "cse": "classic binned Shannon entropy (2 bins/dim)",
        "knn": "kNN (Kozachenko-Leonenko, k = 3)",
    }
    for ax, key in zip(axes, ("dse", "cse", "knn")):
        for a, noise in enumerate(NOISE_LEVELS):
            mean, std = res[key][a].mean(axis=1), res[key][a].std(axis=1)
            ax.errorbar(dims, mean, yerr=std, marker="o", ms=3, capsize=2, label=f"noise {noise:g}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("intrinsic dimension d")
        ax.set_ylabel("entropy (bits)")
        ax.set_title(titles[key], fontsize=10)
        if key != "knn":
            ax.axhline(math.log2(n), color="grey", ls=":", lw=1)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Uniform cube [-1,1]^d in D = {ambient}, N = {n}, {seeds} seeds")
    fig.tight_layout()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "dse_intrinsic_dimension.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    print(f"saved {png}")
    return {"dims": dims, "noise_levels": NOISE_LEVELS, "results": res, "png": png}


if __name__ == "__main__":
    main()
