"""Per-epoch signals of the overfitting benchmark, computed offline from the saved features.

Used by ``benchmarks/overfitting.py analyze``. Every signal is computed for every epoch of a run
from the artifact of ``overfitting.py train`` (held-out penultimate features, labels, curves), so
stopping policies can be replayed without retraining. The results of one run are cached in
``{out}/signals/{run}.pt`` (float64 tensors, one value per epoch).

Signals (keys of the cache; N = probe size, the first N validation samples of the run's fixed
validation split, which is a seeded permutation: a uniform random subset):

* ``dse/<bw>/<N>``, ``dsmi_y/<bw>/<N>``, ``dsmi_x/<bw>/<N>``: DSE, DSMI with the validation labels
  and with 10 spectral clusters of the validation inputs, with the kernel width ``<bw>``:
  ``fixed10`` (the paper's sigma = 10), ``median``, ``knn`` (``lightning_info``'s rules),
  ``sphere`` (features scaled to unit norm, then the median rule);
* ``dsmi_z/<bw>/<N>``: DSMI with k-means clusters (k = 10) of the features themselves (label-free);
* ``rankme/<N>``: RankMe (Garrido et al. 2023), exp of the entropy of the normalized singular
  values of the centred features;
* ``knn_acc/<N>``: leave-one-out 10-nearest-neighbour accuracy on the same held-out features
  (needs their labels);
* ``median_dist/<N>``: the median pairwise distance of the features (the feature scale).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from lightning_info.functional.diffusion import _gaussian_affinity
from lightning_info.functional.dse import (
    _affinity_eigvals,
    _dsmi_compute,
    _spectral_entropy_bits,
    cluster_reference,
)

BANDWIDTHS = {"fixed10": 10.0, "median": "median", "knn": "knn", "sphere": "median"}
#: Widths applied to unit-norm features (each row divided by its norm) instead of the raw ones.
ON_SPHERE = {"sphere"}


def rankme(z: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe of features (N, D): exp(-sum p log p), p = singular values / their sum (+ eps)."""
    s = torch.linalg.svdvals(z.double())
    p = s / s.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


def knn_accuracy(z: torch.Tensor, labels: torch.Tensor, k: int = 10) -> float:
    """Leave-one-out k-NN accuracy (majority vote, ties to the nearest class) on (N, D) features."""
    d = torch.cdist(z.double(), z.double())
    d.fill_diagonal_(float("inf"))
    idx = d.topk(k, largest=False).indices  # (N, k), nearest first
    votes = torch.zeros(z.shape[0], int(labels.max()) + 1, dtype=torch.float64)
    weights = 1.0 + 1e-6 * torch.arange(k, 0, -1, dtype=torch.float64)  # ties: nearer wins
    votes.scatter_add_(1, labels[idx], weights.expand(z.shape[0], k).contiguous())
    return float((votes.argmax(1) == labels).double().mean())


def _dse_and_dsmis(
    z: torch.Tensor, groups: dict[str, torch.Tensor], sigma: float | str, seed: int = 0
) -> dict[str, float]:
    """DSE and DSMI with each grouping, from one affinity (exact eigensolves, float64)."""
    x = z.double()
    g = _gaussian_affinity(x, sigma)
    out = {
        "dse": float(
            _spectral_entropy_bits(_affinity_eigvals(g.clone()[None], torch.float64)[0], 1.0)
        )
    }
    for name, labels in groups.items():
        out[name] = float(_dsmi_compute(x, labels, sigma=sigma, num_repeats=5, seed=seed))
    return out


#: Kernel widths computed at each probe size (the knn rule only at the smaller, cheaper one).
PLAN = {500: ("median", "knn"), 1000: ("fixed10", "median")}


def run_signals(artifact: dict, val_inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """All signals of one run, one value per epoch (index = epoch)."""
    feats = artifact["val_features"]  # (E+1, n_val, D) float32
    labels = artifact["val_labels"]
    n_epochs = feats.shape[0]
    out: dict[str, list[float]] = {}
    plan: dict[int, tuple[str, ...]] = {}
    for n, bws in PLAN.items():  # digits has 360 validation samples: one size, every width
        n = min(n, feats.shape[1])
        plan[n] = tuple(dict.fromkeys(plan.get(n, ()) + bws))
    for n, bws in plan.items():
        y = labels[:n]
        x_clusters = cluster_reference(val_inputs[:n].double(), num_clusters=10, seed=0)
        for e in range(n_epochs):
            z = feats[e, :n].double()
            out.setdefault(f"rankme/{n}", []).append(rankme(z))
            out.setdefault(f"knn_acc/{n}", []).append(knn_accuracy(z, y))
            out.setdefault(f"median_dist/{n}", []).append(float(torch.pdist(z).median()))
            # the monitor's dsmi_z grouping: k-means (one seeded init) of the float32 features
            z_clusters = cluster_reference(z, num_clusters=10, seed=0, method="kmeans")
            for bw in bws:
                sigma = BANDWIDTHS[bw]
                zz = torch.nn.functional.normalize(z, dim=1) if bw in ON_SPHERE else z
                groups = {"dsmi_y": y}
                if bw == "median":  # the inputs' and the features' own clusters: one width
                    groups.update(dsmi_x=x_clusters, dsmi_z=z_clusters)
                vals = _dse_and_dsmis(zz, groups, sigma)
                for q, v in vals.items():
                    out.setdefault(f"{q}/{bw}/{n}", []).append(v)
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in out.items()}


def cached_signals(
    path: Path, cache_dir: Path, val_inputs: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Signals of the run saved at ``path``, computed once and cached in ``cache_dir``."""
    cache = cache_dir / path.name
    if cache.exists():
        return torch.load(cache, weights_only=True)
    artifact = torch.load(path, weights_only=True)
    signals = run_signals(artifact, val_inputs)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    torch.save(signals, tmp)
    tmp.replace(cache)
    return signals


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN if either side is constant."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return math.nan
    return float(spearmanr(a[ok], b[ok]).statistic)
