"""Shared by the DDP training scripts (``_ddp_*_script.py``, run as subprocesses)."""

from __future__ import annotations

import pytorch_lightning as pl


class Dump(pl.Callback):
    """Records the monitor's logged ``info/`` values at every train epoch end (after the
    callbacks before it, e.g. a stopper, have run)."""

    def __init__(self, prefixes=("info/",)):
        self.rows = {}
        self.prefixes = tuple(prefixes)

    def on_train_epoch_end(self, trainer, pl_module):
        self.rows[trainer.current_epoch] = {
            k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(self.prefixes)
        }
