"""2-process CPU (gloo) DDP run of SmoothUniqueInformation; used by test_sui_ddp.py.

Usage: ``python tests/callbacks/_ddp_sui_script.py OUT_DIR``. Each rank saves its ``scores_`` to
``OUT_DIR/rank{r}.pt``; rank 0 also saves the initial weights for the reference computation.
The training set has 101 samples (odd), so DistributedSampler pads one duplicate during training.
"""

from __future__ import annotations

import sys
import warnings

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_info.callbacks import SmoothUniqueInformation
from lightning_info.models import MLPClassifier
from lightning_info.utilities.data import load_dataset

N_TRAIN, N_VAL = 101, 31


def main(out_dir: str) -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    ds = load_dataset("digits")
    x, y = ds.inputs[:N_TRAIN], ds.targets[:N_TRAIN]
    xv, yv = ds.inputs[N_TRAIN : N_TRAIN + N_VAL], ds.targets[N_TRAIN : N_TRAIN + N_VAL]
    torch.manual_seed(0)
    model = MLPClassifier(64, 10, hidden=(8,), loss="mse", optimizer="sgd", lr=0.05)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sui = SmoothUniqueInformation(max_samples=None, ntk="full")
    trainer = pl.Trainer(
        callbacks=[sui],
        strategy="ddp",
        devices=2,
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=out_dir,
    )
    train = DataLoader(
        TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    trainer.fit(model, train, DataLoader(TensorDataset(xv, yv), batch_size=16))
    s = sui.scores_
    torch.save(
        {
            "indices": s.indices,
            "weight_si": s.weight_si,
            "functional_si": s.functional_si,
            "settings": s.settings,
            "init": init,
            "global_step": trainer.global_step,
            "world_size": trainer.world_size,
        },
        f"{out_dir}/rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main(sys.argv[1])
