"""DSE / DSMI values of two checkouts on fixed inputs: a refactor must leave them identical.

Runs the same fixed cases (functional DSE and DSMI with every solver, dtype and width rule; the
metrics, with and without their subsample; the monitor's per-layer profile) in one subprocess per
checkout, each importing ``lightning_info`` from its own root via ``PYTHONPATH``, and prints the
largest absolute difference per case. Usage::

    python benchmarks/compare_dse_values.py --before /path/to/old/checkout [--after .]

Exit status 0 if every case agrees within ``--tolerance`` (default 0: bit for bit).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

_CHILD = r"""
import json, sys, torch
from sklearn.datasets import load_digits
from lightning_info.functional import (
    diffusion_spectral_entropy as dse, diffusion_spectral_mutual_information as dsmi,
    cluster_reference,
)
from lightning_info.functional.dse import _information_profile
from lightning_info.metrics import DiffusionSpectralEntropy, DiffusionSpectralMutualInformation
from lightning_info.metrics.dse import _DiffusionProfile

torch.set_num_threads(1)
digits = torch.from_numpy(load_digits().data[:600]).double()
labels = torch.from_numpy(load_digits().target[:600]).long()
g = torch.Generator().manual_seed(0)
gauss = torch.randn(1500, 10, generator=g, dtype=torch.float64)
glabels = (gauss[:, 0] > 0).long() + 2 * (gauss[:, 1] > 0).long()
clusters = cluster_reference(digits, num_clusters=10, seed=0)
out = {}
def put(name, value):
    out[name] = [float(v) for v in torch.as_tensor(value).double().flatten().tolist()]

for sigma in (10.0, 30.0, "median", "knn"):
    for dtype in (torch.float64, torch.float32):
        for t in (1, 2):
            put(f"dse/digits/{sigma}/{dtype}/t{t}", dse(digits, sigma=sigma, dtype=dtype, t=t))
    put(f"dsmi/labels/{sigma}", dsmi(digits, labels, sigma=sigma))
    put(f"dsmi/clusters/{sigma}", dsmi(digits, None, sigma=sigma, clusters=clusters))
put("dsmi/scalar", dsmi(digits, digits[:, 20], discrete=False, sigma=30.0))
put("dsmi/vector", dsmi(digits[:200], digits[:200, :32], sigma=30.0, num_clusters=4))
put("dse/subsample", dse(digits, sigma=30.0, max_samples=250, seed=4))
put("dsmi/subsample", dsmi(digits, labels, sigma=30.0, max_samples=250, seed=4))
for solver in ("lanczos", "auto"):
    put(f"dse/gauss/{solver}", dse(gauss, sigma="median", solver=solver, num_lanczos_probes=8))
    put(f"dsmi/gauss/{solver}", dsmi(gauss, glabels, sigma=3.0, solver=solver, num_repeats=2))
put("dse/gauss/lanczos-t2", dse(gauss, sigma=3.0, t=2, solver="lanczos", num_lanczos_steps=16))

p = _information_profile(digits, {"y": labels, "x": clusters}, sigma="median")
put("profile/dse", p.dse); put("profile/dsmi_y", p.dsmi["y"]); put("profile/dsmi_x", p.dsmi["x"])
put("profile/eigvals", torch.sort(p.eigvals).values)
pl = _information_profile(gauss, {"y": glabels}, sigma=3.0, solver="lanczos", num_repeats=2)
put("profile-lanczos/dse", pl.dse); put("profile-lanczos/dsmi_y", pl.dsmi["y"])

for solver in ("exact", "auto", "lanczos"):
    m = DiffusionSpectralEntropy(sigma=2.0, max_samples=1100, solver=solver, seed=2)
    for chunk in gauss.split(256):
        m.update(chunk)
    put(f"metric/dse/{solver}", m.compute())
    if solver == "exact":
        put("metric/spectrum", m.spectrum())
m = DiffusionSpectralMutualInformation(sigma="median", max_samples=400)
for a, b in zip(digits.split(100), labels.split(100)):
    m.update(a, b)
put("metric/dsmi", m.compute())
options = DiffusionSpectralEntropy(sigma="median", dtype=torch.float32).options()
options["max_samples"] = None
prof = _DiffusionProfile(("dsmi_y", "dsmi_x"), num_repeats=5, self_clusters=10, **options)
prof.update(digits[:500], torch.stack([labels[:500], clusters[:500]], 1), index=torch.arange(500))
p = prof.compute()
put("monitor-profile/dse", p.dse)
for k, v in sorted(p.dsmi.items()):
    put(f"monitor-profile/{k}", v)
json.dump(out, sys.stdout)
"""


def _values(root: Path) -> dict[str, list[float]]:
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{root}: the cases failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def main() -> int:
    """Compare the two checkouts and print the differences.

    Returns:
        0 when every case agrees within the tolerance, else 1.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="the old checkout's root")
    parser.add_argument("--after", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--tolerance", type=float, default=0.0)
    args = parser.parse_args()
    before, after = _values(args.before.resolve()), _values(args.after.resolve())
    worst = 0.0
    for name in sorted(before):
        a, b = before[name], after.get(name)
        if b is None or len(a) != len(b):
            print(f"{name}: missing or another length after")
            return 1
        diff = max(abs(x - y) for x, y in zip(a, b))
        worst = max(worst, diff)
        print(f"{name:40s} {a[0]: .12g}  max |diff| {diff:.3g}")
    print(f"{len(before)} cases, max |diff| over all: {worst:.3g}")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    raise SystemExit(main())
