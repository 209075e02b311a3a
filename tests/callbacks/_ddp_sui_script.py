"""2-process CPU (gloo) DDP run of SmoothUniqueInformation; used by test_sui_ddp.py.

Usage: ``python tests/callbacks/_ddp_sui_script.py OUT_DIR [FAILURE]``. Each rank saves its
``scores_`` to ``OUT_DIR/rank{r}.pt``; rank 0 also saves the initial weights for the reference
computation. The training set has 101 samples (odd), so DistributedSampler pads one duplicate
during training.

With ``FAILURE`` (``samples``, ``features`` or ``solve``), scoring fails on one rank only (rank 1
reading its samples or computing its shard's Jacobians; rank 0 solving); each rank then saves the
warnings it got and runs ``trainer.validate``, to ``OUT_DIR/failure{r}.pt``.
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


class PlantedError(RuntimeError):
    pass


def plant_failure(kind: str) -> None:
    """Make scoring fail on one rank only (rank 1, or rank 0 for the solve)."""
    import lightning_info.callbacks._sui_data as sui_data
    import lightning_info.callbacks._sui_ddp as sui_ddp
    import lightning_info.functional.sui as sui_functional

    def failing(module, name, rank):
        original = getattr(module, name)

        def wrapped(*args, **kwargs):
            if torch.distributed.get_rank() == rank:
                raise PlantedError(f"planted {kind} failure on rank {rank}")
            return original(*args, **kwargs)

        setattr(module, name, wrapped)

    if kind == "samples":
        failing(sui_data.ScoringData, "training_samples", 1)
    elif kind == "features":
        failing(sui_ddp, "jacobian_features", 1)
    else:
        failing(sui_functional, "unique_information_with_plan", 0)


def main(out_dir: str, failure: str | None = None) -> None:
    warnings.filterwarnings("ignore")
    if failure:
        plant_failure(failure)
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
    val = DataLoader(TensorDataset(xv, yv), batch_size=16)
    if failure:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(model, train, val)
        messages = [str(w.message) for w in caught if "SmoothUniqueInformation" in str(w.message)]
        metrics = trainer.validate(model, val, verbose=False)  # must not deadlock
        torch.save(
            {"messages": messages, "scores_is_none": sui.scores_ is None, "validate": metrics},
            f"{out_dir}/failure{trainer.global_rank}.pt",
        )
        return
    trainer.fit(model, train, val)
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
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
