"""Evidence for the SUI applications (issue 5): mislabeled detection, summarization, rare class.

Run: ``python benchmarks/sui_applications.py`` (about 15 minutes on 2 idle CPU cores; 40 on a
loaded machine) or ``--quick``
(a smoke run with tiny settings; its numbers mean nothing). Tables are printed and written to
``benchmarks/out/sui_applications.md``; the summarization curve to ``benchmarks/out/
summarization.png``.

Setting: scikit-learn digits (1,797 8x8 images), 70% train / 15% validation / 15% test, an MLP
trained with MSE on one-hot targets and plain SGD (the closed form's assumptions hold), and the
``SmoothUniqueInformation`` callback with DEFAULT settings (``Trainer(callbacks=[
SmoothUniqueInformation()])``) unless a row says otherwise.

1. Mislabeled detection: 10% of the training labels flipped to another class. Two regimes: a
   short run that underfits the flipped labels and a long one that memorizes them (verified by
   the training accuracy on the flipped samples w.r.t. their wrong labels). AUROC of weight SI
   and functional SI for ``linearize_at="init"`` (default) and ``"final"``, next to two
   baselines at the final weights: the sample's training loss and the self-influence gradient
   norm ``||J_i^T r_i||^2``.
2. Summarization: keep 10-90% of a clean training set chosen by SUI (iterative and one-shot,
   removing the least informative) or at random, retrain from the same initialization, report
   test accuracy.
3. Under-sampled class: one digit class down-sampled to 10%; per-class mean SUI.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import TensorDataset

from lightning_info.applications import aggregate_by_group, summarize_dataset
from lightning_info.callbacks.sui import SmoothUniqueInformation
from lightning_info.functional.jacobian import jacobian_features
from lightning_info.models import MLPClassifier
from lightning_info.reporting import markdown_table, save_curves_png, write_text_atomic
from lightning_info.utilities.data import corrupt_labels, load_dataset, make_loader

OUT = Path(__file__).resolve().parent / "out"


def log(msg: str) -> None:
    print(msg, flush=True)


def splits(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_tr, n_val = round(0.7 * n), round(0.15 * n)
    return (
        perm[:n_tr].sort().values,
        perm[n_tr : n_tr + n_val].sort().values,
        perm[n_tr + n_val :].sort().values,
    )


def make_trainer(epochs: int, callbacks: list, root: Path) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        check_val_every_n_epoch=10_000,  # validation data is only there for F-SI
        num_sanity_val_steps=0,
        default_root_dir=str(root),
    )


def self_influence(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """||J_i^T r_i||^2 at the current weights, r_i = f(x_i) - onehot(y_i), in chunks."""
    out = []
    for start in range(0, x.shape[0], 100):
        xb = x[start : start + 100]
        with torch.no_grad():
            r = model(xb) - torch.nn.functional.one_hot(targets[start : start + 100], 10).float()
        jac = jacobian_features(model, xb)  # (n, K, P)
        out.append(torch.einsum("nk,nkp->np", r, jac).pow(2).sum(1))
    return torch.cat(out)


def auroc(is_bad: torch.Tensor, score: torch.Tensor) -> float:
    return float(roc_auc_score(is_bad.numpy(), np.nan_to_num(score.double().numpy(), nan=0.0)))


# ------------------------------------------------------------------------------------------------
# 1. mislabeled detection
# ------------------------------------------------------------------------------------------------
def detection(cfg: dict, ds, tr, va, root: Path) -> tuple[list, list]:
    x, y = ds.inputs[tr], ds.targets[tr]
    y_noisy, bad = corrupt_labels(y, fraction=0.1, num_classes=10, seed=0)
    val_loader = make_loader(ds.inputs[va], ds.targets[va], batch_size=256)
    rows, regime_rows = [], []
    regimes = (("underfit", cfg["epochs_underfit"]), ("memorize", cfg["epochs_memorize"]))
    for regime, epochs in [r for r in regimes if r[0] in cfg["regimes"]]:
        pl.seed_everything(0, verbose=False)
        model = MLPClassifier(
            64, 10, hidden=cfg["hidden"], loss="mse", optimizer="sgd", lr=cfg["lr"]
        )
        sui = SmoothUniqueInformation(**cfg["sui_kwargs"])  # DEFAULT settings
        trainer = make_trainer(epochs, [sui], root / regime)
        t0 = time.time()
        trainer.fit(
            model, make_loader(x, y_noisy, batch_size=cfg["batch_size"], shuffle=True), val_loader
        )
        t_fit = time.time() - t0
        scores_init = sui.scores_
        t0 = time.time()
        scores_final = SmoothUniqueInformation(linearize_at="final", **cfg["sui_kwargs"]).score(
            model, trainer=trainer, write=False
        )
        t_final = time.time() - t0
        with torch.no_grad():
            out = model(x)
        pred = out.argmax(1)
        flip_fit = float((pred[bad] == y_noisy[bad]).float().mean())
        clean_acc = float((pred[~bad] == y_noisy[~bad]).float().mean())
        idx = scores_init.indices
        assert torch.equal(idx, scores_final.indices)
        b = bad[idx]
        loss_i = 0.5 * (out - torch.nn.functional.one_hot(y_noisy, 10).float()).pow(2).sum(1)
        infl = self_influence(model, x[idx], y_noisy[idx])
        st = scores_init.settings
        regime_rows.append(
            (
                regime,
                epochs,
                trainer.global_step,
                round(clean_acc, 3),
                round(flip_fit, 3),
                f"{st['ntk']}/{st['method']}",
                st["num_steps"],
                round(st["learning_rate"], 4),
                f"{t_fit:.0f}s",
                f"{t_final:.0f}s",
            )
        )
        for name, score in (
            ("weight SI, init (default)", scores_init.weight_si),
            ("functional SI, init (default)", scores_init.functional_si),
            ("weight SI, final", scores_final.weight_si),
            ("functional SI, final", scores_final.functional_si),
            ("baseline: training loss", loss_i[idx]),
            ("baseline: self-influence ||J_i^T r_i||^2", infl),
        ):
            rows.append((regime, name, round(auroc(b, score), 3)))
            log(f"  {regime:9s} {name:42s} AUROC {rows[-1][-1]:.3f}")
        log(
            f"  {regime}: steps={trainer.global_step} clean acc={clean_acc:.3f} flipped fitted={flip_fit:.3f} fit {t_fit:.0f}s, final-scoring {t_final:.0f}s, settings {st}"
        )
    return rows, regime_rows


# ------------------------------------------------------------------------------------------------
# 2. summarization
# ------------------------------------------------------------------------------------------------
def retrain_accuracy(init_state, x, y, x_test, y_test, cfg) -> float:
    """Plain-loop SGD retraining (same init, same lr/batch/steps) on a subset; test accuracy."""
    model = MLPClassifier(
        64, 10, hidden=cfg["sum_hidden"], loss="mse", optimizer="sgd", lr=cfg["lr"]
    )
    model.load_state_dict(init_state)
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"])
    gen = torch.Generator().manual_seed(0)
    onehot = torch.nn.functional.one_hot(y, 10).float()
    bs = cfg["batch_size"]
    for _ in range(cfg["sum_steps"]):
        b = torch.randint(0, x.shape[0], (min(bs, x.shape[0]),), generator=gen)
        loss = 0.5 * (model(x[b]) - onehot[b]).pow(2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float((model(x_test).argmax(1) == y_test).float().mean())


def summarization(cfg: dict, ds, tr, va, te) -> tuple[list, dict]:
    x, y = ds.inputs[tr], ds.targets[tr]
    xv, xt, yt = ds.inputs[va], ds.inputs[te], ds.targets[te]
    torch.manual_seed(0)
    init_model = MLPClassifier(
        64, 10, hidden=cfg["sum_hidden"], loss="mse", optimizer="sgd", lr=cfg["lr"]
    )
    init_state = {k: v.clone() for k, v in init_model.state_dict().items()}
    train_set, val_set = TensorDataset(x, y), TensorDataset(xv, ds.targets[va])
    # the retraining replays sum_steps mini-batch steps: score with that horizon at the init weights
    scorer = SmoothUniqueInformation(
        linearize_at="final",
        learning_rate=cfg["lr"],
        num_steps=cfg["sum_steps"],
        max_samples=None,
        max_heldout=cfg["sui_kwargs"].get("max_heldout", 500),
    )

    cache: dict[tuple[int, ...], torch.Tensor] = {}

    def score_fn(indices: torch.Tensor) -> torch.Tensor:
        # the iterative rounds of different target fractions share their prefix: memoize
        key = tuple(indices.tolist())
        if key not in cache:
            cache[key] = _score(indices)
        return cache[key]

    def _score(indices: torch.Tensor) -> torch.Tensor:
        s = scorer.score(
            init_model, torch.utils.data.Subset(train_set, indices.tolist()), val_set, write=False
        )
        return s.functional_si

    t0 = time.time()
    full_scores = score_fn(torch.arange(x.shape[0]))
    fractions = cfg["fractions"]
    acc = {"SUI iterative": [], "SUI one-shot": [], "random": []}
    rand_std = []
    for f in fractions:
        keep_it = summarize_dataset(
            score_fn, keep_fraction=f, num_samples=x.shape[0], step_fraction=cfg["step_fraction"]
        )
        keep_one = summarize_dataset(full_scores, keep_fraction=f)
        acc["SUI iterative"].append(
            retrain_accuracy(init_state, x[keep_it], y[keep_it], xt, yt, cfg)
        )
        acc["SUI one-shot"].append(
            retrain_accuracy(init_state, x[keep_one], y[keep_one], xt, yt, cfg)
        )
        rs = []
        for seed in range(cfg["random_seeds"]):
            perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(100 + seed))
            keep = perm[: keep_one.numel()]
            rs.append(retrain_accuracy(init_state, x[keep], y[keep], xt, yt, cfg))
        acc["random"].append(float(np.mean(rs)))
        rand_std.append(float(np.std(rs)))
        log(
            f"  keep {f:.0%}: iterative {acc['SUI iterative'][-1]:.3f} one-shot {acc['SUI one-shot'][-1]:.3f} random {acc['random'][-1]:.3f}±{rand_std[-1]:.3f} ({time.time() - t0:.0f}s)"
        )
    full_acc = retrain_accuracy(init_state, x, y, xt, yt, cfg)
    rows = [
        (f"{f:.0%}", round(a, 3), round(b, 3), f"{c:.3f} ± {s:.3f}")
        for f, a, b, c, s in zip(
            fractions, acc["SUI iterative"], acc["SUI one-shot"], acc["random"], rand_std
        )
    ]
    rows.append(("100%", round(full_acc, 3), round(full_acc, 3), f"{full_acc:.3f}"))
    curves = {
        "SUI iterative (remove least informative)": acc["SUI iterative"] + [full_acc],
        "SUI one-shot": acc["SUI one-shot"] + [full_acc],
        f"random ({cfg['random_seeds']} seeds)": (acc["random"] + [full_acc], [*rand_std, 0.0]),
    }
    save_curves_png(
        OUT / "summarization.png",
        [*fractions, 1.0],
        curves,
        xlabel="fraction of training set kept",
        ylabel="test accuracy",
        title="Digits: retraining on a summary chosen by functional SI",
    )
    return rows, curves


# ------------------------------------------------------------------------------------------------
# 3. under-sampled class
# ------------------------------------------------------------------------------------------------
def rare_class(cfg: dict, ds, tr, va, root: Path, rare: int = 8) -> tuple[list, float, float]:
    y_all = ds.targets[tr]
    members = tr[y_all == rare]
    keep_rare = members[
        torch.randperm(members.numel(), generator=torch.Generator().manual_seed(0))[
            : max(2, members.numel() // 10)
        ]
    ]
    sub = torch.cat([tr[y_all != rare], keep_rare]).sort().values
    x, y = ds.inputs[sub], ds.targets[sub]
    pl.seed_everything(0, verbose=False)
    model = MLPClassifier(64, 10, hidden=cfg["hidden"], loss="mse", optimizer="sgd", lr=cfg["lr"])
    sui = SmoothUniqueInformation(**cfg["sui_kwargs"])
    trainer = make_trainer(cfg["epochs_underfit"], [sui], root / "rare")
    trainer.fit(
        model,
        make_loader(x, y, batch_size=cfg["batch_size"], shuffle=True),
        make_loader(ds.inputs[va], ds.targets[va], batch_size=256),
    )
    s = sui.scores_
    w = aggregate_by_group(s, s.labels, by="weight_si")
    f = aggregate_by_group(s, s.labels, by="functional_si")
    rows = [
        (int(g), int(c), f"{float(wm):.3e}", f"{float(fm):.3e}")
        for g, c, wm, fm in zip(w.groups, w.count, w.mean, f.mean)
    ]
    others_w = float(w.mean[w.groups != rare].mean())
    others_f = float(f.mean[f.groups != rare].mean())
    ratio_w = float(w.mean[w.groups == rare]) / others_w
    ratio_f = float(f.mean[f.groups == rare]) / others_f
    return rows, ratio_w, ratio_f


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (numbers meaningless)")
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["detection", "summarization", "rare"]
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--memorize-epochs", type=int, default=500, help="epochs of the long run")
    parser.add_argument(
        "--regimes", nargs="*", default=["underfit", "memorize"], choices=["underfit", "memorize"]
    )
    parser.add_argument("--tag", default="", help="suffix of the output Markdown file name")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    cfg = dict(
        hidden=(128, 128),
        lr=0.5,
        batch_size=32,
        epochs_underfit=25,
        epochs_memorize=args.memorize_epochs,
        regimes=args.regimes,
        sui_kwargs={},
        sum_hidden=(64,),
        sum_steps=600,
        random_seeds=3,
        fractions=[0.1, 0.3, 0.5, 0.7, 0.9],
        step_fraction=0.2,
    )
    if args.quick:
        cfg.update(
            hidden=(16,),
            epochs_underfit=1,
            epochs_memorize=2,
            sum_steps=30,
            random_seeds=1,
            fractions=[0.5],
            step_fraction=0.5,
            sui_kwargs=dict(max_samples=120, max_heldout=40),
        )
    ds = load_dataset("digits")
    tr, va, te = splits(len(ds.targets))
    if args.quick:
        tr, va, te = tr[:150], va[:60], te[:60]
    root = Path(__import__("tempfile").mkdtemp(prefix="sui_bench_"))
    OUT.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    md = ["# SUI applications on digits (benchmarks/sui_applications.py)", ""]
    md.append(
        f"Command: `python benchmarks/sui_applications.py{' --quick' if args.quick else ''}`; "
        f"model MLP 64-{'-'.join(map(str, cfg['hidden']))}-10, MSE on one-hot, SGD lr={cfg['lr']}, "
        f"batch {cfg['batch_size']}; train/val/test = {len(tr)}/{len(va)}/{len(te)}."
    )
    md.append("")
    if "detection" not in args.skip:
        log("1. mislabeled detection (10% flipped labels)")
        rows, regime_rows = detection(cfg, ds, tr, va, root)
        md += [
            "## 1. Mislabeled detection (10% flipped), AUROC",
            "",
            markdown_table(
                [
                    "regime",
                    "epochs",
                    "steps",
                    "train acc (clean)",
                    "flipped fitted to wrong label",
                    "ntk/method",
                    "replayed steps",
                    "replayed lr",
                    "fit+score time",
                    "final-scoring time",
                ],
                regime_rows,
            ),
            "",
            markdown_table(["regime", "score", "AUROC"], rows),
            "",
        ]
    if "summarization" not in args.skip:
        log("2. summarization")
        srows, _ = summarization(cfg, ds, tr, va, te)
        md += [
            "## 2. Summarization: test accuracy after retraining on the kept fraction",
            "",
            f"MLP 64-{'-'.join(map(str, cfg['sum_hidden']))}-10 retrained for {cfg['sum_steps']} SGD steps "
            f"(batch {cfg['batch_size']}, lr {cfg['lr']}) from the same initialization; SUI = functional SI at "
            f"the initial weights with the retraining's horizon; iterative removes {cfg['step_fraction']:.0%} "
            "of the remaining samples per round and rescores.",
            "",
            markdown_table(["kept", "SUI iterative", "SUI one-shot", "random (mean ± std)"], srows),
            "",
            "Plot: `benchmarks/out/summarization.png`.",
            "",
        ]
    if "rare" not in args.skip:
        log("3. under-sampled class")
        crows, rw, rf = rare_class(cfg, ds, tr, va, root)
        md += [
            "## 3. Under-sampled class (digit 8 down-sampled to 10%): per-class mean SUI",
            "",
            markdown_table(["class", "n", "mean weight SI", "mean functional SI"], crows, digits=6),
            "",
            f"Rare class mean / mean of the other class means: weight SI x{rw:.2f}, functional SI x{rf:.2f}.",
            "",
        ]
        log(f"  rare/other ratio: weight SI {rw:.2f}, functional SI {rf:.2f}")
    md.append(f"Total runtime: {time.time() - t_start:.0f} s.")
    text = "\n".join(md) + "\n"
    name = f"sui_applications{'_quick' if args.quick else ''}{args.tag}.md"
    write_text_atomic(OUT / name, text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
