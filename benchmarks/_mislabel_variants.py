"""SUI variants for the mislabel benchmark, computed offline on the runs of ``mislabel.py run``.

With ``linearize_at="init"`` the scores depend on the run only through the initial weights (fixed
by the seed), the noisy labels (fixed by the seed and p) and the replayed recipe (learning rate,
steps): the NTK at initialization is shared by every noise level, regime and optimizer of a
(dataset, model, seed). So the kernels are computed once per (dataset, model, seed) and cached,
and every variant is a closed-form solve on them; the per-sample peer scores come from
``<out>/scores/*.npz`` (written by ``mislabel.py run``), so combined rankings are evaluated on the
same runs.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mislabel as M

from lightning_info.functional import empirical_ntk, model_outputs
from lightning_info.functional.sui import unique_information_from_kernels

OUT = M.OUT_DEFAULT
KAPPAS = (1e-4, 1e-3, 1e-2, 1e-1)  # fixed ridges: lambda = kappa * mean eigenvalue of Theta/K
LOO_GRID = np.logspace(-6, 1, 29)  # candidate kappas of the leave-one-out selection


def kernels(dataset: str, model: str, seed: int) -> dict[str, torch.Tensor]:
    """Trace NTK (train x train, held-out x train) and outputs at the seed's initialization."""
    path = OUT / "kernels" / f"{dataset}_{model}_s{seed}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    data = M.load_split(dataset)
    net = M.build_net(model, data, seed)
    out = {
        "theta": empirical_ntk(net, data.x_train, ntk="trace"),
        "theta_val": empirical_ntk(net, data.x_val, data.x_train, ntk="trace"),
        "f0": model_outputs(net, data.x_train).double(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return out


def loo_errors(theta_k: torch.Tensor, residuals: torch.Tensor, lams: np.ndarray) -> np.ndarray:
    """Mean squared leave-one-out residual of kernel ridge on Theta/K for each lambda.

    With A = Theta/K + lambda I = U diag(mu + lambda) U^T, F = A^-1, alpha = F r, the LOO residual
    of sample i is alpha_i / F_ii (K right-hand sides share the kernel).
    """
    mu, u = torch.linalg.eigh(theta_k)
    r_hat = u.T @ residuals
    u2 = u.square()
    out = []
    for lam in lams:
        inv = 1.0 / (mu + lam)
        alpha = u @ (inv[:, None] * r_hat)
        f_ii = u2 @ inv
        out.append(float((alpha / f_ii[:, None]).square().sum(1).mean()))
    return np.asarray(out)


def loo_residuals(theta_k: torch.Tensor, residuals: torch.Tensor, lam: float) -> torch.Tensor:
    """(N, K) leave-one-out residuals f_{S-i}(x_i) - y_i = alpha_i / F_ii of the converged ridge."""
    mu, u = torch.linalg.eigh(theta_k)
    inv = 1.0 / (mu + lam)
    alpha = u @ (inv[:, None] * (u.T @ residuals))
    return alpha / (u.square() @ inv)[:, None]


def variants(
    cell: dict, kern: dict[str, torch.Tensor], y_noisy: np.ndarray
) -> dict[str, np.ndarray]:
    """Weight and functional SI of each variant, (N,) arrays in training order."""
    theta, theta_val, f0 = kern["theta"], kern["theta_val"], kern["f0"]
    n, k = f0.shape
    y = torch.as_tensor(y_noisy)
    onehot = torch.nn.functional.one_hot(y, k).double()
    mean_eig = float(torch.trace(theta)) / (n * k)
    recipe = M.RECIPES[(cell["dataset"], cell["model"], cell["optimizer"])]
    out: dict[str, np.ndarray] = {}

    def run(name: str, **kw) -> None:
        info = unique_information_from_kernels(
            theta, theta_val, f0, y, learning_rate=recipe.lr, **kw
        )
        out[f"sui_weight_{name}"] = info.weight_si.numpy()
        out[f"sui_functional_{name}"] = info.functional_si.numpy()
        out[f"sui_self_{name}"] = info.self_prediction_change.square().sum(1).numpy()

    for kappa in KAPPAS:
        run(f"ridge{kappa:g}", weight_decay=kappa * mean_eig / n)
    errors = loo_errors(theta / k, f0 - onehot, LOO_GRID * mean_eig)
    best = float(LOO_GRID[int(np.argmin(errors))])
    run("loo", weight_decay=best * mean_eig / n)
    out["loo_kappa"] = np.full(n, best)
    for name, kappa in (("loo", best), ("ridge0.01", 1e-2)):
        v = loo_residuals(theta / k, f0 - onehot, kappa * mean_eig)
        out[f"looerr_{name}"] = v.square().sum(1).numpy()  # LOO squared error
        out[f"looconf_{name}"] = -(v * onehot).sum(1).numpy()  # minus LOO output of the label
    return out


def rank01(x: np.ndarray) -> np.ndarray:
    """Percentile ranks in [0, 1] (ties averaged)."""
    from scipy.stats import rankdata

    return (rankdata(x) - 1) / max(1, len(x) - 1)


def evaluate(out: Path = OUT) -> list[dict]:
    """One row per (cell, method): AUROC and precision at k, for peers, SUI variants, combos."""
    rows = []
    for path in sorted((out / "scores").glob("*.npz")):
        dataset, model, optimizer, p, s, regime = path.stem.split("_")
        cell = {
            "dataset": dataset, "model": model, "optimizer": optimizer,
            "noise": float(p[1:]), "seed": int(s[1:]), "regime": regime,
        }  # fmt: skip
        npz = np.load(path)
        flipped = npz["flipped"].astype(bool)
        scores = {k[6:]: npz[k] for k in npz.files if k.startswith("score/")}
        scores.update(variants(cell, kernels(dataset, model, cell["seed"]), npz["y_noisy"]))
        kappa = float(scores.pop("loo_kappa")[0])
        for sui in [m for m in list(scores) if m.startswith("sui_")]:
            if "loss" in scores and np.isfinite(scores[sui]).all():
                scores[f"max({sui},loss)"] = np.maximum(rank01(scores[sui]), rank01(scores["loss"]))
                scores[f"mean({sui},loss)"] = rank01(scores[sui]) + rank01(scores["loss"])
        for method, values in scores.items():
            if not np.isfinite(values).all():
                continue
            rows.append({
                **cell, "method": method, "loo_kappa": kappa,
                "auroc": M.auroc(values, flipped), "prec_at_k": M.precision_at_k(values, flipped),
            })  # fmt: skip
    return rows


def table(rows: list[dict], methods: list[str] | None = None) -> str:
    """AUROC (prec@k) means over seeds: rows = methods, columns = (dataset, model, opt, p, regime)."""
    import collections

    cells = sorted(
        {(r["dataset"], r["model"], r["optimizer"], r["noise"], r["regime"]) for r in rows}
    )
    acc = collections.defaultdict(list)
    for r in rows:
        acc[
            (r["method"], (r["dataset"], r["model"], r["optimizer"], r["noise"], r["regime"]))
        ].append(r)
    methods = methods or sorted({r["method"] for r in rows})
    head = (
        "| method | " + " | ".join(f"{d} {m} {o} p={p:g} {g[:3]}" for d, m, o, p, g in cells) + " |"
    )
    lines = [head, "|" + "---|" * (len(cells) + 1)]
    for method in methods:
        vals = []
        for c in cells:
            rs = acc.get((method, c), [])
            if not rs:
                vals.append("-")
                continue
            a = np.mean([r["auroc"] for r in rs])
            q = np.mean([r["prec_at_k"] for r in rs])
            vals.append(f"{a:.3f} ({q:.2f})")
        lines.append(f"| {method} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    torch.set_num_threads(1)
    result = evaluate()
    print(table(result))
    kappas = sorted(
        {
            (r["dataset"], r["model"], r["optimizer"], r["noise"], r["regime"], r["loo_kappa"])
            for r in result
        }
    )
    print("\nLOO-selected kappa per cell:", *kappas[:40], sep="\n")
    _ = math
