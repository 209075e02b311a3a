"""``examples/dse_early_stopping.py --quick`` (run in-process): what the script promises.

The monitor with its default width and a second one at the paper's sigma = 10 log side by side;
the zero-argument ``OverfittingEarlyStopping`` keeps the weights of the epoch with the best
``val_acc``; the printed lines and the PNG follow from the returned runs.
"""

from __future__ import annotations

import math

import pytest
import torch

from lightning_info.utilities.data import load_dataset, train_val_split

DEFAULT = "info/{}/penultimate"


def test_dse_early_stopping_example_quick(capsys, load_example, tmp_path):
    module = load_example("dse_early_stopping")
    runs = module.main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert set(runs) == {"clean", "permuted"}
    fixed = module.FIXED_PREFIX + "{}/penultimate"
    ds = load_dataset("digits")
    _, val_idx = train_val_split(len(ds.targets), val_fraction=0.25, seed=0)
    val_x, val_y = ds.inputs[val_idx], ds.targets[val_idx]
    for name, run in runs.items():
        curve, stopper = run.curve, run.stopper
        epochs = sorted(curve)
        assert run.max_epochs == 6
        # the curve ends where the run ended: at the stop, or after all epochs
        if stopper.stopped_epoch:
            assert epochs == list(range(stopper.stopped_epoch + 1))
            assert f"{name}: stopped by OverfittingEarlyStopping at epoch " in out
        else:
            assert epochs == list(range(6))
            assert f"{name}: trained all 6 epochs (not stopped)" in out
        for row in curve.values():
            for quantity in ("dse", "dsmi_y"):
                for key in (DEFAULT.format(quantity), fixed.format(quantity)):
                    assert math.isfinite(row[key])
            assert 0.0 <= row[DEFAULT.format("dse")] <= math.log2(200)
        # the stopper picked the best epoch by val_acc (the first maximum) ...
        val_acc = [curve[e]["val_acc"] for e in epochs]
        assert stopper.best_epoch == epochs[val_acc.index(max(val_acc))]
        # ... and the weights the user ends with are that epoch's: same val accuracy, by hand
        with torch.no_grad():
            run.model.eval()
            acc = (run.model(val_x).argmax(1) == val_y).float().mean().item()
        assert run.final_val_acc == pytest.approx(acc, abs=1e-6)
        assert run.final_val_acc == pytest.approx(max(val_acc), abs=1e-6)
        line = next(line for line in out.splitlines() if line.startswith(f"{name}: "))
        assert line.endswith(
            f"; kept the weights of epoch {stopper.best_epoch}; val accuracy of the kept "
            f"weights {run.final_val_acc:.3f}"
        )
        # the two widths are different numbers (the paper's fixed one is not the default)
        last = curve[epochs[-1]]
        assert last[DEFAULT.format("dse")] != pytest.approx(last[fixed.format("dse")], abs=1e-3)
    clean, perm = runs["clean"].curve, runs["permuted"].curve
    # held-out DSMI(Z;Y) at the default width: higher with true labels at every common epoch
    for epoch in set(clean) & set(perm):
        assert clean[epoch][DEFAULT.format("dsmi_y")] > perm[epoch][DEFAULT.format("dsmi_y")]
    # the clean run generalises, the permuted one does not (chance: 0.1)
    assert runs["clean"].final_val_acc > 0.8
    assert max(row["val_acc"] for row in perm.values()) < 0.3
    # one printed row per epoch with the returned values (5 columns per run)
    rows = [line for line in out.splitlines() if line[:5].strip().isdigit() and " | " in line]
    assert len(rows) == 6
    for line in rows:
        epoch, *cells = (part.split() for part in line.split("|"))
        e = int(epoch[0])
        for name, cell in zip(("clean", "permuted"), cells):
            row = runs[name].curve.get(e)
            if row is None:
                assert cell == ["stopped"]
                continue
            keys = (
                DEFAULT.format("dse"),
                DEFAULT.format("dsmi_y"),
                fixed.format("dse"),
                fixed.format("dsmi_y"),
                "val_acc",
            )
            assert [float(c) for c in cell] == pytest.approx([row[k] for k in keys], abs=6e-4)
    png = tmp_path / "dse_early_stopping.png"
    assert png.stat().st_size > 10_000
    assert f"saved {png}" in out
