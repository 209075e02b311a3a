"""Independent, deliberately naive NumPy float64 references for DSE/DSMI/CSE/CSMI.

Written from the description of the authors' reference semantics (docs/dse.md §4), not from
their code and not from ``lightning_info``: exact-difference distances (``scipy cdist``), the
Gaussian with its ``1/(sigma sqrt(2 pi))`` prefactor, normalisation by **dense diagonal matrix
products**, ``numpy.linalg.eigvalsh``, ``|lambda|^t``, ``p + eps`` on every entry, ``log2``.
Slow (O(N^3)) on purpose; use small N.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist

EPS = np.finfo(float).eps


def ref_widths(x: np.ndarray, sigma: float | str) -> np.ndarray:
    """Per-pair widths sigma_i * sigma_j: a number squared, or the docs/dse.md §1 rules.

    "median": the lower median of the N(N-1)/2 pairwise distances, squared. "knn": the distance
    of each point to its 10th nearest other point, sigma_i * sigma_j.
    """
    x = np.asarray(x, dtype=np.float64)
    dist = cdist(x, x, metric="euclidean")
    if sigma == "median":
        pairs = np.sort(dist[np.triu_indices(len(x), k=1)])
        width = pairs[(len(pairs) - 1) // 2]
        return np.full_like(dist, width**2)
    if sigma == "knn":
        k = min(10, len(x) - 1)
        widths = np.array([np.sort(row)[k] for row in dist])  # row[0] is the point itself
        return np.outer(widths, widths)
    return np.full_like(dist, float(sigma) ** 2)


def ref_kernel(x: np.ndarray, sigma: float | str = 10.0) -> np.ndarray:
    """K = D^-1/2 G D^-1/2 with dense diagonal matmuls."""
    x = np.asarray(x, dtype=np.float64)
    dist = cdist(x, x, metric="euclidean")
    widths_sq = ref_widths(x, sigma)
    g = np.exp(-(dist**2) / (2 * widths_sq))
    if not isinstance(sigma, str):  # the reference's constant prefactor (cancels below)
        g = g / (sigma * np.sqrt(2 * np.pi))
    deg = g.sum(axis=1)
    d_inv_sqrt = np.diag(deg**-0.5)
    return d_inv_sqrt @ g @ d_inv_sqrt


def ref_random_walk(x: np.ndarray, sigma: float = 10.0) -> np.ndarray:
    """P = D^-1 G (row-stochastic, not symmetric)."""
    x = np.asarray(x, dtype=np.float64)
    dist = cdist(x, x, metric="euclidean")
    g = np.exp(-(dist**2) / (2 * sigma**2))
    return np.diag(1.0 / g.sum(axis=1)) @ g


def ref_entropy_of_eigvals(eigvals: np.ndarray, t: float = 1.0, eps: float = EPS) -> float:
    lam = np.abs(eigvals) ** t
    p = lam / lam.sum() + eps
    return float(-(p * np.log2(p)).sum())


def ref_dse(x: np.ndarray, sigma: float | str = 10.0, t: float = 1.0) -> float:
    """DSE in bits with the reference's semantics (eps added, no subsampling)."""
    return ref_entropy_of_eigvals(np.linalg.eigvalsh(ref_kernel(x, sigma)), t)


def ref_dsmi(
    x: np.ndarray,
    labels: np.ndarray,
    sigma: float = 10.0,
    t: float = 1.0,
    num_repeats: int = 5,
    seed: int = 0,
) -> float:
    """DSMI with the subsample-size trick; numpy Generator re-seeded per class (as the reference
    re-seeds per class), so it agrees with ours only in distribution."""
    x = np.asarray(x, dtype=np.float64)
    labels = np.asarray(labels)
    n = len(x)
    mi = 0.0
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n_c = len(members)
        h_cond = ref_dse(x[members], sigma, t)
        rng = np.random.default_rng(seed)
        h_star = np.mean(
            [
                ref_dse(x[rng.choice(n, size=n_c, replace=False)], sigma, t)
                for _ in range(num_repeats)
            ]
        )
        mi += n_c / n * (h_star - h_cond)
    return float(mi)


def ref_bin_scalar(y: np.ndarray, n_bins: int) -> np.ndarray:
    """Min-max scaling + np.digitize on linspace(0, 1, n_bins + 1)[:-1]: labels 1..n_bins."""
    y = np.asarray(y, dtype=np.float64)
    scaled = (y - y.min()) / (y.max() - y.min())
    return np.digitize(scaled, np.linspace(0, 1, n_bins + 1)[:-1])


def ref_cells(x: np.ndarray, num_bins: int) -> list[tuple[int, ...]]:
    """Per-dimension min-max binning, written as explicit Python loops."""
    x = np.asarray(x, dtype=np.float64)
    n, dim = x.shape
    cols = []
    for j in range(dim):
        lo, hi = x[:, j].min(), x[:, j].max()
        col = []
        for i in range(n):
            if hi == lo:
                col.append(0)
                continue
            b = int(np.floor((x[i, j] - lo) / (hi - lo) * num_bins))
            col.append(min(b, num_bins - 1))
        cols.append(col)
    return [tuple(cols[j][i] for j in range(dim)) for i in range(n)]


def ref_plugin_entropy(items: list) -> float:
    counts: dict = {}
    for it in items:
        counts[it] = counts.get(it, 0) + 1
    n = len(items)
    return float(-sum(c / n * np.log2(c / n) for c in counts.values()))


def ref_cse(x: np.ndarray, num_bins: int = 2) -> float:
    return ref_plugin_entropy(ref_cells(x, num_bins))


def ref_csmi(x: np.ndarray, labels: np.ndarray, num_bins: int = 2) -> float:
    cells = ref_cells(x, num_bins)
    labels = list(np.asarray(labels))
    n = len(cells)
    cond = 0.0
    for c in set(labels):
        sub = [cell for cell, lab in zip(cells, labels) if lab == c]
        cond += len(sub) / n * ref_plugin_entropy(sub)
    return ref_plugin_entropy(cells) - cond
