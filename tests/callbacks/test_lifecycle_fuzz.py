"""Lifecycle fuzzing of the three callbacks (issue 20): random sequences of operations.

Each seed draws (``random.Random(seed)``) a sequence of 4-6 operations on ONE set of callback
instances (``DiffusionSpectralEntropyMonitor``, ``OverfittingEarlyStopping``,
``SmoothUniqueInformation``), each under a ``pytorch_lightning`` or a ``lightning.pytorch``
``Trainer`` drawn per operation:

* ``fit``: a new model or the same model again, 1-4 epochs, sometimes fewer batches;
* ``validate``: ``trainer.validate`` with the callbacks attached;
* ``resume``: from ``last.ckpt`` (``ModelCheckpoint(save_last=True)`` in every fit), with the
  same callback instances or new ones (a new SUI sometimes under another ``filename``: its
  state is then not in the checkpoint), sometimes with nothing left to train;
* ``reuse``: the next fold (other samples, same sizes), then a fit;
* ``exception``: a fit, fresh or resumed, that raises ``RuntimeError`` or ``KeyboardInterrupt``
  in the module's training or validation step, in a callback's ``on_train_batch_end``, or in a
  callback's ``setup`` that comes before the stop's, at a drawn epoch and batch.

Invariants, after every operation, against references computed here (see ``_lifecycle.py``):
only the injected exception escapes (``KeyboardInterrupt`` as Lightning's ``SystemExit``), and
no operation runs past a watchdog; the stop's history, best and stop epoch equal the rule written
out from its docstring on the values an independent recorder saw, and the model holds exactly
the recorder's weights of the kept epoch (after an exception too; with nothing kept yet, the
weights the fault saw); no other model is ever touched; the monitor's logged DSE, DSMI(Z;Y) and
DSMI(Z;X) equal the functional API on the recorded weights and the documented probe; SUI's
``scores_`` after every completed fit: the documented subset, finite, its CSV readable with the
same rows, linearized at the snapshot step expected from the checkpoint's content and replaying
exactly the steps since it; ``validate`` changes no weights and no callback state; a fresh fit's
per-epoch weights equal those of the same seeded fit without any callback (observer invariance).
"""

from __future__ import annotations

import collections
import math
import os
import random
import signal
import warnings
from pathlib import Path

import pytest
import torch

import tests.callbacks._lifecycle as lc
from lightning_info import (
    DiffusionSpectralEntropyMonitor,
    OverfittingEarlyStopping,
    SmoothUniqueInformation,
)
from lightning_info.reporting import read_csv_rows

#: Sequences run by the test (one per seed); ``LIFECYCLE_FUZZ_SEEDS`` overrides it.
SEEDS = int(os.environ.get("LIFECYCLE_FUZZ_SEEDS", "20"))
#: Seconds one operation may take before the watchdog fails it as a hang.
OP_TIMEOUT_S = 120
OPERATIONS = ("fit", "validate", "resume", "reuse", "exception")
WEIGHTS = (0.2, 0.1, 0.25, 0.2, 0.25)

pytestmark = pytest.mark.slow


class _Hang(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Hang(f"an operation ran longer than {OP_TIMEOUT_S} s")


class _Sequence:
    """One fuzzed sequence: its random draws, its callbacks, its models and its checkpoint."""

    def __init__(self, seed: int, root: Path) -> None:
        self.rng = random.Random(seed)
        self.seed, self.root = seed, root
        self.patience = self.rng.choice([1, 2, 3])
        self.callbacks = self._new_callbacks("sui_scores.csv")
        self.fold = 0
        self.model = None  # the current model and its package
        self.package = self.next_package = lc.PACKAGES[seed % 2]
        self.models: dict[int, tuple] = {}  # id -> every model and its weights after its last op
        self.ckpt: dict | None = None  # what last.ckpt holds (epoch, step, records, SUI snapshots)
        self.log: list[str] = []
        self.counts: dict[str, int] = dict.fromkeys(OPERATIONS, 0)
        self.events: collections.Counter[str] = collections.Counter()  # what was exercised
        self.op_index = 0

    # ------------------------------------------------------------------ set-up helpers
    def _new_callbacks(self, filename: str) -> dict:
        return {
            "monitor": DiffusionSpectralEntropyMonitor(max_samples=lc.PROBE),
            "stop": OverfittingEarlyStopping(patience=self.patience),
            "sui": SmoothUniqueInformation(
                max_samples=lc.SUI_SAMPLES, max_heldout=lc.SUI_HELDOUT, filename=filename
            ),
        }

    def _new_model(self, package: str):
        torch.manual_seed(self.rng.randrange(10**6))
        return lc.module_class(package)()

    def _op_dir(self) -> Path:
        path = self.root / f"op{self.op_index}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _callbacks_list(self, records, fault=None) -> list:
        pkg = __import__(self.package, fromlist=["callbacks"])
        checkpoint = pkg.callbacks.ModelCheckpoint(
            dirpath=str(self._op_dir() / "ckpt"), save_last=True
        )
        recorder = lc.Recorder(records)
        cbs = self.callbacks
        callbacks = [recorder, lc.FaultCallback(fault), cbs["monitor"], cbs["stop"], cbs["sui"]]
        return callbacks, recorder, checkpoint

    # ------------------------------------------------------------------ the operations
    def run(self, num_ops: int) -> None:
        for self.op_index in range(num_ops):
            op = self.rng.choices(OPERATIONS, WEIGHTS)[0]
            if (
                op in ("resume", "validate")
                and (self.ckpt if op == "resume" else self.model) is None
            ):
                op = "fit"
            self.counts[op] += 1
            previous = signal.signal(signal.SIGALRM, _on_alarm)
            handler = signal.getsignal(signal.SIGINT)
            signal.alarm(OP_TIMEOUT_S)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    getattr(self, f"_op_{op}")()
                self._check_other_models()
            except Exception as err:  # name the sequence: it reproduces the failure
                err.add_note(f"lifecycle fuzz seed {self.seed}, operations: {self.log}")
                raise
            finally:
                signal.alarm(0)
                signal.signal(signal.SIGALRM, previous)
                signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT after Ctrl-C

    def _op_fit(self) -> None:
        new = self.model is None or self.rng.random() < 0.6
        package = self._alternate() if new else self.package
        model = self._new_model(package) if new else self.model
        self._fit(model, package, resume=False, fault=None, what="fit new" if new else "fit same")

    def _op_reuse(self) -> None:
        self.fold = (self.fold + 1) % lc.NUM_FOLDS
        new = self.model is None or self.rng.random() < 0.5
        package = self._alternate() if new else self.package
        model = self._new_model(package) if new else self.model
        what = f"reuse fold {self.fold} {'new' if new else 'same'}"
        self._fit(model, package, resume=False, fault=None, what=what)

    def _op_resume(self) -> None:
        if self.rng.random() < 0.5:  # new callback instances, as in a new process
            other = self.rng.random() < 0.5
            self.callbacks = self._new_callbacks("sui_other.csv" if other else "sui_scores.csv")
            what = f"resume new-callbacks{' other-sui-file' if other else ''}"
        else:
            what = "resume same-callbacks"
        if self.rng.random() < 0.3:  # the checkpoint resumed on another fold of the same size
            self.fold = (self.fold + 1) % lc.NUM_FOLDS
            what += f" fold {self.fold}"
        package = self._alternate()
        self._fit(self._new_model(package), package, resume=True, fault=None, what=what)

    def _op_exception(self) -> None:
        resume = self.ckpt is not None and self.rng.random() < 0.4
        package = self._alternate()
        plan = self._plan(resume)
        where = self.rng.choice(["module-train", "module-val", "callback-train", "callback-setup"])
        error = self.rng.choice([RuntimeError, KeyboardInterrupt])
        epoch = self.rng.randrange(plan["start"], max(plan["max_epochs"], plan["start"] + 1))
        fault = lc.Fault(where, epoch, self.rng.randrange(2), error)
        what = f"exception {error.__name__} {where} epoch {epoch} batch {fault.batch}"
        what += " resumed" if resume else ""
        self._fit(
            self._new_model(package), package, resume=resume, fault=fault, what=what, plan=plan
        )

    def _alternate(self) -> str:
        """The package of the next new model: the two alternate."""
        self.next_package = lc.PACKAGES[1 - lc.PACKAGES.index(self.next_package)]
        return self.next_package

    def _op_validate(self) -> None:
        model, package = self.model, self.package
        self.log.append(f"validate {package}")
        before = lc.state_of(model)
        stop, sui, monitor = (
            self.callbacks["stop"],
            self.callbacks["sui"],
            self.callbacks["monitor"],
        )
        kept, scores = (list(stop.rule.history), stop.best_epoch), sui.scores_
        probe = monitor.state_dict()["probe_indices"]
        cbs = [*self.callbacks.values()]
        trainer = lc.trainer(package, self._op_dir(), cbs, enable_checkpointing=False)
        _, val = lc.loaders(self.fold)
        trainer.validate(model, val, verbose=False)
        assert lc.same_state(lc.state_of(model), before), "validate changed the weights"
        assert (list(stop.rule.history), stop.best_epoch) == kept, "validate changed the stop"
        assert sui.scores_ is scores, "validate changed the SUI scores"
        after = monitor.state_dict()["probe_indices"]
        assert (probe is None and after is None) or torch.equal(probe, after)
        acc = float(trainer.callback_metrics["val_acc"])
        assert acc == pytest.approx(lc.accuracy(before, self.fold), abs=1e-6)

    # ------------------------------------------------------------------ one fit
    def _plan(self, resume: bool) -> dict:
        start = self.ckpt["epoch"] + 1 if resume else 0
        extra = self.rng.choice([0, 1, 2, 3] if resume else [1, 2, 3, 4])
        plan = {
            "max_epochs": start + extra,
            "limit_train_batches": self.rng.choice([None, None, 2]),
            "num_sanity_val_steps": self.rng.choice([0, 1]),
        }
        plan["batches"] = plan["limit_train_batches"] or math.ceil(lc.N_TRAIN / lc.BATCH)
        plan["start"] = start
        return plan

    def _fit(self, model, package, *, resume, fault, what, plan=None) -> None:
        plan = plan or self._plan(resume)
        self.package = package
        self.log.append(f"{what} {package} epochs {plan['start']}..{plan['max_epochs'] - 1}")
        self.events[f"fit under {package}"] += 1
        if resume:
            self._note_resume(package, plan)
        records = dict(self.ckpt["records"]) if resume else {}
        model.fault = fault
        callbacks, recorder, checkpoint = self._callbacks_list(records, fault)
        kwargs = {k: plan[k] for k in ("max_epochs", "num_sanity_val_steps")}
        if plan["limit_train_batches"] is not None:
            kwargs["limit_train_batches"] = plan["limit_train_batches"]
        trainer = lc.trainer(package, self._op_dir(), [*callbacks, checkpoint], **kwargs)
        start_state = lc.state_of(model)
        sui = self.callbacks["sui"]
        snapshot = self.ckpt["sui"].get(sui.state_key, self.ckpt["global_step"]) if resume else 0
        ckpt_path = self.ckpt["path"] if resume else None
        seed = self.rng.randrange(10**6)
        torch.manual_seed(seed)
        train, val = lc.loaders(self.fold)
        raised = None
        try:
            trainer.fit(model, train, val, ckpt_path=ckpt_path)
        except (RuntimeError, SystemExit) as err:
            raised = err
        model.fault = None
        self._check_exception(fault, raised)
        self._note_outcome(trainer, fault, raised)
        new = recorder.epochs
        assert new == list(range(plan["start"], plan["start"] + len(new))), new
        if new:
            self.ckpt = {
                "epoch": new[-1],
                "global_step": records[new[-1]].global_step,
                "records": {e: r for e, r in records.items() if e <= new[-1]},
                "sui": {sui.state_key: snapshot},
                "path": str(self._op_dir() / "ckpt" / "last.ckpt"),
                "package": package,
                "fold": self.fold,
            }
            self._check_checkpoint_file()
        self._check_steps(trainer, records, plan, new, raised)
        self._check_monitor(records, new)
        self._check_stop(model, trainer, records, plan, new, fault, raised)
        if raised is None:
            self._check_sui(trainer, snapshot)
            if not resume and fault is None and self.rng.random() < 0.5:
                self._check_observer(package, start_state, seed, plan, records, new)
                self.events["observer-invariance twin"] += 1
        self.model = model
        self.models[id(model)] = (model, lc.state_of(model))

    def _note_resume(self, package, plan) -> None:
        ckpt, events = self.ckpt, self.events
        events["resume from another package's checkpoint"] += ckpt["package"] != package
        events["resume on another fold than the checkpoint's"] += ckpt["fold"] != self.fold
        events["resume with nothing left to train"] += plan["start"] >= plan["max_epochs"]
        events["resume with SUI state not in the checkpoint"] += (
            self.callbacks["sui"].state_key not in ckpt["sui"]
        )

    def _note_outcome(self, trainer, fault, raised) -> None:
        if fault is not None and raised is None:
            self.events["fault not reached (the fit ended first)"] += 1
        elif raised is not None:
            self.events[f"{fault.error.__name__} in {fault.where}"] += 1
            self.events["exception before any kept epoch"] += (
                self.callbacks["stop"].best_epoch is None
            )
        self.events["early stop"] += raised is None and bool(trainer.should_stop)

    # ------------------------------------------------------------------ invariants
    @staticmethod
    def _check_exception(fault, raised) -> None:
        if fault is None or fault.weights is None:
            assert raised is None, f"unexpected {raised!r}"
            return
        expected = SystemExit if fault.error is KeyboardInterrupt else fault.error
        assert isinstance(raised, expected), f"{fault.error.__name__} came out as {raised!r}"
        if expected is RuntimeError:
            assert "injected" in str(raised), f"another error escaped: {raised!r}"

    def _check_checkpoint_file(self) -> None:
        saved = torch.load(self.ckpt["path"], map_location="cpu", weights_only=False)
        # the global step identifies the epoch (every epoch takes >= 1 step)
        assert saved["global_step"] == self.ckpt["global_step"], "last.ckpt is not the last epoch"

    def _check_steps(self, trainer, records, plan, new, raised) -> None:
        before = self.ckpt_step_before(plan, records)
        if raised is None:
            assert int(trainer.global_step) == before + len(new) * plan["batches"]
        for i, epoch in enumerate(new):
            assert records[epoch].global_step == before + (i + 1) * plan["batches"]

    @staticmethod
    def ckpt_step_before(plan, records) -> int:
        if plan["start"] == 0:
            return 0
        return records[plan["start"] - 1].global_step

    def _check_stop(self, model, trainer, records, plan, new, fault, raised) -> None:
        if raised is not None and fault.where == "callback-setup":  # before the stop's setup:
            assert lc.same_state(lc.state_of(model), fault.weights), "a failed setup changed it"
            return  # the stop still holds the previous fit's state, which must not reach here
        stop = self.callbacks["stop"]
        ref = lc.StopReference.replay(records, self.patience)
        assert [h[0] for h in stop.rule.history] == ref.history, "stop history"
        assert stop.best_epoch == ref.best_epoch, (
            f"kept {stop.best_epoch}, expected {ref.best_epoch}"
        )
        if raised is None:
            stopped = next((e for e in new if ref.stops_at(e)), None)
            last = plan["max_epochs"] - 1 if stopped is None else stopped
            if plan["start"] <= last:
                assert new, f"no epoch ran, expected to end at {last}"
                assert new[-1] == last, f"ran epochs {new}, expected to end at {last}"
            assert int(trainer.current_epoch) == max(last + 1, plan["start"])
        if ref.best_epoch is not None:
            assert ref.best_epoch <= max(records), "kept epoch outside the fit"
            expected, what = records[ref.best_epoch].state, f"epoch {ref.best_epoch}"
        elif raised is not None:
            expected, what = fault.weights, "the weights at the fault (nothing kept yet)"
        else:
            return
        assert lc.same_state(lc.state_of(model), expected), f"model does not hold {what}"

    def _check_monitor(self, records, new) -> None:
        for epoch in new:
            logged = records[epoch].logged
            expected = lc.monitor_reference(records[epoch].state, self.fold)
            for key, value in expected.items():
                assert key in logged, f"{key} not logged at epoch {epoch}"
                assert logged[key] == pytest.approx(value, abs=1e-5), (key, epoch)

    def _check_sui(self, trainer, snapshot) -> None:
        sui = self.callbacks["sui"]
        scores = sui.scores_
        assert scores is not None, "no scores after a completed fit"
        assert scores.indices.tolist() == lc.sui_subset()
        assert bool(torch.isfinite(scores.weight_si).all())
        assert bool(torch.isfinite(scores.functional_si).all())
        steps = int(trainer.global_step) - snapshot
        assert scores.snapshot_step == snapshot, (scores.snapshot_step, snapshot)
        assert scores.recipe.steps_taken == steps, (scores.recipe.steps_taken, steps)
        settings = scores.settings
        assert settings.get("num_steps_given", settings["num_steps"]) == max(steps, 1)
        path = self.root / f"op{self.op_index}" / sui.filename
        assert Path(sui.csv_path_) == path
        rows = read_csv_rows(path)
        assert [int(r["index"]) for r in rows] == lc.sui_subset()

    def _check_observer(self, package, start_state, seed, plan, records, new) -> None:
        twin = lc.module_class(package)()
        twin.load_state_dict(start_state)
        bare: dict = {}
        kwargs = {k: plan[k] for k in ("max_epochs", "num_sanity_val_steps")}
        if plan["limit_train_batches"] is not None:
            kwargs["limit_train_batches"] = plan["limit_train_batches"]
        root = self._op_dir() / "bare"
        trainer = lc.trainer(
            package, root, [lc.Recorder(bare)], enable_checkpointing=False, **kwargs
        )
        torch.manual_seed(seed)
        trainer.fit(twin, *lc.loaders(self.fold))
        for epoch in new:
            assert lc.same_state(records[epoch].state, bare[epoch].state), (
                f"observing changed the weights of epoch {epoch}"
            )

    def _check_other_models(self) -> None:
        for model, state in self.models.values():
            if model is not self.model:
                assert lc.same_state(lc.state_of(model), state), "another model was changed"


@pytest.mark.parametrize("seed", range(SEEDS))
def test_lifecycle_fuzz(tmp_path, seed):
    sequence = _Sequence(seed, tmp_path)
    sequence.run(sequence.rng.randint(4, 6))
    assert sum(sequence.counts.values()) == len(sequence.log)
