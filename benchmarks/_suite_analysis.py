"""Analysis of the suite (issue 19): replayed stops per family and the curves' behaviour.

Used by ``benchmarks/overfitting.py suite-analyze``. Every policy is replayed offline on the
recorded curves of the same runs (``_overfitting_policies.py``: Lightning's ``EarlyStopping`` rule
with best restore, and ``OverfittingEarlyStopping``'s own ``StopRule``). Regret = percentage
points of test accuracy below the best test accuracy of the run (epochs 1..E) for the epoch whose
weights the policy leaves the user with. Development and held-out families are tabulated
separately.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from _overfitting_policies import Outcome, early_stopping, no_stop, regret, stop_rule
from _overfitting_signals import spearman
from _tasks import DEVELOPMENT, HELD_OUT, TASKS

from lightning_info.callbacks.early_stopping import LABEL_FREE_MIN_LOSS_FRACTION, kept_loss_fraction

BASELINE = "ES5"
NEW = "new"
OLD = "old"
LABEL_FREE = "label-free"


def _c(run: dict, key: str) -> np.ndarray:
    return run["curves"][key].numpy()


def _s(run: dict, key: str) -> np.ndarray:
    return run["signals"][key].numpy()


#: Short names of the tables: ES5 / ES10 = ``EarlyStopping("val_acc", patience=5 / 10)`` + best
#: restore (ES5 is the baseline); new = ``StopRule(patience=10, info_drop=None)`` on val_acc and
#: held-out DSMI(Z;Y) (the new default of ``OverfittingEarlyStopping``); old = ``StopRule()`` (the
#: previous default, with the memorization stop: ``info_drop=0.2`` explicitly); label-free = ``StopRule()`` with no score on
#: ``dsmi_z`` (``OverfittingEarlyStopping.label_free()``); ES5(knn5) = ``EarlyStopping`` on the 5-NN
#: probe accuracy (the companion signal, needs probe labels); no stop = the last epoch.
POLICIES = {
    "no stop": lambda r: no_stop(len(_c(r, "test_acc")) - 1),
    BASELINE: lambda r: early_stopping(_c(r, "val_acc"), "max", patience=5),
    "ES10": lambda r: early_stopping(_c(r, "val_acc"), "max", patience=10),
    NEW: lambda r: stop_rule(_c(r, "val_acc"), _s(r, "dsmi_y"), patience=10, info_drop=None),
    OLD: lambda r: stop_rule(_c(r, "val_acc"), _s(r, "dsmi_y"), info_drop=0.2),
    LABEL_FREE: lambda r: stop_rule(None, _s(r, "dsmi_z")),
    "ES5(knn5)": lambda r: early_stopping(_s(r, "knn5"), "max", patience=5),
}


def load_runs(out: Path) -> list[dict]:
    """Config, curves and signals of every run in ``out`` (features are not loaded)."""
    runs = []
    for path in sorted(out.glob("*.pt")):
        if path.name.startswith("pretrained_"):
            continue
        art = torch.load(path, weights_only=True, mmap=True)
        runs.append(
            {"name": path.stem, **art["config"], "curves": art["curves"], "signals": art["signals"]}
        )
    return runs


def _mean(values) -> float:
    finite = [float(v) for v in values if math.isfinite(float(v))]
    return float(np.mean(finite)) if finite else math.nan


def regrets(runs: list[dict]) -> dict[str, dict[str, list[tuple[dict, Outcome, float]]]]:
    """family -> policy -> [(run, outcome, regret)]."""
    table: dict[str, dict[str, list]] = {}
    for run in runs:
        t = run["curves"]["test_acc"].numpy()
        for name, policy in POLICIES.items():
            outcome = policy(run)
            table.setdefault(run["task"], {}).setdefault(name, []).append(
                (run, outcome, regret(t, outcome))
            )
    return table


def policy_table(runs: list[dict], split: str) -> str:
    table = regrets(runs)
    families = [f for f in TASKS if TASKS[f].split == split and f in table]
    lines = [
        "| family | runs | clean best test acc | "
        + " | ".join(f"{n}: mean / max" for n in POLICIES)
        + " |",
        "|---|---|---|" + "---|" * len(POLICIES),
    ]
    for fam in families:
        rows = table[fam]
        any_rows = next(iter(rows.values()))
        clean = [
            float(r["curves"]["test_acc"][1:].max()) for r, _, _ in any_rows if r["noise"] == 0
        ]
        cells = []
        for name in POLICIES:
            g = [x[2] for x in rows[name]]
            cells.append(f"{_mean(g):.2f} / {max(g):.1f}")
        lines.append(
            f"| {fam} | {len(any_rows)} | {_mean(clean):.3f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def criteria_table(runs: list[dict], split: str) -> str:
    """Issue 19's "Done when" for the stops, per family."""
    table = regrets(runs)
    lines = [
        "| family | baseline mean / max | new stop mean / max | new <= baseline (mean) | "
        "new worst <= baseline worst + 1 pp | label-free mean | label-free <= 3 pp | "
        "old stop mean / max | mean stop epoch: baseline / new / E |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for fam in [f for f in TASKS if TASKS[f].split == split and f in table]:
        b = [x[2] for x in table[fam][BASELINE]]
        n = [x[2] for x in table[fam][NEW]]
        lf = [x[2] for x in table[fam][LABEL_FREE]]
        o = [x[2] for x in table[fam][OLD]]
        sb = _mean([x[1].stop_epoch for x in table[fam][BASELINE]])
        sn = _mean([x[1].stop_epoch for x in table[fam][NEW]])
        e = table[fam][BASELINE][0][0]["epochs"]
        ok1 = _mean(n) <= _mean(b) + 1e-9
        ok2 = max(n) <= max(b) + 1.0 + 1e-9
        lines.append(
            f"| {fam} | {_mean(b):.2f} / {max(b):.1f} | {_mean(n):.2f} / {max(n):.1f} | "
            f"{'yes' if ok1 else '**no**'} | {'yes' if ok2 else '**no**'} | {_mean(lf):.2f} | "
            f"{'yes' if _mean(lf) <= 3 else '**no**'} | {_mean(o):.2f} / {max(o):.1f} | "
            f"{sb:.1f} / {sn:.1f} / {e} |"
        )
    return "\n".join(lines)


def _curve_stats(run: dict) -> dict[str, float]:
    t = _c(run, "test_acc")[1:]
    d = _s(run, "dsmi_y")[1:]
    k = _s(run, "knn5")[1:]
    z = _s(run, "dsmi_z")[1:]
    best = int(np.argmax(t))
    first = slice(0, min(10, len(t)))
    return {
        "rho": spearman(d, t),
        "rho_rise": spearman(d[first], t[first]),
        "last_max": d[-1] / d.max() if d.max() > 0 else math.nan,
        "after_best": d[-1] / d[best] if d[best] > 0 else math.nan,
        "test_after_best": 100 * (t[best] - t[-1]),
        "rho_knn": spearman(k, t),
        "rho_z": spearman(z, t),
        "init_frac": _s(run, "dsmi_y")[0] / d.max() if d.max() > 0 else math.nan,
        "mem": float(_c(run, "train_acc_corrupted")[-1]),
    }


def curves_table(runs: list[dict], split: str) -> str:
    """Does held-out DSMI(Z;Y) rise / hold / fall, and does the 5-NN probe agree? Per family."""
    lines = [
        "| family | clean: rho(DSMI, test) first 10 epochs | clean: rho whole run | clean: "
        "DSMI last/max | DSMI at epoch 0 / max (clean) | p=0.6: memorized flipped labels (last) | "
        "p=0.6: test drop after best (pp) | p=0.6: DSMI last / at best-test epoch | p>0: rho(DSMI, "
        "test) | rho(5-NN probe acc, test) all runs | rho(dsmi_z, test) all runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for fam in [f for f in TASKS if TASKS[f].split == split]:
        sub = [r for r in runs if r["task"] == fam]
        if not sub:
            continue
        st = [(r, _curve_stats(r)) for r in sub]
        clean = [s for r, s in st if r["noise"] == 0]
        hi = [s for r, s in st if abs(r["noise"] - 0.6) < 1e-9]
        noisy = [s for r, s in st if r["noise"] > 0]

        def m(rows: list[dict], key: str) -> float:
            return _mean([s[key] for s in rows])

        lines.append(
            f"| {fam} | {m(clean, 'rho_rise'):+.2f} | {m(clean, 'rho'):+.2f} | "
            f"{m(clean, 'last_max'):.2f} | {m(clean, 'init_frac'):.2f} | {m(hi, 'mem'):.2f} | "
            f"{m(hi, 'test_after_best'):.1f} | {m(hi, 'after_best'):.2f} | {m(noisy, 'rho'):+.2f} | "
            f"{m([s for _, s in st], 'rho_knn'):+.2f} | {m([s for _, s in st], 'rho_z'):+.2f} |"
        )
    return "\n".join(lines)


#: Thresholds of the label-free check compared on the development families (issue 19).
CHECK_THRESHOLDS = (0.3, 0.4, 0.5, 0.6)
#: A label-free run is "bad" when its regret exceeds the issue's 3 pp.
BAD_REGRET = 3.0


def label_free_fraction(run: dict, outcome: Outcome) -> float | None:
    """The label-free check as ``OverfittingEarlyStopping`` runs it at train end.

    The training losses of epochs 1..stop (the mean minibatch loss of each epoch, what
    ``self.log("train_loss", ..., on_epoch=True)`` aggregates) and the kept epoch go through the
    same :func:`~lightning_info.callbacks.early_stopping.kept_loss_fraction`.
    """
    losses = _c(run, "train_loss")
    recorded = {e: float(losses[e]) for e in range(1, outcome.stop_epoch + 1)}
    return kept_loss_fraction(recorded, outcome.kept_epoch)


def check_table(runs: list[dict], split: str, thresholds: tuple[float, ...]) -> str:
    """Per family and threshold: how often the label-free check warns, on bad and good runs."""
    table = regrets(runs)
    lines = [
        "| family | threshold | runs | bad runs (regret > 3 pp) | warned on bad | warned on good "
        "| mean regret: warned / not warned |",
        "|---|---|---|---|---|---|---|",
    ]
    totals = {t: [0, 0, 0, 0] for t in thresholds}
    for fam in [f for f in TASKS if TASKS[f].split == split and f in table]:
        rows = table[fam][LABEL_FREE]
        for t in thresholds:
            warned = [(f := label_free_fraction(r, o)) is not None and f < t for r, o, _ in rows]
            bad = [g > BAD_REGRET for _, _, g in rows]
            caught = sum(w and b for w, b in zip(warned, bad))
            false = sum(w and not b for w, b in zip(warned, bad))
            gw = [g for (_, _, g), w in zip(rows, warned) if w]
            gn = [g for (_, _, g), w in zip(rows, warned) if not w]
            lines.append(
                f"| {fam} | {t} | {len(rows)} | {sum(bad)} | {caught} / {sum(bad)} | "
                f"{false} / {len(rows) - sum(bad)} | {_mean(gw):.1f} / {_mean(gn):.1f} |"
            )
            tot = totals[t]
            tot[0] += caught
            tot[1] += sum(bad)
            tot[2] += false
            tot[3] += len(rows) - sum(bad)
    for t, (caught, n_bad, false, n_good) in totals.items():
        tpr = caught / n_bad if n_bad else math.nan
        fpr = false / n_good if n_good else math.nan
        lines.append(
            f"| **all** | {t} | {n_bad + n_good} | {n_bad} | {caught} / {n_bad} | "
            f"{false} / {n_good} | Youden J = {tpr - fpr:.2f} |"
        )
    return "\n".join(lines)


def analyze(out: Path, seeds: list[int] | None = None) -> str:
    """Every table, development and held-out separately, as markdown (``seeds``: only those)."""
    runs = [r for r in load_runs(out) if seeds is None or r["seed"] in seeds]
    parts = [f"{len(runs)} runs in {out}"]
    for split in (DEVELOPMENT, HELD_OUT):
        parts.append(f"\n### {split} families: regret per policy\n")
        parts.append(policy_table(runs, split))
        parts.append(f"\n### {split} families: issue 19 criteria for the stops\n")
        parts.append(criteria_table(runs, split))
        parts.append(f"\n### {split} families: curves\n")
        parts.append(curves_table(runs, split))
        # the threshold is chosen on the development families; held-out sees only the default
        thresholds = CHECK_THRESHOLDS if split == DEVELOPMENT else (LABEL_FREE_MIN_LOSS_FRACTION,)
        parts.append(f"\n### {split} families: the label-free stop's check\n")
        parts.append(check_table(runs, split, thresholds))
    return "\n".join(parts)


#: Development-only variants of the monitor's DSMI(Z;Y): kernel width rule and probe size.
VARIANTS = {
    "median@500 (default)": ("median", 500),
    "knn@500": ("knn", 500),
    "median@250": ("median", 250),
}


def variant_signals(path: Path, cache: Path) -> dict[str, torch.Tensor]:
    """DSMI(Z;Y) of one run for each of ``VARIANTS`` (cached in ``cache``)."""
    from _suite_runs import probe_signals

    target = cache / path.name
    if target.exists():
        return torch.load(target, weights_only=True)
    art = torch.load(path, weights_only=True)
    feats, labels = art["probe_features"], art["probe_labels"]
    out = {}
    for name, (sigma, n) in VARIANTS.items():
        if name.startswith("median@500"):
            out[name] = art["signals"]["dsmi_y"]
            continue
        vals = [probe_signals(f[:n], labels[:n], sigma=sigma, knn=False)["dsmi_y"] for f in feats]
        out[name] = torch.tensor(vals, dtype=torch.float64)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(out, target)
    return out


def variant_table(out: Path, split: str = DEVELOPMENT) -> str:
    """Does another width rule or probe size track test accuracy better? (development only)."""
    lines = [
        "| family | variant | clean: rho first 10 | clean: rho whole run | clean: last/max | "
        "p>=0.4: rho whole run | p=0.6: last / at best-test epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    runs = {r["name"]: r for r in load_runs(out) if r["split"] == split}
    for fam in [f for f in TASKS if TASKS[f].split == split]:
        names = sorted(n for n, r in runs.items() if r["task"] == fam)
        sigs = {n: variant_signals(out / f"{n}.pt", out / "variants") for n in names}
        for variant in VARIANTS:
            rise, whole, hold, noisy, fall = [], [], [], [], []
            for n in names:
                r, d = runs[n], sigs[n][variant].numpy()[1:]
                t = r["curves"]["test_acc"].numpy()[1:]
                if r["noise"] == 0:
                    rise.append(spearman(d[:10], t[:10]))
                    whole.append(spearman(d, t))
                    hold.append(d[-1] / d.max())
                elif r["noise"] >= 0.4:
                    noisy.append(spearman(d, t))
                if abs(r["noise"] - 0.6) < 1e-9:
                    fall.append(d[-1] / d[int(np.argmax(t))])
            lines.append(
                f"| {fam} | {variant} | {_mean(rise):+.2f} | {_mean(whole):+.2f} | "
                f"{_mean(hold):.2f} | {_mean(noisy):+.2f} | {_mean(fall):.2f} |"
            )
    return "\n".join(lines)
