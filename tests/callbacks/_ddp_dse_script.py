"""Run by ``test_dse_ddp.py``: a 2-process CPU DDP (gloo) fit with the DSE monitor.

Each rank writes ``rank<r>.json`` with the values it logged per epoch; rank 0 also writes the
single-process functional values on the whole probe set, computed from the final weights.
Usage: ``python _ddp_dse_script.py OUT_DIR``.
"""

from __future__ import annotations

import json
import os
import sys

import pytorch_lightning as pl
import torch
from _ddp_common import Dump

from lightning_info.callbacks import DiffusionSpectralEntropyMonitor
from lightning_info.functional import (
    cluster_reference,
    diffusion_spectral_entropy,
    diffusion_spectral_mutual_information,
)
from lightning_info.metrics import DiffusionSpectralEntropy
from lightning_info.models import MLPClassifier
from lightning_info.utilities.data import load_dataset, make_loader, train_val_split

PROBE = 101  # odd: the two shares are uneven (51 / 50)
SIGMA = 2.0


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    ds = load_dataset("digits")
    tr, va = train_val_split(len(ds.targets), seed=0)
    va = va[:301]  # 301 validation samples: DistributedSampler pads the val loop, not our probe
    torch.manual_seed(0)
    model = MLPClassifier(64, 10, hidden=(32, 16), lr=3e-3)
    monitor = DiffusionSpectralEntropyMonitor(
        max_samples=PROBE, metric=DiffusionSpectralEntropy(sigma=SIGMA), log_histogram=False
    )
    dump = Dump()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=2,
        limit_train_batches=3,
        callbacks=[monitor, dump],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(
        model,
        make_loader(ds.inputs[tr], ds.targets[tr], batch_size=32),
        make_loader(ds.inputs[va], ds.targets[va], batch_size=64),
    )
    rank = trainer.global_rank
    result = {
        "rank": rank,
        "world_size": trainer.world_size,
        "rows": dump.rows,
        "probe": monitor.state_dict()["probe_indices"].tolist(),
    }
    if rank == 0:
        idx = monitor.state_dict()["probe_indices"]
        x, y = ds.inputs[va][idx], ds.targets[va][idx]
        model.eval()
        with torch.no_grad():
            z = model.net[:-1](x)
        clusters = cluster_reference(x, num_clusters=10, seed=0)
        result["functional"] = {
            "info/dse/penultimate": diffusion_spectral_entropy(z, sigma=SIGMA).item(),
            "info/dsmi_y/penultimate": diffusion_spectral_mutual_information(
                z, y, sigma=SIGMA
            ).item(),
            "info/dsmi_x/penultimate": diffusion_spectral_mutual_information(
                z, None, sigma=SIGMA, clusters=clusters
            ).item(),
        }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main(sys.argv[1])
