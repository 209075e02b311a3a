"""``examples/dse_training_dynamics.py``: quick mode (run in-process once) and its helpers.

Checks the structure of what the script returns and prints, recomputes the final accuracies and
feature norms with a hand-written forward pass, recomputes the monitor's last logged values with
the functional API (the path used for epoch 0), and checks the paper's qualitative claims with
margins that the quick run clears.
"""

from __future__ import annotations

import contextlib
import io
import math
import re

import pytest
import torch

from lightning_info.functional import (
    cluster_reference,
    diffusion_spectral_entropy,
    diffusion_spectral_mutual_information,
)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def module(load_example):
    return load_example("dse_training_dynamics")


@pytest.fixture(scope="module")
def quick(module, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("figures")
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        result = module.main(["--quick", "--out", str(out_dir)])
    return result, buffer.getvalue(), out_dir


def _manual_forward(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate features, logits) from the weights, without the module's forward."""
    linears = [m for m in model.net if isinstance(m, torch.nn.Linear)]
    h = x.flatten(1).double()
    for lin in linears[:-1]:
        h = torch.clamp(h @ lin.weight.detach().double().T + lin.bias.detach().double(), min=0)
    logits = h @ linears[-1].weight.detach().double().T + linears[-1].bias.detach().double()
    return h, logits


def test_structure_and_ranges(module, quick):
    result, _, out_dir = quick
    curves, n_probe, epochs = result["curves"], result["n_probe"], result["epochs"]
    assert set(curves) == {"clean", "permuted"}
    assert n_probe == 300
    assert epochs == 8
    idx = result["splits"]
    assert len(idx["train"]) == 300
    assert len(set(idx["train"].tolist()) | set(idx["probe"].tolist())) == 600  # disjoint
    for curve in curves.values():
        assert sorted(curve) == list(range(epochs + 1))  # 0 = init, then every epoch
        for row in curve.values():
            assert set(row) == set(module.ALL_KEYS)
            assert all(math.isfinite(v) for v in row.values())
            for suffix in ("", "_default"):  # sigma = 10, the monitor's default width
                assert 0.0 <= row[f"dse{suffix}"] <= math.log2(n_probe)
                for q in ("dsmi_y", "dsmi_x"):  # small negative DSMI values are possible
                    assert -0.05 <= row[f"{q}{suffix}"] <= math.log2(n_probe)
            assert 0.0 <= row["train_acc"] <= 1.0
            assert 0.0 <= row["heldout_acc"] <= 1.0
    assert (out_dir / "dse_training_dynamics.png").stat().st_size > 10_000
    assert result["png"] == out_dir / "dse_training_dynamics.png"


def _table_rows(text: str) -> dict[int, list[list[str]]]:
    rows = {}
    for line in text.splitlines():
        m = re.match(r"^\s*(\d+) \|(.*)\|(.*)$", line)
        if m:
            rows[int(m.group(1))] = [m.group(2).split(), m.group(3).split()]
    return rows


def test_printed_table_matches_curves(module, quick):
    """Two tables: sigma = 10 (with the accuracies and |z|), then the monitor's default width."""
    result, out, _ = quick
    curves = result["curves"]
    fixed_part, default_part = out.split(f"\nsigma = {module.DEFAULT_SIGMA} (the monitor's default")
    for text, keys in ((fixed_part, module.KEYS), (default_part, module.DEFAULT_KEYS)):
        rows = _table_rows(text)
        assert sorted(rows) == list(range(result["epochs"] + 1))
        for epoch, (clean_cells, perm_cells) in rows.items():
            for name, cells in (("clean", clean_cells), ("permuted", perm_cells)):
                assert len(cells) == len(keys)
                for key, cell in zip(keys, cells):
                    value = curves[name][epoch][key]
                    assert float(cell) == pytest.approx(value, abs=6e-4, rel=6e-3), (
                        name,
                        epoch,
                        key,
                    )
    for name in ("clean", "permuted"):
        final = curves[name][result["epochs"]]
        assert f"{name}: DSE(Z) {curves[name][0]['dse']:.3f} -> {final['dse']:.3f}" in out


def test_accuracies_and_norms_recomputed(quick):
    """The recorded final accuracies and |z| against a hand-written forward pass."""
    result, _, _ = quick
    for name, rec in result["recorders"].items():
        final = result["curves"][name][result["epochs"]]
        _, logits = _manual_forward(rec.model, rec.train_x)
        assert final["train_acc"] == pytest.approx(
            (logits.argmax(1) == rec.train_y).double().mean().item(), abs=1e-6
        )
        z, logits = _manual_forward(rec.model, rec.probe_x)
        assert final["heldout_acc"] == pytest.approx(
            (logits.argmax(1) == rec.probe_y).double().mean().item(), abs=1e-6
        )
        assert final["znorm"] == pytest.approx(z.norm(dim=1).mean().item(), rel=1e-5)
        # Lightning's own val_acc (batch-weighted epoch mean) tells the same held-out accuracy
        assert rec.logged_val_acc[result["epochs"]] == pytest.approx(final["heldout_acc"], abs=1e-6)


def test_permuted_labels_are_a_permutation(module, quick):
    result, _, _ = quick
    clean, perm = result["recorders"]["clean"], result["recorders"]["permuted"]
    assert torch.equal(clean.train_x, perm.train_x)
    assert torch.equal(
        torch.bincount(clean.train_y, minlength=10), torch.bincount(perm.train_y, minlength=10)
    )
    assert (clean.train_y != perm.train_y).float().mean() > 0.8  # about 90% change class
    assert torch.equal(clean.probe_y, perm.probe_y)  # the held-out labels stay true


def test_monitor_matches_functional_recomputation(module, quick):
    """The last values both monitors logged equal the functional API on the final weights at their
    widths (sigma = 10 under ``info_fixed10/``, the default under ``info/``): the same path
    computes epoch 0, so the init row and the monitored rows are comparable."""
    result, _, _ = quick
    for name, rec in result["recorders"].items():
        final = result["curves"][name][result["epochs"]]
        rec.model.eval()
        with torch.no_grad():
            z = rec.model.net[:-1](rec.probe_x)
        clusters = cluster_reference(rec.probe_x, num_clusters=10, seed=0)
        for suffix, sigma in (("", 10.0), ("_default", module.DEFAULT_SIGMA)):
            expected = {
                "dse": diffusion_spectral_entropy(z, sigma=sigma).item(),
                "dsmi_y": diffusion_spectral_mutual_information(z, rec.probe_y, sigma=sigma).item(),
                "dsmi_x": diffusion_spectral_mutual_information(z, clusters, sigma=sigma).item(),
            }
            for key, value in expected.items():
                assert final[key + suffix] == pytest.approx(value, abs=1e-4), (name, key, suffix)


def test_default_width_is_scale_free_at_init(module, quick):
    """At the default width the epoch-0 values do not change when the features are rescaled (at
    sigma = 10 they do): the init row recomputed on 10x features."""
    result, _, _ = quick
    rec = result["recorders"]["clean"]
    torch.manual_seed(0)  # the script's initial weights
    model = module.MLPClassifier(784, 10, hidden=(256, 128), lr=1e-3)
    with torch.no_grad():
        model.net[-3].weight.mul_(10.0)  # last hidden layer x 10: penultimate features x 10
        model.net[-3].bias.mul_(10.0)
    model.eval()
    values = module.initial_values(model, rec.probe_x, rec.probe_y, rec.clusters)
    init = result["curves"]["clean"][0]
    for q in module.QUANTITIES:
        assert values[f"{q}_default"] == pytest.approx(init[f"{q}_default"], abs=1e-6), q
    assert values["dse"] > init["dse"] + 1.0  # sigma = 10 follows the scale


def test_paper_claims_hold_in_quick_mode(quick):
    """DSE rises; DSMI(Z;Y) rises far more with true labels; the clean run generalises."""
    result, _, _ = quick
    clean, perm = result["curves"]["clean"], result["curves"]["permuted"]
    last = result["epochs"]
    assert clean[last]["dse"] > clean[0]["dse"] + 1.0
    assert clean[last]["dsmi_y"] > 3 * max(row["dsmi_y"] for row in perm.values())
    assert clean[last]["heldout_acc"] > perm[last]["heldout_acc"] + 0.4
    assert perm[last]["heldout_acc"] < 0.3  # chance is 0.1
    assert perm[last]["train_acc"] > perm[0]["train_acc"] + 0.2  # it starts to memorise


def test_summarize_and_table_on_a_hand_made_curve(module):
    keys = module.KEYS
    curve = {
        0: dict.fromkeys(keys, 1.0),
        1: dict.fromkeys(keys, 3.0),
        2: dict.fromkeys(keys, 2.0),
        3: dict.fromkeys(keys, 2.5),
    }
    s = module.summarize(curve)
    for k in keys:
        assert (s[f"{k}_init"], s[f"{k}_final"], s[f"{k}_max"], s[f"{k}_rises"]) == (
            1.0,
            2.5,
            3.0,
            2,
        )
    short = {0: dict.fromkeys(keys, 0.5)}
    lines = module.format_table({"clean": curve, "permuted": short})
    body = [line for line in lines if re.match(r"^\s*\d+ \|", line)]
    assert len(body) == 4
    assert [float(c) for c in body[0].split("|")[2].split()] == [0.5] * len(keys)
    assert [float(c) for c in body[2].split("|")[1].split()] == [2.0] * len(keys)
    assert body[2].split("|")[2].strip() == ""  # missing epoch: blank cells


def test_baselines_in_quick_mode(quick):
    """Shuffled probe labels give DSMI near 0 at the trained feature scale; printed as returned."""
    result, out, _ = quick
    last = result["epochs"]
    for name, value in result["shuffled_baseline"].items():
        assert abs(value) < 0.1
        assert f"{name} {value:.3f}" in out
    assert result["shuffled_baseline"]["clean"] < result["curves"]["clean"][last]["dsmi_y"] - 0.5
    # the same at the monitor's default width, where the clean run keeps its label information
    for name, value in result["shuffled_baseline_default"].items():
        assert abs(value) < 0.1
        assert f"{name} {value:.3f}" in out
    clean_default = result["curves"]["clean"][last]["dsmi_y_default"]
    assert result["shuffled_baseline_default"]["clean"] < clean_default - 0.5
    # 300 probe images over 10 roughly balanced classes: H(Y) a little below log2 10
    assert 3.2 < result["label_entropy"] <= math.log2(10)
    assert 0.0 < result["cluster_label_mi"] < result["label_entropy"]
    assert f"plug-in MI {result['cluster_label_mi']:.3f} bits" in out


def test_plugin_mutual_information(module):
    mi = module.plugin_mutual_information
    a = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert mi(a, a) == pytest.approx(2.0)  # H of 4 equiprobable values
    assert mi(a, 3 - a) == pytest.approx(2.0)  # relabelling keeps it
    b = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    assert mi(a, b) == pytest.approx(0.0, abs=1e-12)  # independent by construction
    # by hand from the joint table:
    # joint p(0,0)=1/2, p(1,0)=1/4, p(1,1)=1/4; p(x)=(1/2,1/2), p(y)=(3/4,1/4)
    x = torch.tensor([0, 0, 1, 1])
    y = torch.tensor([0, 0, 0, 1])
    expected = 0.5 * math.log2(0.5 / (0.5 * 0.75)) + 0.25 * math.log2(0.25 / (0.5 * 0.75))
    expected += 0.25 * math.log2(0.25 / (0.5 * 0.25))
    assert mi(x, y) == pytest.approx(expected)
