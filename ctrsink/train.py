"""The training loop, top to bottom: data -> model -> epochs (stage 1 sink-only, stage 2 all tokens) -> run dir.

`train()` is the list of steps; each step fits on a screen and none knows which model family it trains (the family,
`ctrsink.run.family_of`, builds, saves and prepares the model). The steps that check the output folder and write
the run record before the first epoch are in `ctrsink.runstart`; the epochs and the test are here.

One AdamW and one warm-up + cosine schedule span all epochs of both stages (spec §6). Validation after every epoch
selects the best checkpoint by valid AUC under `eval_pooling`; test is evaluated once, at the best checkpoint.
Checkpoints are written at every epoch end, so an interrupted run resumes from its last completed epoch with the
same command.
"""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import load_model, save_model
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from ctrsink.atomic import atomic_dir, atomic_write_bytes, atomic_write_json, atomic_write_text
from ctrsink.batches import SampleDataset
from ctrsink.config import Config
from ctrsink.family import Built, ModelFamily
from ctrsink.metrics import ctr_metrics
from ctrsink.run import CHECKPOINT, PREDICTIONS_TEST_FILE, epoch_checkpoint, family_of
from ctrsink.runstart import check_out_dir, make_accelerator, open_run_dir, prepare_model, write_run_record
from ctrsink.sampling import Samples, load_samples
from ctrsink.sampling import subsample as _subsample
from ctrsink.textprep import tokenizer_corpus

# tokenizer_corpus and _subsample moved out of this module; benchmarks and scripts still import them from here
__all__ = ["_subsample", "evaluate_split", "predict_loader", "tokenizer_corpus", "train"]

log = logging.getLogger("ctrsink.train")


def train(data_dir: str | Path, cfg: Config, out_dir: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Train `cfg` on the samples in `data_dir` into the run directory `out_dir`; -> valid and test metrics at the
    best epoch. An unfinished run with the same config in `out_dir` is resumed."""
    data_dir, out_dir = Path(data_dir).resolve(), Path(out_dir)
    accelerator = make_accelerator(cfg)
    resuming = check_out_dir(out_dir, cfg, overwrite)
    set_seed(cfg.seed)  # model initialisation below draws from it

    samples = load_samples(data_dir, cfg)
    family = family_of(cfg)
    built = build_model(family, cfg, samples, out_dir, resuming)
    # only now, with data and model loaded without error, is the run directory touched
    open_run_dir(accelerator, family, cfg, out_dir, resuming)
    if not resuming:
        prepare_model(accelerator, family, built, cfg, data_dir, out_dir)
        write_run_record(accelerator, family, built, cfg, samples, data_dir, out_dir)

    loop = make_loop(accelerator, cfg, samples, built)
    state = resume_state(loop, out_dir) if resuming else new_state()
    loop.prepare()
    if cfg.keep_epoch_checkpoints and state["epoch"] == 0:
        _save_checkpoint(loop, out_dir / "checkpoint" / epoch_checkpoint(0))  # the weights before any step
    for epoch in range(state["epoch"], cfg.total_epochs):
        train_loss, seconds = train_epoch(loop, cfg, epoch)
        rows = validate(loop, cfg, epoch, train_loss, seconds)
        record_epoch(loop, state, out_dir, rows)
        if checkpoint_epoch(loop, cfg, state, epoch, rows[0]["auc"], out_dir):
            log.info("early stop after epoch %d (best epoch %d)", epoch, state["best_epoch"])
            break
    return test_at_best(loop, cfg, state, samples, out_dir)


# ---- before the first epoch (the steps that start or resume a run are in ctrsink.runstart) ------------------


def build_model(family: ModelFamily, cfg: Config, samples: Samples, out_dir: Path, resuming: bool) -> Built:
    """A fresh model, or the interrupted run's model with its last checkpoint loaded."""
    if not resuming:
        return family.build(cfg, samples.items, samples.history_fields, samples.frames["train"])
    built = family.load(cfg, samples.items, samples.history_fields, out_dir)
    load_model(built.model, str(out_dir / "checkpoint" / "last" / CHECKPOINT), strict=True)
    return built


@dataclass
class Loop:
    """What the epochs run on: the model, optimizer, schedule and loaders (wrapped by `prepare`)."""

    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loaders: dict[str, DataLoader]
    train_set: SampleDataset
    users: np.ndarray  # user id by user code
    scaler: torch.amp.GradScaler  # fp16 loss scaling; a disabled pass-through otherwise

    def prepare(self) -> None:
        """Hand everything to Accelerate (device placement, DDP, sharded loaders)."""
        names = list(self.loaders)
        self.model, self.optimizer, self.scheduler, *loaders = self.accelerator.prepare(
            self.model, self.optimizer, self.scheduler, *self.loaders.values()
        )
        self.loaders = dict(zip(names, loaders))


def make_loop(accelerator: Accelerator, cfg: Config, samples: Samples, built: Built) -> Loop:
    """Loaders over the samples, AdamW (backbone at `lr`, new parameters at `head_lr`), warm-up + cosine."""
    users = sorted(pd.concat([f["user_id"].astype(str) for f in samples.frames.values()]).unique())
    user_codes = {u: i for i, u in enumerate(users)}
    datasets = {k: SampleDataset(v, user_codes) for k, v in samples.frames.items()}
    if cfg.length_bucketing and all(ds.measure(built.batcher) for ds in datasets.values()):
        for k in set(datasets) - {"train"}:  # metrics ignore order; predictions keep their sample ids
            datasets[k].sort_by_length()
    loaders = {
        k: DataLoader(
            ds,
            batch_size=cfg.batch_size if k == "train" else cfg.eval_batch_size,
            shuffle=False,
            collate_fn=built.batcher,
        )
        for k, ds in datasets.items()
    }
    model = built.model
    groups = [
        {"params": model.backbone_parameters(), "lr": cfg.lr},
        {"params": model.new_parameters(), "lr": cfg.head_lr},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=cfg.weight_decay)
    batches = -(-len(datasets["train"]) // (cfg.batch_size * accelerator.num_processes))
    steps_per_epoch = -(-batches // cfg.gradient_accumulation_steps)  # optimizer steps, not batches
    total_steps = steps_per_epoch * cfg.total_epochs
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    scaler = torch.amp.GradScaler(accelerator.device.type, enabled=cfg.precision == "fp16")
    users_by_code = np.asarray(users, object)
    return Loop(accelerator, model, optimizer, scheduler, loaders, datasets["train"], users_by_code, scaler)


def new_state() -> dict[str, Any]:
    return {"epoch": 0, "best_auc": -1.0, "best_epoch": -1, "bad_epochs": 0, "history": []}


def resume_state(loop: Loop, out_dir: Path) -> dict[str, Any]:
    """Trainer state, optimizer and schedule of the last completed epoch."""
    last = out_dir / "checkpoint" / "last"
    state = json.loads((last / "trainer_state.json").read_text())
    opt_state = torch.load(last / "optimizer.pt", weights_only=True)
    loop.optimizer.load_state_dict(opt_state["optimizer"])
    loop.scheduler.load_state_dict(opt_state["scheduler"])
    if "scaler" in opt_state:  # fp16 runs: the loss scale and its growth tracker
        loop.scaler.load_state_dict(opt_state["scaler"])
    log.info("resuming %s after epoch %d", out_dir, state["epoch"])
    return state


# ---- one epoch --------------------------------------------------------------------------------------------


def train_epoch(loop: Loop, cfg: Config, epoch: int) -> tuple[float, float]:
    """One pass over the training split; -> (mean loss, seconds)."""
    stage = cfg.stage_of_epoch(epoch)
    set_seed(cfg.seed + epoch)  # same shuffle and dropout whether or not the run was interrupted
    rng = np.random.default_rng(cfg.seed + epoch)
    order = rng.permutation(len(loop.train_set))
    if cfg.length_bucketing:  # batches of similar length, drawn from the same rng: a resumed epoch matches
        order = loop.train_set.bucketed(order, cfg.batch_size, rng)
    loop.train_set.set_order(order)
    accelerator, model = loop.accelerator, loop.model
    model.train()
    started, losses = time.time(), []
    bar = tqdm(
        loop.loaders["train"],
        desc=f"epoch {epoch} [{stage}]",
        disable=not accelerator.is_local_main_process,
        mininterval=5,
    )
    for batch in bar:
        losses.append(train_batch(loop, cfg, batch, stage))
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", refresh=False)
    return (float(np.mean(losses)) if losses else float("nan")), time.time() - started


def train_batch(loop: Loop, cfg: Config, batch: dict[str, Any], stage: str) -> float:
    """Forward and backward of one batch; the optimizer steps on the k-th batch of an accumulation window (or on
    an epoch's last batch). -> the batch's loss."""
    accelerator = loop.accelerator
    with accelerator.accumulate(loop.model):  # k batches: no DDP gradient sync and no step until the k-th
        logits = loop.model(batch["fields"], pooling=stage)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), batch["labels"])
        accelerator.backward(loop.scaler.scale(loss))  # divides by k: the sum is the k*b batch's mean
        if accelerator.sync_gradients:
            optimizer_step(loop, cfg)
    return loss.item()


def optimizer_step(loop: Loop, cfg: Config) -> None:
    """Unscale (fp16), clip, step (the fp16 scaler skips a step with inf/nan gradients), schedule, clear."""
    loop.scaler.unscale_(loop.optimizer)
    if cfg.max_grad_norm:
        loop.accelerator.clip_grad_norm_(loop.model.parameters(), cfg.max_grad_norm)
    loop.scaler.step(loop.optimizer)
    loop.scaler.update()
    loop.scheduler.step()
    loop.optimizer.zero_grad()


def eval_poolings(cfg: Config) -> list[str]:
    """Poolings validated after each epoch, the selecting one (`eval_pooling`) first; two-stage runs report both."""
    reported = ("all_tokens", "sink_only") if cfg.two_stage else ("all_tokens",)
    return [cfg.eval_pooling, *(p for p in reported if p != cfg.eval_pooling)]


def validate(loop: Loop, cfg: Config, epoch: int, train_loss: float, seconds: float) -> list[dict[str, Any]]:
    """One metrics row per pooling on the validation split; the first row selects the checkpoint."""
    rows = []
    for pooling in eval_poolings(cfg):
        m = evaluate_split(loop.model, loop.loaders["valid"], loop.accelerator, pooling)
        rows.append(
            {
                "epoch": epoch,
                "stage": cfg.stage_of_epoch(epoch),
                "split": "valid",
                "pooling": pooling,
                "train_loss": train_loss,
                "train_seconds": seconds,
                **m,
            }
        )
    return rows


def record_epoch(loop: Loop, state: dict[str, Any], out_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Keep the epoch's rows in the trainer state, log them and append them to RUN/metrics.jsonl."""
    state["history"].extend(rows)
    r = rows[0]
    log.info(
        "epoch %d [%s] loss %.4f valid auc %.4f logloss %.4f gauc %.4f (%.0fs)",
        *(r["epoch"], r["stage"], r["train_loss"], r["auc"], r["logloss"], r["gauc"], r["train_seconds"]),
    )
    if loop.accelerator.is_main_process:
        with (out_dir / "metrics.jsonl").open("a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")


def checkpoint_epoch(
    loop: Loop, cfg: Config, state: dict[str, Any], epoch: int, valid_auc: float, out_dir: Path
) -> bool:
    """Keep the best checkpoint, count epochs without improvement, save the last state; -> stop early."""
    if valid_auc > state["best_auc"]:
        state.update(best_auc=valid_auc, best_epoch=epoch, bad_epochs=0)
        _save_checkpoint(loop, out_dir / "checkpoint" / "best")
    elif cfg.stage_of_epoch(epoch) == "all_tokens":  # early stopping never cuts stage 1 short
        state["bad_epochs"] += 1
    state["epoch"] = epoch + 1
    stop = bool(cfg.early_stop_patience and state["bad_epochs"] >= cfg.early_stop_patience)
    if stop:
        state["epoch"] = cfg.total_epochs
    if cfg.keep_epoch_checkpoints:
        _save_checkpoint(loop, out_dir / "checkpoint" / epoch_checkpoint(epoch + 1))
    _save_checkpoint(loop, out_dir / "checkpoint" / "last", state)
    return stop


def _save_checkpoint(loop: Loop, path: Path, state: dict[str, Any] | None = None) -> None:
    """Atomic: a checkpoint folder is either complete or absent. With `state`: optimizer, schedule and trainer
    state too (what a resumed run needs)."""
    accelerator = loop.accelerator
    if accelerator.is_main_process:
        with atomic_dir(path) as tmp:
            save_model(accelerator.unwrap_model(loop.model), str(tmp / CHECKPOINT))
            if state is not None:
                torch.save(
                    {
                        "optimizer": loop.optimizer.state_dict(),
                        "scheduler": loop.scheduler.state_dict(),
                        **({"scaler": loop.scaler.state_dict()} if loop.scaler.is_enabled() else {}),
                        "torch_rng": torch.get_rng_state(),
                    },
                    tmp / "optimizer.pt",
                )
                (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
    accelerator.wait_for_everyone()


# ---- evaluation -------------------------------------------------------------------------------------------


@torch.no_grad()
def predict_loader(
    model: torch.nn.Module, loader: DataLoader, accelerator: Accelerator, pooling: str, desc: str = "eval"
) -> dict[str, np.ndarray]:
    """Logits, labels, sample ids and user codes for every sample of a loader, gathered over processes."""
    model.eval()
    out: dict[str, list] = {"logits": [], "labels": [], "sample_id": [], "user_code": []}
    for batch in tqdm(
        loader, desc=desc, disable=not accelerator.is_local_main_process, leave=False, mininterval=5
    ):
        logits = model(batch["fields"], pooling=pooling)
        gathered = accelerator.gather_for_metrics(
            (logits.float(), batch["labels"], batch["sample_id"], batch["user_code"])
        )
        for key, value in zip(out, gathered):
            out[key].append(value.cpu().numpy())
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}


def evaluate_split(
    model: torch.nn.Module, loader: DataLoader, accelerator: Accelerator, pooling: str
) -> dict[str, float]:
    p = predict_loader(model, loader, accelerator, pooling)
    return ctr_metrics(p["labels"], p["logits"], p["user_code"])


def test_at_best(
    loop: Loop, cfg: Config, state: dict[str, Any], samples: Samples, out_dir: Path
) -> dict[str, Any]:
    """Valid and test metrics at the best checkpoint (RUN/final_metrics.json, the "best" row of metrics.jsonl) and
    one test logit per sample (RUN/predictions_test.parquet)."""
    accelerator, model = loop.accelerator, loop.model
    load_model(
        accelerator.unwrap_model(model), str(out_dir / "checkpoint" / "best" / CHECKPOINT), strict=True
    )
    final: dict[str, Any] = {
        "best_epoch": state["best_epoch"],
        "selected_on": f"valid auc ({cfg.eval_pooling} pooling)",
        "valid": evaluate_split(model, loop.loaders["valid"], accelerator, cfg.eval_pooling),
    }
    test = predict_loader(model, loop.loaders["test"], accelerator, cfg.eval_pooling)
    final["test"] = ctr_metrics(test["labels"], test["logits"], test["user_code"])
    if accelerator.is_main_process:
        _write_test_predictions(out_dir / PREDICTIONS_TEST_FILE, test, loop.users)
        # the test row is written once, also when a run is resumed after its last epoch (no duplicate rows)
        path = out_dir / "metrics.jsonl"
        rows = [
            r for r in path.read_text(encoding="utf-8").splitlines() if json.loads(r).get("stage") != "best"
        ]
        best = {
            "epoch": state["best_epoch"],
            "stage": "best",
            "split": "test",
            "pooling": cfg.eval_pooling,
            **final["test"],
        }
        atomic_write_text(path, "\n".join([*rows, json.dumps(best)]) + "\n")
        atomic_write_json(out_dir / "final_metrics.json", final)
    accelerator.wait_for_everyone()
    return final


def _write_test_predictions(path: Path, p: dict[str, np.ndarray], users: np.ndarray) -> None:
    """sample_id, user_id (the original id), user_code, label, logit: what a paired user bootstrap reads."""
    codes = p["user_code"].astype(np.int64)
    frame = pd.DataFrame(
        {
            "sample_id": p["sample_id"].astype(np.int64),
            "user_id": np.where(codes >= 0, users[np.clip(codes, 0, None)], "").astype(str),
            "user_code": codes,
            "label": p["labels"].astype(np.float32),
            "logit": p["logits"].astype(np.float32),
        }
    )
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    atomic_write_bytes(path, buffer.getvalue())
