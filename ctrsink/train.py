"""The training loop, top to bottom: data -> model -> epochs (stage 1 sink-only, stage 2 all tokens) -> run dir.

One AdamW and one warm-up + cosine schedule span all epochs of both stages (spec §6). Validation after every epoch
selects the best checkpoint by valid AUC; test is evaluated once, at the best checkpoint. Checkpoints are written at
every epoch end, so an interrupted run resumes from its last completed epoch with the same command.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import time
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

import ctrsink
from ctrsink.backbones import backbone_from_run, load_backbone
from ctrsink.batches import SampleDataset
from ctrsink.config import Config, config_to_yaml, load_config
from ctrsink.cost import model_cost
from ctrsink.errors import CtrSinkError
from ctrsink.io import atomic_dir, atomic_write_json, atomic_write_text
from ctrsink.metrics import ctr_metrics
from ctrsink.run import CHECKPOINT, assemble, assemble_ids, read_json

log = logging.getLogger("ctrsink.train")


def _subsample(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    if n <= 0 or n >= len(frame):
        return frame
    keep = np.sort(np.random.default_rng(seed).choice(len(frame), size=n, replace=False))
    return frame.iloc[keep].reset_index(drop=True)


def tokenizer_corpus(
    items: pd.DataFrame, train: pd.DataFrame, history_fields: list[str], cfg: Config
) -> list[str]:
    """Text a scratch tokenizer learns from: the rendered texts of items seen in the training split, the prompts,
    separator and feedback words, and printable ASCII so punctuation never becomes [UNK]."""
    import string

    from ctrsink.config import PROMPT_PRESETS
    from ctrsink.text import FEEDBACK_TEXT, item_texts

    seen = [train["item_idx"].to_numpy()]
    for f in history_fields:
        col = train[f"{f}_item_idx"]
        if len(col):
            seen.append(np.concatenate([np.asarray(v) for v in col]))
    idx = np.unique(np.concatenate(seen).astype(np.int64))
    titles, cats, behaviors = item_texts(items.iloc[idx], cfg)
    texts = titles + cats + (behaviors if behaviors is not titles else [])
    texts += list({**PROMPT_PRESETS[cfg.prompt_preset], **cfg.prompts}.values())
    texts += [cfg.separator, *FEEDBACK_TEXT.values(), " ".join(string.printable.strip())]
    return texts


@torch.no_grad()
def predict_loader(
    model, loader, accelerator: Accelerator, pooling: str, desc: str = "eval"
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


def evaluate_split(model, loader, accelerator, pooling: str) -> dict[str, float]:
    p = predict_loader(model, loader, accelerator, pooling)
    return ctr_metrics(p["labels"], p["logits"], p["user_code"])


def _save_checkpoint(
    accelerator: Accelerator,
    model,
    path: Path,
    extra: dict[str, Any] | None = None,
    optimizer=None,
    scheduler=None,
) -> None:
    """Atomic: a checkpoint folder is either complete or absent."""
    if accelerator.is_main_process:
        with atomic_dir(path) as tmp:
            save_model(accelerator.unwrap_model(model), str(tmp / CHECKPOINT))
            if optimizer is not None:
                torch.save(
                    {
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "torch_rng": torch.get_rng_state(),
                    },
                    tmp / "optimizer.pt",
                )
            if extra is not None:
                (tmp / "trainer_state.json").write_text(json.dumps(extra, indent=1))
    accelerator.wait_for_everyone()


def train(data_dir: str | Path, cfg: Config, out_dir: str | Path, overwrite: bool = False) -> dict[str, Any]:
    from ctrsink.data import load_sample_set

    data_dir, out_dir = Path(data_dir).resolve(), Path(out_dir)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.mixed_precision)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    main = accelerator.is_main_process
    last_dir = out_dir / "checkpoint" / "last"

    # ---- resume or start ------------------------------------------------------------------------
    resuming = (last_dir / "trainer_state.json").is_file() and not overwrite
    if (out_dir / "final_metrics.json").is_file() and not overwrite:
        raise CtrSinkError(f"{out_dir} already holds a finished run; pass --overwrite to train again")
    if resuming:
        saved = load_config(out_dir / "config.yaml")
        if saved.to_dict() != cfg.to_dict():
            diff = sorted(k for k, v in cfg.to_dict().items() if saved.to_dict().get(k) != v)
            raise CtrSinkError(
                f"{out_dir} holds an unfinished run with a different config ({', '.join(diff)}); "
                "use the same options to resume or --overwrite to start again"
            )
    elif out_dir.exists() and any(out_dir.iterdir()) and not overwrite and not _started_only(out_dir, cfg):
        raise CtrSinkError(f"output directory {out_dir} is not empty; pass --overwrite to replace it")
    set_seed(cfg.seed)

    # ---- data -------------------------------------------------------------------------------------
    splits, items, manifest = load_sample_set(data_dir)
    items = items.to_pandas() if hasattr(items, "to_pandas") else items
    frames = {k: (v.to_pandas() if hasattr(v, "to_pandas") else v) for k, v in splits.items()}
    frames["train"] = _subsample(frames["train"], cfg.train_samples, cfg.seed)
    for split in ("valid", "test"):
        frames[split] = _subsample(frames[split], cfg.eval_samples, cfg.seed + 1)
    history_fields = list(manifest["history_fields"])
    users = pd.concat([f["user_id"].astype(str) for f in frames.values()]).unique()
    user_codes = {u: i for i, u in enumerate(sorted(users))}

    # ---- model ------------------------------------------------------------------------------------
    is_text = cfg.model == "ctrsink"
    if not is_text:
        model, batcher, sink_info = assemble_ids(cfg, items, history_fields)
        backbone, tokenizer, info = None, None, {"name": cfg.model, "family": "id", "text": False}
        item_vectors = None
    elif resuming:
        backbone, tokenizer = backbone_from_run(out_dir)
        info = read_json(out_dir / "run.json")["backbone"]
    else:
        backbone, tokenizer, info = load_backbone(
            cfg, tokenizer_corpus(items, frames["train"], history_fields, cfg)
        )
    if is_text:
        item_vectors = _item_vectors(cfg, items, out_dir / "item_vectors.npy" if resuming else None)
        model, batcher, sink_info = assemble(cfg, backbone, tokenizer, items, history_fields, item_vectors)
    if resuming:
        load_model(model, str(last_dir / CHECKPOINT), strict=True)
    # only now, with data and model loaded without error, is the run directory touched
    if main and not resuming and out_dir.exists():
        for (
            child
        ) in out_dir.iterdir():  # a pre-trained encoder is kept: ensure_encoder reuses it if it matches
            if child.name != "encoder":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    accelerator.wait_for_everyone()
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        _log_to_file(out_dir / "train.log")
        if item_vectors is not None and not resuming:
            np.save(out_dir / "item_vectors.npy", item_vectors)
    if cfg.model == "srp4ctr_lite" and not resuming:
        from ctrsink.pretrain import ensure_encoder

        encoder = ensure_encoder(data_dir, cfg, out_dir) if main else None
        accelerator.wait_for_everyone()
        encoder = encoder if main else ensure_encoder(data_dir, cfg, out_dir)  # others read what main wrote
        if encoder is not None:
            model.load_encoder(encoder)
    run_record = {
        "ctrsink_version": ctrsink.__version__,
        "data_dir": str(data_dir),
        "data_hash": manifest.get("hash"),
        "data_source": manifest.get("source"),
        "history_fields": history_fields,
        "backbone": info,
        **sink_info,
        "seed": cfg.seed,
        "sizes": {k: len(v) for k, v in frames.items()},
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "cost": model_cost(model, batcher, frames["valid"]),
        "behavior_selection": {
            "mode": cfg.behavior_selection,
            "order": "similarity, most similar first"
            if cfg.behavior_selection == "similarity"
            else "chronological, oldest first",
        },
        "versions": {
            "torch": torch.__version__,
            "transformers": _version("transformers"),
            "python": platform.python_version(),
        },
        "processes": accelerator.num_processes,
    }
    if main and not resuming:
        atomic_write_text(out_dir / "config.yaml", config_to_yaml(cfg))
        if is_text:
            backbone.model.config.save_pretrained(out_dir / "backbone")
            tokenizer.save_pretrained(out_dir / "tokenizer")
        atomic_write_json(out_dir / "run.json", run_record)

    datasets = {k: SampleDataset(v, user_codes) for k, v in frames.items()}
    loaders = {
        k: DataLoader(
            ds,
            batch_size=cfg.batch_size if k == "train" else cfg.eval_batch_size,
            shuffle=False,
            collate_fn=batcher,
        )
        for k, ds in datasets.items()
    }
    groups = [
        {"params": model.backbone_parameters(), "lr": cfg.lr},
        {"params": model.new_parameters(), "lr": cfg.head_lr},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(datasets["train"]) // (cfg.batch_size * accelerator.num_processes))
    total_steps = steps_per_epoch * cfg.total_epochs
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    state: dict[str, Any] = {"epoch": 0, "best_auc": -1.0, "best_epoch": -1, "bad_epochs": 0, "history": []}
    if resuming:
        state = json.loads((last_dir / "trainer_state.json").read_text())
        opt_state = torch.load(last_dir / "optimizer.pt", weights_only=True)
        optimizer.load_state_dict(opt_state["optimizer"])
        scheduler.load_state_dict(opt_state["scheduler"])
        log.info("resuming %s after epoch %d", out_dir, state["epoch"])
    model, optimizer, scheduler, train_loader, valid_loader, test_loader = accelerator.prepare(
        model, optimizer, scheduler, loaders["train"], loaders["valid"], loaders["test"]
    )

    # ---- epochs -----------------------------------------------------------------------------------
    for epoch in range(state["epoch"], cfg.total_epochs):
        stage = cfg.stage_of_epoch(epoch)
        set_seed(cfg.seed + epoch)  # same shuffle and dropout whether or not the run was interrupted
        datasets["train"].set_order(
            np.random.default_rng(cfg.seed + epoch).permutation(len(datasets["train"]))
        )
        model.train()
        started, losses = time.time(), []
        bar = tqdm(
            train_loader,
            desc=f"epoch {epoch} [{stage}]",
            disable=not accelerator.is_local_main_process,
            mininterval=5,
        )
        for batch in bar:
            logits = model(batch["fields"], pooling=stage)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), batch["labels"])
            accelerator.backward(loss)
            if cfg.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", refresh=False)
        train_seconds = time.time() - started
        # validation always pools all tokens (spec §6); stage-1 epochs also report sink-only pooling
        poolings = ["all_tokens", "sink_only"] if cfg.two_stage else ["all_tokens"]
        rows = []
        for pooling in poolings:
            m = evaluate_split(model, valid_loader, accelerator, pooling)
            rows.append(
                {
                    "epoch": epoch,
                    "stage": stage,
                    "split": "valid",
                    "pooling": pooling,
                    "train_loss": float(np.mean(losses)) if losses else float("nan"),
                    "train_seconds": train_seconds,
                    **m,
                }
            )
        valid_auc = rows[0]["auc"]
        state["history"].extend(rows)
        log.info(
            "epoch %d [%s] loss %.4f valid auc %.4f logloss %.4f gauc %.4f (%.0fs)",
            epoch,
            stage,
            rows[0]["train_loss"],
            valid_auc,
            rows[0]["logloss"],
            rows[0]["gauc"],
            train_seconds,
        )
        if main:
            with (out_dir / "metrics.jsonl").open("a", encoding="utf-8") as f:
                for r in rows:
                    f.write(json.dumps(r) + "\n")
        improved = valid_auc > state["best_auc"]
        if improved:
            state.update(best_auc=valid_auc, best_epoch=epoch, bad_epochs=0)
            _save_checkpoint(accelerator, model, out_dir / "checkpoint" / "best")
        elif stage == "all_tokens":  # early stopping never cuts stage 1 short
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        stop = cfg.early_stop_patience and state["bad_epochs"] >= cfg.early_stop_patience
        if stop:
            state["epoch"] = cfg.total_epochs
        _save_checkpoint(accelerator, model, last_dir, state, optimizer, scheduler)
        if stop:
            log.info("early stop after epoch %d (best epoch %d)", epoch, state["best_epoch"])
            break

    # ---- test at the best checkpoint -------------------------------------------------------------
    load_model(
        accelerator.unwrap_model(model), str(out_dir / "checkpoint" / "best" / CHECKPOINT), strict=True
    )
    final: dict[str, Any] = {
        "best_epoch": state["best_epoch"],
        "selected_on": "valid auc (all_tokens pooling)",
    }
    for split, loader in (("valid", valid_loader), ("test", test_loader)):
        final[split] = evaluate_split(model, loader, accelerator, "all_tokens")
    if main:
        # the test row is written once, also when a run is resumed after its last epoch (no duplicate rows)
        path = out_dir / "metrics.jsonl"
        rows = [
            r for r in path.read_text(encoding="utf-8").splitlines() if json.loads(r).get("stage") != "best"
        ]
        best = {
            "epoch": state["best_epoch"],
            "stage": "best",
            "split": "test",
            "pooling": "all_tokens",
            **final["test"],
        }
        atomic_write_text(path, "\n".join([*rows, json.dumps(best)]) + "\n")
        atomic_write_json(out_dir / "final_metrics.json", final)
    accelerator.wait_for_everyone()
    return final


def _started_only(out_dir: Path, cfg: Config) -> bool:
    """A run with this config that stopped before its first epoch ended (e.g. while pre-training an encoder)."""
    saved = out_dir / "config.yaml"
    return (
        saved.is_file()
        and not (out_dir / "checkpoint").exists()
        and load_config(saved).to_dict() == cfg.to_dict()
    )


def _item_vectors(cfg: Config, items: pd.DataFrame, cached: Path | None) -> np.ndarray | None:
    """Frozen text embeddings of every item, computed once per run (not per batch: spec weakness #9)."""
    if cfg.behavior_selection != "similarity" and cfg.sink_signal != "similarity":
        return None
    from ctrsink.retrieval import item_vectors

    if cached is not None and cached.is_file():
        return np.load(cached, allow_pickle=False)
    return item_vectors(items["title"].astype(str).tolist())


def _version(pkg: str) -> str:
    from importlib.metadata import version

    try:
        return version(pkg)
    except Exception:
        return "unknown"


def _log_to_file(path: Path) -> None:
    root = logging.getLogger("ctrsink")
    root.setLevel(logging.INFO)
    if not any(isinstance(h, logging.FileHandler) and h.baseFilename == str(path) for h in root.handlers):
        h = logging.FileHandler(path, encoding="utf-8")
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(h)
