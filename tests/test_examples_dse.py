"""Smoke test of ``examples/dse_early_stopping.py --quick`` (run in-process)."""

from __future__ import annotations


def test_dse_early_stopping_example_quick(capsys, load_example):
    module = load_example("dse_early_stopping")
    runs = module.main(["--quick"])
    out = capsys.readouterr().out
    clean_rec, clean_stop = runs["clean"]
    perm_rec, perm_stop = runs["permuted"]
    assert clean_stop.stopped_epoch == 0
    assert len(clean_rec.curve) == 6
    assert 0 < perm_stop.stopped_epoch <= 5  # stopped within the 6 epochs (epoch 4 here)
    clean_dsmi = [row["info/dsmi_y/penultimate"] for row in clean_rec.curve.values()]
    perm_dsmi = [row["info/dsmi_y/penultimate"] for row in perm_rec.curve.values()]
    assert min(clean_dsmi) > max(perm_dsmi)
    assert "permuted: stopped by OverfittingEarlyStopping after epoch" in out
    assert "clean: trained all 6 epochs" in out
