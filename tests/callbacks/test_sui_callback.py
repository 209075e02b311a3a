"""SmoothUniqueInformation callback: short real runs on digits with MSE + plain SGD.

The reference for the scores is the functional engine called directly on an independent copy of
the model taken before ``fit`` (so the callback's own snapshot is not trusted), on the dataset
rows the test selects itself.
"""

from __future__ import annotations

import copy
import csv
import math
import pickle
import re
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader, Dataset, TensorDataset

import lightning_info.reporting as reporting
from lightning_info.callbacks import SmoothUniqueInformation
from lightning_info.functional.sui import smooth_unique_information
from lightning_info.models import MLPClassifier
from lightning_info.utilities.data import load_dataset

N_TRAIN, N_VAL, LR = 90, 30, 0.05


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits")
    x, y = ds.inputs, ds.targets
    return (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN : N_TRAIN + N_VAL], y[N_TRAIN : N_TRAIN + N_VAL])


def _model(**kw) -> MLPClassifier:
    torch.manual_seed(0)
    kw = {"hidden": (8,), "loss": "mse", "optimizer": "sgd", "lr": LR, **kw}
    return MLPClassifier(64, 10, **kw)


def _trainer(tmp_path: Path, callbacks: list, **kw) -> pl.Trainer:
    kw = {
        "max_epochs": 2,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": str(tmp_path),
        **kw,
    }
    return pl.Trainer(callbacks=callbacks, **kw)


def _loaders(digits, batch_size: int = 16):
    (x, y), (xv, yv) = digits
    train = DataLoader(
        TensorDataset(x, y),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(1),
    )
    return train, DataLoader(TensorDataset(xv, yv), batch_size=64)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:  # the recipe preamble is `# ` comment lines
        return list(csv.DictReader(line for line in handle if not line.startswith("#")))


def test_scores_csv_rows_indices_and_engine_agreement(digits, tmp_path):
    """CSV rows = scored samples, in dataset order, with their own labels; scores = engine."""
    (x, y), (xv, _) = digits
    model = _model()
    init_copy = copy.deepcopy(model)  # independent snapshot of the initial weights
    sui = SmoothUniqueInformation(max_samples=60, ntk="full")
    trainer = _trainer(tmp_path, [sui])
    trainer.fit(model, *_loaders(digits))
    scores = sui.scores_
    rows = _read_csv(Path(tmp_path) / "sui_scores.csv")
    assert len(rows) == len(scores) == 60
    idx = torch.tensor([int(r["index"]) for r in rows])
    assert torch.equal(idx, scores.indices)
    assert bool((idx[1:] > idx[:-1]).all())
    assert int(idx.max()) < N_TRAIN
    # the subset is the documented seeded draw, and each row carries that sample's own label
    expected = (
        torch.randperm(N_TRAIN, generator=torch.Generator().manual_seed(0))[:60].sort().values
    )
    assert torch.equal(idx, expected)
    assert [int(r["label"]) for r in rows] == y[idx].tolist()
    with torch.no_grad():
        assert [int(r["predicted"]) for r in rows] == model(x[idx]).argmax(1).tolist()
    ranks = torch.tensor([int(r["weight_si_rank"]) for r in rows])
    assert int(idx[ranks == 1]) == int(idx[torch.argmax(scores.weight_si)])

    st = scores.settings
    assert st["learning_rate"] == LR
    assert st["num_steps"] == trainer.global_step == 12
    ref = smooth_unique_information(
        init_copy,
        x[idx],
        y[idx],
        xv,
        learning_rate=LR,
        num_steps=st["num_steps"],
        method=st["method"],
        ntk="full",
    )
    torch.testing.assert_close(scores.weight_si, ref.weight_si, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(scores.functional_si, ref.functional_si, rtol=1e-6, atol=1e-12)
    csv_w = torch.tensor([float(r["weight_si"]) for r in rows], dtype=torch.float64)
    torch.testing.assert_close(csv_w, ref.weight_si, rtol=1e-7, atol=0)
    # the model's trained weights are restored after scoring at the initial weights
    assert not torch.equal(model.net[0].weight, init_copy.net[0].weight)


def test_batchnorm_is_linearized_with_its_running_statistics_of_fit_start(digits, tmp_path):
    """``linearize_at="init"`` on a BatchNorm network trained in train mode: the scores are the
    engine's at the initial parameters *and* the initial running statistics (an independent
    copy of the module taken before fit), not at the statistics the training ends with."""
    (x, y), (xv, _) = digits
    model = _model()
    model.net = torch.nn.Sequential(
        torch.nn.Linear(64, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 10)
    )
    init_copy = copy.deepcopy(model).eval()
    sui = SmoothUniqueInformation(max_samples=40, ntk="full")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the BatchNorm note
        _trainer(tmp_path, [sui]).fit(model, *_loaders(digits))
    bn = model.net[1]
    assert not torch.allclose(bn.running_mean, init_copy.net[1].running_mean)  # they moved
    st, idx = sui.scores_.settings, sui.scores_.indices
    ref = smooth_unique_information(
        init_copy,
        x[idx],
        y[idx],
        xv,
        learning_rate=st["learning_rate"],
        num_steps=st["num_steps"],
        method=st["method"],
        ntk="full",
    )
    torch.testing.assert_close(sui.scores_.weight_si, ref.weight_si, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(sui.scores_.functional_si, ref.functional_si, rtol=1e-6, atol=1e-12)
    # and the trained running statistics are back in the model after scoring
    assert bn.num_batches_tracked.item() == 12


def test_kronecker_projection_is_the_engines(digits, tmp_path):
    """``projection="kronecker"`` reaches the engine: the callback's scores equal
    ``smooth_unique_information`` with the same projection on an independent copy of the
    initial module, and differ from the Gaussian projection's (a different R)."""
    (x, y), (xv, _) = digits
    model = _model()
    init_copy = copy.deepcopy(model).eval()
    options = {"ntk": "trace", "projection_dim": 64}
    sui = SmoothUniqueInformation(max_samples=40, projection="kronecker", **options)
    _trainer(tmp_path, [sui]).fit(model, *_loaders(digits))
    st, idx = sui.scores_.settings, sui.scores_.indices
    kw = {
        "learning_rate": st["learning_rate"],
        "num_steps": st["num_steps"],
        "method": st["method"],
        "weight_decay": st["weight_decay"],
        **options,
    }
    ref = smooth_unique_information(init_copy, x[idx], y[idx], xv, projection="kronecker", **kw)
    torch.testing.assert_close(sui.scores_.weight_si, ref.weight_si, rtol=1e-6, atol=1e-12)
    dense = smooth_unique_information(init_copy, x[idx], y[idx], xv, **kw)
    assert not torch.allclose(dense.weight_si, ref.weight_si, rtol=1e-3, atol=0)
    with pytest.raises(ValueError, match="kronecker"):
        SmoothUniqueInformation(projection="sparse")


def test_linearize_at_final_matches_engine_on_trained_weights_with_momentum(digits, tmp_path):
    """Final weights; with `num_steps=`, SGD momentum 0.9 is replayed as GD with the heavy-ball
    lr / (1 - 0.9) for those steps (by default momentum runs are scored at convergence)."""
    (x, y), (xv, _) = digits
    model = _model(optimizer="sgd_momentum")
    steps = math.ceil(N_TRAIN / 16)  # one epoch of _loaders' batches
    sui = SmoothUniqueInformation(
        linearize_at="final",
        max_samples=None,
        ntk="trace",
        method="ridge",
        num_steps=steps,
    )
    trainer = _trainer(tmp_path, [sui], max_epochs=1)
    with pytest.warns(UserWarning, match="momentum=0.9"):
        trainer.fit(model, *_loaders(digits))
    assert trainer.global_step == steps
    assert sui.scores_.settings["learning_rate"] == pytest.approx(LR / (1 - 0.9))
    assert sui.scores_.settings["num_steps"] == steps
    ref = smooth_unique_information(
        model,
        x,
        y,
        xv,
        learning_rate=LR / (1 - 0.9),
        num_steps=trainer.global_step,
        method="ridge",
        ntk="trace",
    )
    assert torch.equal(sui.scores_.indices, torch.arange(N_TRAIN))
    torch.testing.assert_close(sui.scores_.weight_si, ref.weight_si, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(sui.scores_.functional_si, ref.functional_si, rtol=1e-6, atol=1e-12)


def test_resume_keeps_initial_weights_and_rerun_does_not_duplicate_rows(digits, tmp_path):
    model = _model()
    init_copy = copy.deepcopy(model)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    sui = SmoothUniqueInformation(max_samples=40)
    _trainer(tmp_path, [sui, ckpt], max_epochs=1, enable_checkpointing=True).fit(
        model, *_loaders(digits)
    )
    first = _read_csv(tmp_path / "sui_scores.csv")

    # re-run with the same callback instance on another model: a fresh snapshot, same rows
    other = _model(hidden=(8,))
    with torch.no_grad():
        other.net[0].weight.add_(1.0)
    other_init = copy.deepcopy(other)
    _trainer(tmp_path, [sui], max_epochs=1).fit(other, *_loaders(digits))
    torch.testing.assert_close(sui._init_params["net.0.weight"], other_init.net[0].weight.detach())
    assert len(_read_csv(tmp_path / "sui_scores.csv")) == 40

    # resume in a fresh process-like setting: new module (different init), new callback
    resumed_sui = SmoothUniqueInformation(max_samples=40)
    trainer = _trainer(
        tmp_path,
        [resumed_sui, ModelCheckpoint(dirpath=tmp_path / "ckpt")],
        max_epochs=2,
        enable_checkpointing=True,
    )
    trainer.fit(
        _model(hidden=(8,)), *_loaders(digits), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
    )
    for name, p in init_copy.named_parameters():  # the snapshot came back from the checkpoint
        torch.testing.assert_close(resumed_sui._init_params[name], p.detach())
    assert resumed_sui.scores_.settings["num_steps"] == trainer.global_step == 12
    second = _read_csv(tmp_path / "sui_scores.csv")
    assert len(first) == len(second) == 40
    assert [r["index"] for r in first] == [r["index"] for r in second]
    assert len({r["index"] for r in second}) == 40


class _BadLabels(Dataset):
    def __len__(self) -> int:
        return 20

    def __getitem__(self, i: int):
        return torch.zeros(64), torch.tensor(12)  # label 12 with only 10 outputs


def test_bad_configuration_fails_at_fit_start(digits, tmp_path):
    with pytest.raises(ValueError, match="`linearize_at` must be one of"):
        SmoothUniqueInformation(linearize_at="middle")
    with pytest.raises(ValueError, match="`max_samples` must be >= 2"):
        SmoothUniqueInformation(max_samples=1)

    class _Stop(pl.Callback):
        def on_train_batch_start(self, *args):
            raise AssertionError("training started despite a bad configuration")

    sui = SmoothUniqueInformation()
    loader = DataLoader(_BadLabels(), batch_size=5)
    with pytest.raises(ValueError, match="integer labels must be < the number of model outputs"):
        _trainer(tmp_path, [sui, _Stop()]).fit(_model(), loader)

    dict_loader = DataLoader([{"pixels": torch.zeros(64), "cls": 1}] * 8, batch_size=4)
    with pytest.raises(TypeError, match="Cannot find the inputs"):
        _trainer(tmp_path, [SmoothUniqueInformation(), _Stop()]).fit(_model(), dict_loader)


@pytest.mark.parametrize("logger_cls", [TensorBoardLogger, CSVLogger], ids=["tensorboard", "csv"])
def test_loggers(digits, tmp_path, logger_cls):
    sui = SmoothUniqueInformation(max_samples=30, image_shape=(8, 8), top_k=5)
    logger = logger_cls(save_dir=str(tmp_path), name="run")
    trainer = _trainer(tmp_path, [sui], logger=logger, max_epochs=1)
    trainer.fit(_model(), *_loaders(digits))
    csv_path = Path(trainer.log_dir) / "sui_scores.csv"
    assert sui.csv_path_ == csv_path
    assert len(_read_csv(csv_path)) == 30
    if logger_cls is TensorBoardLogger:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        logger.experiment.flush()
        acc = EventAccumulator(str(trainer.log_dir), size_guidance={"histograms": 0, "images": 0})
        acc.Reload()
        tags = acc.Tags()
        assert {"sui/weight_si", "sui/functional_si"} <= set(tags["histograms"])
        assert {"sui/most_informative", "sui/least_informative"} <= set(tags["images"])
        assert any("sui/top_k" in t for t in tags["tensors"])
        assert any("sui/recipe" in t for t in tags["tensors"])


def test_killed_write_leaves_previous_file_or_none(digits, tmp_path, monkeypatch):
    (x, y), (xv, yv) = digits
    model = _model()
    sui = SmoothUniqueInformation(
        linearize_at="final",
        learning_rate=LR,
        num_steps=5,
        max_samples=20,
        dirpath=tmp_path,
    )
    train, val = TensorDataset(x, y), TensorDataset(xv, yv)
    target = tmp_path / "sui_scores.csv"

    def crash(*args, **kwargs):
        raise OSError("simulated kill during fsync")

    monkeypatch.setattr(reporting.os, "fsync", crash)
    with pytest.raises(OSError, match="simulated kill"):
        sui.score(model, train, val)
    assert not target.exists()  # no previous file: none, not a partial one
    monkeypatch.undo()

    sui.score(model, train, val)
    complete = target.read_bytes()
    monkeypatch.setattr(reporting.os, "replace", crash)
    with torch.no_grad():
        model.net[0].weight.mul_(1.5)  # new scores, so a partial write would differ
    with pytest.raises(OSError, match="simulated kill"):
        sui.score(model, train, val)
    assert target.read_bytes() == complete
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sui_scores.csv"]  # no temp files left


def test_default_construction_on_classification_module(digits, tmp_path):
    """`Trainer(callbacks=[SmoothUniqueInformation()])` with the default Adam + cross-entropy MLP."""
    model = MLPClassifier(64, 10, hidden=(8,))
    train, val = _loaders(digits)
    trainer = pl.Trainer(
        callbacks=[SmoothUniqueInformation()],
        max_epochs=1,
        default_root_dir=str(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, train, val)
    messages = " ".join(str(w.message) for w in caught)
    assert "Adam" in messages
    assert "cross-entropy" in messages
    sui = (
        trainer.callbacks[0]
        if isinstance(trainer.callbacks[0], SmoothUniqueInformation)
        else next(c for c in trainer.callbacks if isinstance(c, SmoothUniqueInformation))
    )
    assert len(sui.scores_) == N_TRAIN
    assert sui.scores_.settings["num_steps"] is None  # adaptive optimizer: converged solution
    assert bool(torch.isfinite(sui.scores_.weight_si).all())
    assert bool(torch.isfinite(sui.scores_.functional_si).all())
    assert len(_read_csv(Path(trainer.log_dir) / "sui_scores.csv")) == N_TRAIN


def test_score_outside_fit_needs_settings_and_state_key_pickle(digits):
    (x, y), _ = digits
    sui = SmoothUniqueInformation()
    with pytest.raises(ValueError, match="learning_rate"):
        sui.score(_model(), TensorDataset(x, y), write=False)
    assert (
        SmoothUniqueInformation().state_key
        != SmoothUniqueInformation(linearize_at="final").state_key
    )
    clone = pickle.loads(pickle.dumps(SmoothUniqueInformation(max_samples=7)))
    assert clone.max_samples == 7


def test_failure_at_fit_end_warns_instead_of_failing_the_run(digits, tmp_path, monkeypatch):
    import lightning_info.functional.sui as solve_module

    def boom(*args, **kwargs):
        raise ValueError("engine exploded")

    monkeypatch.setattr(solve_module, "unique_information_with_plan", boom)
    sui = SmoothUniqueInformation(max_samples=20)
    trainer = _trainer(tmp_path, [sui], max_epochs=1, limit_train_batches=1)
    with pytest.warns(UserWarning, match="scoring at fit end failed.*engine exploded"):
        trainer.fit(_model(), *_loaders(digits))
    assert trainer.global_step == 1
    assert sui.scores_ is None
    assert not (tmp_path / "sui_scores.csv").exists()
    (x, y), _ = digits
    with pytest.raises(ValueError, match="engine exploded"):  # an explicit call raises
        sui.score(_model(), TensorDataset(x, y), trainer=trainer, write=False)


class _FailingModel(MLPClassifier):
    def training_step(self, batch, batch_idx):
        raise RuntimeError("fold 2 diverged")


def test_failed_second_fit_never_shows_the_first_fits_scores(digits, tmp_path):
    """The same callback in a loop of fits (cross-validation): a fit that fails leaves
    ``scores_`` and ``csv_path_`` None, not the previous fit's results."""
    sui = SmoothUniqueInformation(max_samples=20, dirpath=tmp_path / "first")
    _trainer(tmp_path, [sui], max_epochs=1, limit_train_batches=1).fit(_model(), *_loaders(digits))
    assert sui.scores_ is not None
    assert len(sui.scores_.weight_si) == 20
    assert sui.csv_path_ is not None
    torch.manual_seed(0)
    failing = _FailingModel(64, 10, hidden=(8,), loss="mse", optimizer="sgd", lr=LR)
    with pytest.raises(RuntimeError, match="fold 2 diverged"):
        _trainer(tmp_path, [sui], max_epochs=1).fit(failing, *_loaders(digits))
    assert sui.scores_ is None
    assert sui.csv_path_ is None


@pytest.mark.parametrize("case", ["attached_at_resume", "filename_changed"])
def test_resume_without_restored_snapshot_replays_only_the_steps_since_it(digits, tmp_path, case):
    """SUI whose state is not in the checkpoint linearizes at the resumed weights and replays
    only the optimizer steps taken after them (issue 20), not every step since step 0."""
    (x, y), (xv, _) = digits
    first = [ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)]
    if case == "filename_changed":
        first.append(SmoothUniqueInformation(max_samples=None, filename="a.csv"))
    _trainer(tmp_path, first, max_epochs=1, enable_checkpointing=True).fit(
        _model(), *_loaders(digits)
    )
    ckpt_path = tmp_path / "ckpt" / "last.ckpt"
    resumed_weights = _model()  # independent copy of the checkpoint's weights
    resumed_weights.load_state_dict(torch.load(ckpt_path, weights_only=False)["state_dict"])

    sui = SmoothUniqueInformation(max_samples=None, ntk="full", filename="b.csv")
    trainer = _trainer(tmp_path, [sui], max_epochs=3)
    trainer.fit(_model(), *_loaders(digits), ckpt_path=str(ckpt_path))
    steps_per_epoch = math.ceil(N_TRAIN / 16)
    assert trainer.global_step == 3 * steps_per_epoch
    st = sui.scores_.settings
    assert st["num_steps"] == 2 * steps_per_epoch  # the two resumed epochs, not all three
    ref = smooth_unique_information(
        resumed_weights,
        x,
        y,
        xv,
        learning_rate=LR,
        num_steps=2 * steps_per_epoch,
        method=st["method"],
        ntk="full",
    )
    torch.testing.assert_close(sui.scores_.weight_si, ref.weight_si, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(sui.scores_.functional_si, ref.functional_si, rtol=1e-6, atol=1e-12)


def test_unwritable_output_folder_warns_and_keeps_the_scores(digits, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the output folder should be")  # not writable as a folder
    sui = SmoothUniqueInformation(max_samples=20, dirpath=blocker / "out")
    trainer = _trainer(tmp_path, [sui], max_epochs=1)
    with pytest.warns(UserWarning, match="writing the reports failed.*kept in `scores_`"):
        trainer.fit(_model(), *_loaders(digits))
    assert sui.scores_ is not None
    assert len(sui.scores_) == 20
    assert bool(torch.isfinite(sui.scores_.weight_si).all())
    assert sui.csv_path_ is None
    # the same scores as a run that could write them (same seeds, same data order)
    rows_ok = SmoothUniqueInformation(max_samples=20, dirpath=tmp_path / "ok")
    _trainer(tmp_path, [rows_ok], max_epochs=1).fit(_model(), *_loaders(digits))
    torch.testing.assert_close(sui.scores_.weight_si, rows_ok.scores_.weight_si)
    assert len(_read_csv(tmp_path / "ok" / "sui_scores.csv")) == 20


def _preamble(path: Path) -> str:
    lines = Path(path).read_text().splitlines()
    comments = [line[2:] for line in lines if line.startswith("# ")]
    assert lines[len(comments)].startswith("index,")  # the comments come before the header
    return " ".join(comments)


def test_csv_preamble_states_the_replayed_sgd_run(digits, tmp_path):
    sui = SmoothUniqueInformation(max_samples=30)
    trainer = _trainer(tmp_path, [sui])
    trainer.fit(_model(), *_loaders(digits))
    text = _preamble(tmp_path / "sui_scores.csv")
    steps = 2 * math.ceil(N_TRAIN / 16)
    assert f"Replayed: {steps} steps of full-batch gradient descent" in text
    assert "since the linearization point" in text
    assert "global step 0" in text
    assert f"learning rate {LR:g}" in text
    assert (
        "Weight decay (L2 pull toward the linearization point): 0, the training optimizer's" in text
    )
    assert "mean squared error" in text
    assert "the training loss is MSE" in text
    assert "does not depend on how long" not in text  # the replayed horizon follows the run


class _FunctionalCrossEntropy(pl.LightningModule):
    """Adam + `F.cross_entropy` in `training_step`: no `hparams.loss`, no loss submodule."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(64, 8), torch.nn.Tanh(), torch.nn.Linear(8, 10)
        )

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def test_adam_scores_say_they_do_not_follow_the_run_and_state_the_mse_assumption(digits, tmp_path):
    """Issue 22 items 4 and 8: the converged solution at the initial weights is explained, and
    a loss computed with F.cross_entropy (not detectable) still gets the MSE assumption."""
    texts = {}
    for epochs in (1, 3):  # two run lengths from the same initialization
        sui = SmoothUniqueInformation(max_samples=30, dirpath=tmp_path / str(epochs))
        logger = TensorBoardLogger(save_dir=str(tmp_path / str(epochs)), name="tb")
        trainer = _trainer(tmp_path, [sui], max_epochs=epochs, logger=logger)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(_FunctionalCrossEntropy(), *_loaders(digits))
        texts[epochs] = _preamble(tmp_path / str(epochs) / "sui_scores.csv")
        scores = sui.scores_
    # the claim in the text is true: the scores did not change with the run length
    rows = [_read_csv(tmp_path / str(e) / "sui_scores.csv") for e in (1, 3)]
    assert [r["weight_si"] for r in rows[0]] == [r["weight_si"] for r in rows[1]]
    text = texts[3]
    assert "the converged solution (t = infinity)" in text
    assert "Adam steps are not plain gradient-descent steps" in text
    assert "does not depend on how long the network trained" in text
    assert "linearize_at='final'" in text
    assert "plain SGD without momentum" in text
    assert "leave-one-out" in text
    assert f"{scores.plan.weight_decay:g}, chosen by" in text
    assert "mean squared error" in text
    assert "was not identified" in text
    assert "cross-entropy" not in text  # not promised: the loss was computed functionally

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger.experiment.flush()
    acc = EventAccumulator(str(trainer.log_dir), size_guidance={"tensors": 0})
    acc.Reload()
    recipe = acc.Tensors("sui/recipe/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "does not depend on how long the network trained" in recipe


@pytest.mark.parametrize("bar", [True, False], ids=["bar_enabled", "bar_disabled"])
def test_scoring_progress_follows_the_trainers_progress_bar(digits, tmp_path, capfd, bar):
    """Issue 22 item 3: stage names and an ETA on stderr with the progress bar on, else nothing."""
    sui = SmoothUniqueInformation(max_samples=40)
    trainer = _trainer(tmp_path, [sui], max_epochs=1, enable_progress_bar=bar)
    assert (trainer.progress_bar_callback is not None) is bar
    capfd.readouterr()  # nothing of the construction
    trainer.fit(_model(), *_loaders(digits))
    out, err = capfd.readouterr()
    assert sui.scores_ is not None
    if bar:
        for stage in ("SUI scoring: Jacobians", "SUI scoring: kernel", "SUI scoring: solve"):
            assert stage in err
        # tqdm's [elapsed<remaining] field and the sample count: N + (N_val + N) Jacobians
        assert re.search(r"\d\d:\d\d<\d\d:\d\d", err)
        assert f"{40 + N_VAL + 40}/{40 + N_VAL + 40}" in err
    else:
        assert "SUI scoring" not in err + out
    # scoring outside fit, without a trainer: silent
    capfd.readouterr()
    (x, y), (xv, yv) = digits
    SmoothUniqueInformation(
        linearize_at="final", learning_rate=LR, num_steps=3, max_samples=20
    ).score(_model(), TensorDataset(x, y), TensorDataset(xv, yv), write=False)
    out, err = capfd.readouterr()
    assert "SUI scoring" not in err + out


def test_progress_argument_is_gone():
    with pytest.raises(TypeError, match="progress"):
        SmoothUniqueInformation(progress=False)
