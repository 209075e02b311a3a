"""Benchmark: exact DSE in lightning_info vs a straightforward NumPy version of the reference.

The reference algorithm (Liao, Liu et al. 2023, arXiv 2312.04823; the authors' ``dse-dsmi``
package) is re-implemented here from its description, as shipped: ``sklearn`` pairwise distances,
Gaussian kernel, normalisation with two **dense diagonal matmuls**, a symmetry check, all
eigenvalues with ``numpy.linalg.eigvalsh`` in float64, ``|lambda|``, ``p + eps``, ``log2``.

Ours: ``lightning_info.functional.diffusion_spectral_entropy`` with default settings (float64
eigensolve) and with ``dtype=torch.float32``. Same process, same data (uniform [0, 1]^D, D = 256),
median wall-clock of repeats (fewer at large N). Prints a markdown table and writes it to
``benchmarks/out/dse.md``.

Usage: ``python benchmarks/dse.py [--sizes 1000 2000 4000 8000] [--dim 256] [--threads 1]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import pairwise_distances

from lightning_info.functional import diffusion_spectral_entropy


def reference_dse(x: np.ndarray, sigma: float = 10.0, t: float = 1.0) -> float:
    """The reference algorithm, written out plainly (dense, float64, O(N^3) normalisation)."""
    dist = pairwise_distances(x)
    g = 1.0 / (sigma * np.sqrt(2 * np.pi)) * np.exp(-(dist**2) / (2 * sigma**2))
    deg = np.sum(g, axis=1)
    d_inv_sqrt = np.diag(deg**-0.5)
    k = d_inv_sqrt @ g @ d_inv_sqrt
    if np.allclose(k, k.T, rtol=1e-5, atol=1e-8):
        eigvals = np.linalg.eigvalsh(k)
    else:  # pragma: no cover - never taken for a symmetric kernel
        eigvals = np.linalg.eigvals(k)
    eigvals = np.abs(eigvals) ** t
    p = eigvals / eigvals.sum() + np.finfo(float).eps
    return float(-np.sum(p * np.log2(p)))


def _time_interleaved(fns: list, repeats: int) -> list[tuple[float, float]]:
    """Median wall-clock seconds of each function and its last value.

    The calls are interleaved round-robin (A, B, C, A, B, C, ...) so that load from other jobs
    on a shared machine affects every contender alike.
    """
    times: list[list[float]] = [[] for _ in fns]
    values: list = [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            values[i] = fn()
            times[i].append(time.perf_counter() - start)
    return [(statistics.median(ts), v) for ts, v in zip(times, values)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000, 8000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "dse.md")
    parser.add_argument("--repeats", type=int, default=None, help="override the repeat schedule")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="BLAS/LAPACK/OpenMP threads for both contenders (default: library defaults). "
        "1 gives stable timings on an oversubscribed shared machine.",
    )
    args = parser.parse_args()
    limiter = None
    if args.threads is not None:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        limiter = threadpool_limits(limits=args.threads)  # numpy's OpenBLAS (and MKL if loaded)

    header = (
        "| N | reference s | ours default (float64) s | ours float32 s | speedup default | "
        "speedup float32 | abs err default (bits) | abs err float32 (bits) | DSE (bits) |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    rows = []
    print(header, flush=True)
    for n in args.sizes:
        repeats = 5 if n <= 1000 else 3 if n <= 2000 else 2 if n <= 4000 else 1
        repeats = args.repeats or repeats
        x = np.random.default_rng(0).uniform(size=(n, args.dim))
        xt = torch.from_numpy(x)
        diffusion_spectral_entropy(xt[:64])  # warm-up (lazy init of torch kernels)
        (t_ref, v_ref), (t_def, v_def), (t_32, v_32) = _time_interleaved(
            [
                lambda x=x: reference_dse(x),
                lambda xt=xt: diffusion_spectral_entropy(xt).item(),
                lambda xt=xt: diffusion_spectral_entropy(xt, dtype=torch.float32).item(),
            ],
            repeats,
        )
        row = (
            f"| {n} | {t_ref:.3f} | {t_def:.3f} | {t_32:.3f} | {t_ref / t_def:.2f}x | "
            f"{t_ref / t_32:.2f}x | {abs(v_def - v_ref):.1e} | {abs(v_32 - v_ref):.1e} | "
            f"{v_ref:.6f} |"
        )
        rows.append(row)
        print(row, flush=True)

    load = os.getloadavg() if hasattr(os, "getloadavg") else ("n/a",)
    note = (
        f"\nD = {args.dim}, uniform [0, 1]^D data, sigma = 10, t = 1; median of "
        f"{args.repeats if args.repeats else '5/3/2/1'} interleaved repeats "
        f"{'' if args.repeats else 'for N <= 1000/2000/4000/above'}. {os.cpu_count()} CPU cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), numpy {np.__version__} "
        f"({'library default' if limiter is None else args.threads} BLAS threads), {platform.processor() or platform.machine()}; "
        f"load average at the end: {', '.join(f'{v:.1f}' for v in load)} (shared machine: timings "
        "were taken under load from other jobs).\n"
    )
    print(note)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        "# Exact DSE: lightning_info vs reference algorithm\n\n"
        + header
        + "\n"
        + "\n".join(rows)
        + "\n"
        + note
    )


if __name__ == "__main__":
    main()
