r"""Early stopping on diffusion spectral mutual information (DSMI) with the labels.

Liao, Liu et al., *Assessing Neural Network Representations During Training Using Noise-Resilient
Diffusion Spectral Entropy*, IEEE CISS 2024 (arXiv 2312.04823), Sec. IV: held-out DSMI(Z;Y) rises
while a network learns generalisable features and stays nearly flat while it memorises (their
"wronglabel" runs with permuted training labels).

Two ways to use it, both fed by :class:`~lightning_info.callbacks.DiffusionSpectralEntropyMonitor`:

* plain ``EarlyStopping(monitor="info/dsmi_y/<layer>", mode="max", patience=...)``. With
  ``every_n_epochs=1`` nothing else is needed. With ``every_n_epochs=k > 1`` pass ``strict=False``:
  the monitor removes its keys from ``trainer.callback_metrics`` on epochs without an evaluation,
  so ``EarlyStopping`` skips those epochs and its patience counts evaluations, not stale repeats.
* :class:`OverfittingEarlyStopping`, which stops a run that memorises: training loss still
  falling, held-out DSMI(Z;Y) low and not rising.
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks.early_stopping import EarlyStoppingReason
from pytorch_lightning.utilities import rank_zero_warn
from typing_extensions import override

from lightning_info.utilities.checks import _check_int, _check_positive
from lightning_info.utilities.compat import EarlyStopping

__all__ = ["OverfittingEarlyStopping"]


class OverfittingEarlyStopping(EarlyStopping):
    r"""Stop training when the training loss keeps falling but held-out DSMI(Z;Y) does not follow.

    Liao, Liu et al. 2023 (arXiv 2312.04823), Sec. IV: with permuted training labels the held-out
    DSMI(Z;Y) stays near 0 while the network memorises. At each evaluation :math:`k` (an epoch on
    which ``monitor`` was logged) with training loss :math:`L_k`, held-out DSMI :math:`I_k` (bits)
    and :math:`C` classes, over the last ``window`` evaluations :math:`w`:

    .. math::

        \text{drop}_k = \frac{L_{k-w} - L_k}{L_{k-w}},\qquad
        \text{gain}_k = \frac{I_k - I_{k-w}}{\log_2 C},\qquad
        \text{level}_k = \frac{I_k}{\log_2 C},

    evaluation :math:`k` is *suspicious* if :math:`\text{drop}_k \ge` ``min_loss_drop`` (the
    model is still fitting its training labels) **and** :math:`\text{gain}_k <` ``min_info_gain``
    (held-out label information is not following) **and** :math:`\text{level}_k <`
    ``max_info_fraction`` (the representation carries little of the attainable label
    information). Training stops after ``patience`` consecutive suspicious evaluations.

    Why these three conditions and scales. :math:`\log_2 C` is the label entropy of balanced
    classes and bounds DSMI(Z;Y), so the gain and level thresholds are fractions of what is
    attainable, not bits tuned to one dataset; the loss enters only through its *relative* drop,
    so any loss (cross-entropy, MSE, ...) works. Rates alone cannot separate the two regimes:
    late in a healthy run the training loss also keeps falling while DSMI saturates, so the same
    "drop high, gain low" pattern appears; the level condition tells them apart, because a
    network that generalises quickly holds a sizeable fraction of :math:`\log_2 C` on held-out
    data while a memorising one does not. Conversely a run whose loss is flat is not memorising
    (it is not fitting anything) and is left alone. Measured on digits (MLP 64-256-128-10, Adam
    3e-3, penultimate features, 449 held-out samples, sigma 10): clean labels give DSMI 1.15 ->
    2.0 bits (level 0.35 -> 0.6) and are never suspicious; permuted training labels creep
    0.005 -> 0.42 bits in 40 epochs (0.01-0.02 bit/epoch, level < 0.13) while the training loss
    falls 1-3 % per epoch, and the rule stops that run at epoch 13. The rule targets memorisation;
    mild late overfitting of a well-generalising model (high DSMI slowly decreasing) is left to an
    ordinary ``EarlyStopping`` on the validation loss or on DSMI.

    Args:
        monitor: key of held-out DSMI(Z;Y) logged by the monitor callback. Default
            ``"info/dsmi_y/penultimate"``.
        loss_monitor: key of the epoch-level training loss (``self.log("train_loss", ...,
            on_epoch=True)``). Default ``"train_loss"``.
        num_classes: C; None reads ``pl_module.num_classes`` or ``pl_module.hparams.num_classes``
            at fit start.
        window: w, evaluations over which drop and gain are measured, >= 1. Default 3.
        patience: consecutive suspicious evaluations before stopping, >= 1. Default 2.
        min_loss_drop: relative training-loss drop over the window that counts as still fitting,
            > 0. Default 0.02.
        min_info_gain: DSMI gain over the window, as a fraction of :math:`\log_2 C`, that counts
            as following, > 0. Default 0.05 (0.17 bit for 10 classes).
        max_info_fraction: DSMI level, as a fraction of :math:`\log_2 C`, above which the run is
            considered to generalise, > 0. Default 0.25 (0.83 bit for 10 classes).
        verbose: log the decision at every evaluation.
        log_rank_zero_only: log only on rank 0.

    Attributes:
        history: ``[(epoch, train_loss, dsmi, suspicious), ...]``, one entry per evaluation.
        stopped_epoch: the epoch at which training was stopped (0 if it was not).

    Raises:
        ValueError: on invalid options, or at fit start when ``num_classes`` is None and the
            module has no ``num_classes``.
        TypeError: on options of the wrong type.

    Example:
        >>> stopper = OverfittingEarlyStopping(num_classes=10)
        >>> curve = [(2.30, 0.01), (2.25, 0.03), (2.20, 0.05), (2.10, 0.06), (2.00, 0.08), (1.9, 0.09)]
        >>> for epoch, (train_loss, dsmi) in enumerate(curve):
        ...     if stopper.observe(epoch, train_loss, dsmi):
        ...         break
        >>> stopper.stopped_epoch, [h[3] for h in stopper.history]
        (4, [False, False, False, True, True])
    """

    def __init__(
        self,
        monitor: str = "info/dsmi_y/penultimate",
        *,
        loss_monitor: str = "train_loss",
        num_classes: int | None = None,
        window: int = 3,
        patience: int = 2,
        min_loss_drop: float = 0.02,
        min_info_gain: float = 0.05,
        max_info_fraction: float = 0.25,
        verbose: bool = False,
        log_rank_zero_only: bool = False,
    ) -> None:
        if not isinstance(monitor, str) or not isinstance(loss_monitor, str):
            raise TypeError(
                f"`monitor` and `loss_monitor` must be strings; got {monitor!r}, {loss_monitor!r}."
            )
        patience = _check_int(patience, "patience", minimum=1)
        super().__init__(
            monitor=monitor,
            mode="max",
            patience=patience,
            strict=False,
            check_finite=False,
            verbose=verbose,
            log_rank_zero_only=log_rank_zero_only,
        )
        self.loss_monitor = loss_monitor
        self.num_classes = _check_int(num_classes, "num_classes", minimum=2, allow_none=True)
        self.window = _check_int(window, "window", minimum=1)
        self.min_loss_drop = _check_positive(min_loss_drop, "min_loss_drop")
        self.min_info_gain = _check_positive(min_info_gain, "min_info_gain")
        self.max_info_fraction = _check_positive(max_info_fraction, "max_info_fraction")
        self.history: list[tuple[int, float, float, bool]] = []
        self._warned_missing_loss = False

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, loss_monitor=self.loss_monitor)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.num_classes is None:
            found = getattr(pl_module, "num_classes", None)
            if found is None:
                found = getattr(pl_module, "hparams", {}).get("num_classes")
            if not isinstance(found, int) or found < 2:
                raise ValueError(
                    f"{type(self).__name__}: `num_classes` is None and "
                    f"{type(pl_module).__name__} has no integer `num_classes` attribute or "
                    "hyperparameter; pass `num_classes=`."
                )
            self.num_classes = found

    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["history"] = list(self.history)
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.history = [tuple(h) for h in state_dict.get("history", [])]  # type: ignore[misc]

    def observe(self, epoch: int, train_loss: float, dsmi: float) -> bool:
        """Record one evaluation, apply the rule and return whether training should stop.

        Used by the Lightning hooks; call it directly to apply the rule to a logged curve.

        Raises:
            ValueError: if ``num_classes`` is still unknown.
        """
        if self.num_classes is None:
            raise ValueError(f"{type(self).__name__}: set `num_classes` before `observe`.")
        scale = math.log2(self.num_classes)
        suspicious = False
        if len(self.history) >= self.window and math.isfinite(train_loss) and math.isfinite(dsmi):
            _, loss_before, info_before, _ = self.history[-self.window]
            drop = (loss_before - train_loss) / abs(loss_before) if loss_before != 0 else 0.0
            gain = (dsmi - info_before) / scale
            suspicious = (
                drop >= self.min_loss_drop
                and gain < self.min_info_gain
                and dsmi / scale < self.max_info_fraction
            )
        self.history.append((int(epoch), float(train_loss), float(dsmi), suspicious))
        self.wait_count = self.wait_count + 1 if suspicious else 0
        if dsmi > float(self.best_score):
            self.best_score = torch.tensor(dsmi)
        should_stop = self.wait_count >= self.patience
        if should_stop:
            self.stopped_epoch = int(epoch)
            self.stopping_reason = EarlyStoppingReason.PATIENCE_EXHAUSTED
            self.stopping_reason_message = (
                f"{type(self).__name__}: training loss `{self.loss_monitor}` kept falling (>= "
                f"{self.min_loss_drop:.0%} per {self.window} evaluations) while held-out "
                f"`{self.monitor}` = {dsmi:.3f} bits stayed below {self.max_info_fraction:.0%} of "
                f"log2({self.num_classes}) and gained < {self.min_info_gain:.0%} of it, for "
                f"{self.wait_count} evaluations. Signaling Trainer to stop."
            )
        return should_stop

    @override
    def _run_early_stopping_check(self, trainer: pl.Trainer) -> None:
        logs = trainer.callback_metrics
        if trainer.fast_dev_run or self.monitor not in logs:
            return  # no evaluation this epoch: nothing to count
        if self.history and self.history[-1][0] == trainer.current_epoch:
            return  # already counted this epoch
        if self.loss_monitor not in logs:
            if not self._warned_missing_loss:
                self._warned_missing_loss = True
                rank_zero_warn(
                    f"{type(self).__name__}: `{self.loss_monitor}` is not logged; log the epoch "
                    f"training loss (`self.log('{self.loss_monitor}', loss, on_epoch=True)`) or "
                    f"pass `loss_monitor=`. Available: {sorted(logs)}.",
                    category=RuntimeWarning,
                )
            return
        loss = float(logs[self.loss_monitor].detach().float().mean())
        dsmi = float(logs[self.monitor].detach().float().mean())
        should_stop = self.observe(trainer.current_epoch, loss, dsmi)
        should_stop = trainer.strategy.reduce_boolean_decision(should_stop, all=False)
        trainer.should_stop = trainer.should_stop or should_stop
        if should_stop:
            self.stopped_epoch = trainer.current_epoch
        if self.verbose:
            epoch, loss, dsmi, suspicious = self.history[-1]
            message = (
                self.stopping_reason_message
                if should_stop
                else (
                    f"{type(self).__name__}: epoch {epoch} loss {loss:.4f} dsmi {dsmi:.3f} "
                    f"suspicious={suspicious} ({self.wait_count}/{self.patience})"
                )
            )
            self._log_info(trainer, message or "", self.log_rank_zero_only)
