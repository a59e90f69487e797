"""SRP4CTR-lite pre-training (FG-BERT-lite cloze, related-models.md §5.1): our reading of the paper's description,
not the paper's code.

Data: the training split only (after the same seeded `train_samples` subset the fine-tuning run uses), never valid or
test. One sequence per training sample would repeat each user's history many times (consecutive samples' histories
are prefixes of each other), so each user contributes the histories of a few cut points: their last training sample
and every `stride`-th one before it (stride = `num_behaviors`, so consecutive cuts share about half their behaviors).
Sequences are built by the same `IDBatcher` as the CTR rows (same behaviors, same ids); sequences with fewer than
two behaviors are dropped (a cloze over one token has no context).

Output folder (written atomically: complete or absent):

    encoder.safetensors   the encoder body (no cloze heads), what `SRP4CTRLite.load_encoder` reads
    encoder.json          id_model config, vocab sizes, data hash, seed, settings, losses per epoch per field
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ctrsink.atomic import atomic_dir, atomic_write_json
from ctrsink.config import Config
from ctrsink.errors import CtrSinkError
from ctrsink.idmodels.srp4ctr import (
    ENCODER_KEYS,
    ENCODER_META,
    ENCODER_WEIGHTS,
    FIELDS,
    MAX_POSITIONS,
    SRP4CTRLite,
    SRPEncoder,
)
from ctrsink.sampling import load_samples

log = logging.getLogger("ctrsink.pretrain")
FORMAT = "srp4ctr-lite-encoder/1"
COLLATE_CHUNK = 4096  # rows per IDBatcher call while building the sequence tensors


def pretrain_rows(train: pd.DataFrame, stride: int) -> pd.DataFrame:
    """Per user: the last training sample and every `stride`-th before it (by time), in (user, time) order."""
    order = train.assign(_user=train["user_id"].astype(str)).sort_values(
        ["_user", "timestamp", "sample_id"], kind="stable"
    )
    from_end = order.groupby("_user", sort=False).cumcount(ascending=False)
    return order[(from_end % stride) == 0].drop(columns="_user").reset_index(drop=True)


def _settings(cfg: Config, data_hash: str | None) -> dict[str, Any]:
    """Everything that decides the encoder's weights: a stored encoder with the same settings can be reused."""
    s = cfg.srp4ctr
    return {
        "id_model": dataclasses.asdict(cfg.id_model),
        "data_hash": data_hash,
        "seed": cfg.seed,
        "train_samples": cfg.train_samples,
        "num_behaviors": cfg.num_behaviors,
        "batch_size": cfg.batch_size,
        "weight_decay": cfg.weight_decay,
        "max_grad_norm": cfg.max_grad_norm,
        "mask_ratio": s.mask_ratio,
        "pretrain_epochs": s.pretrain_epochs,
        "pretrain_lr": s.pretrain_lr,
        "stride": cfg.num_behaviors,
    }


def _sequences(
    frame: pd.DataFrame, items: pd.DataFrame, cfg: Config, history_fields: list[str]
) -> tuple[dict[str, torch.Tensor], Any]:
    """Encoder input tensors (N, L) of the pre-training sequences, and the batcher (for its vocab)."""
    from ctrsink.idview import IDBatcher

    batcher = IDBatcher(items, cfg, history_fields)
    if batcher.max_len > MAX_POSITIONS:
        raise CtrSinkError(
            f"config option 'num_behaviors': {batcher.max_len} history slots exceed SRP4CTR-lite's "
            f"{MAX_POSITIONS} positions"
        )
    rows = pretrain_rows(frame, cfg.num_behaviors)
    kept = np.zeros(len(rows), dtype=np.int64)  # behaviors the batcher keeps per sequence
    for f in history_fields:
        kept += rows[f"{f}_item_idx"].map(len).clip(upper=cfg.num_behaviors).to_numpy(dtype=np.int64)
    rows = rows[kept >= 2].to_dict("records")
    parts = [batcher(rows[i : i + COLLATE_CHUNK])["fields"] for i in range(0, len(rows), COLLATE_CHUNK)]
    if not parts:
        raise CtrSinkError("the training split has no history with two or more behaviors to pre-train on")
    return {k: torch.cat([p[k] for p in parts]) for k in ENCODER_KEYS}, batcher


def pretrain(
    data_dir: str | Path, cfg: Config, out_dir: str | Path, overwrite: bool = False
) -> dict[str, Any]:
    """Pre-train an SRPEncoder on the training split's histories; write encoder.safetensors + encoder.json."""
    from safetensors.torch import save_file

    data_dir, out_dir = Path(data_dir).resolve(), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise CtrSinkError(f"output directory {out_dir} is not empty; pass --overwrite to replace it")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    # the fine-tuning run's subset of the training split, so pre-training never sees more
    samples = load_samples(data_dir, cfg, splits=("train",))
    train, items, manifest = samples.frames["train"], samples.items, samples.manifest
    history_fields = samples.history_fields
    seqs, batcher = _sequences(train, items, cfg, history_fields)
    n = len(seqs["hist_mask"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    settings = _settings(cfg, manifest.get("hash"))
    log.info("pre-training the SRP4CTR-lite encoder on %d sequences of %d training samples", n, len(train))

    losses: list[dict[str, Any]] = []
    started = time.time()
    with torch.random.fork_rng():  # seeded init and dropout without moving the caller's RNG
        torch.manual_seed(cfg.seed)
        encoder = SRPEncoder(cfg, batcher.vocab).to(device)
        optimizer = torch.optim.AdamW(
            encoder.parameters(), lr=cfg.srp4ctr.pretrain_lr, weight_decay=cfg.weight_decay
        )
        generator = torch.Generator().manual_seed(cfg.seed)  # masking mode and positions
        encoder.train()
        for epoch in range(cfg.srp4ctr.pretrain_epochs):
            order = torch.from_numpy(np.random.default_rng(cfg.seed + epoch).permutation(n))
            seen: dict[str, list[float]] = {k: [] for k in FIELDS}
            steps = 0
            for start in range(0, n, cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                fields = {k: v[idx].to(device) for k, v in seqs.items()}
                parts = encoder.pretrain_losses(fields, generator)
                loss = sum(parts.values())
                optimizer.zero_grad()
                loss.backward()
                if cfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(encoder.parameters(), cfg.max_grad_norm)
                optimizer.step()
                steps += 1
                for k, v in parts.items():
                    seen[k].append(v.item())
            row: dict[str, Any] = {"epoch": epoch, "steps": steps}
            row.update({k: float(np.mean(v)) if v else None for k, v in seen.items()})
            # sum of the field means: steps alternate masking modes, so a mean of step losses would be noise
            row["loss"] = float(sum(v for k, v in row.items() if k in FIELDS and v is not None))
            losses.append(row)
            log.info("pretrain epoch %d loss %.4f %s", epoch, row["loss"], {k: row[k] for k in FIELDS})

    record = {
        "format": FORMAT,
        **settings,
        "vocab": batcher.vocab.to_dict(),
        "data_dir": str(data_dir),
        "history_fields": history_fields,
        "max_positions": MAX_POSITIONS,
        "sequences": n,
        "train_samples_used": len(train),
        "losses": losses,  # per epoch: mean loss per field (over the steps that masked it) and their sum
        "seconds": round(time.time() - started, 3),
        "note": "SRP4CTR-lite (our reading of the paper's description), not the paper's code",
    }
    with atomic_dir(out_dir) as tmp:
        body = {k: v.detach().cpu().contiguous() for k, v in encoder.body_state_dict().items()}
        save_file(body, str(tmp / ENCODER_WEIGHTS), metadata={"format": FORMAT})
        atomic_write_json(tmp / ENCODER_META, record)
    return record


def ensure_encoder(data_dir: str | Path, cfg: Config, run_dir: str | Path) -> Path | None:
    """The encoder folder a fine-tuning run loads, or None for `srp4ctr.init=random`.

    `srp4ctr.encoder` given: that folder (it must hold encoder.safetensors). Otherwise pre-train into
    RUN_DIR/encoder, reusing a complete one written with the same settings (a rerun does not pre-train again).
    """
    from ctrsink.data.manifest import read_manifest

    s = cfg.srp4ctr
    if s.init == "random":
        return None
    data_dir = Path(data_dir)
    data_hash = read_manifest(data_dir).get("hash")
    if s.encoder:
        folder = Path(s.encoder)
        if not (folder / ENCODER_WEIGHTS).is_file():
            raise CtrSinkError(
                f"config option 'srp4ctr.encoder': {folder} holds no {ENCODER_WEIGHTS} "
                "(create it with `ctrsink pretrain`)"
            )
        stored = _read_meta(folder)
        if stored.get("data_hash") not in (None, data_hash):
            log.warning("encoder %s was pre-trained on other data (hash %s)", folder, stored.get("data_hash"))
        return folder
    folder = Path(run_dir) / "encoder"
    if (folder / ENCODER_WEIGHTS).is_file():
        stored = _read_meta(folder)
        want = _settings(cfg, data_hash)
        if all(stored.get(k) == v for k, v in want.items()):
            log.info("reusing the pre-trained encoder in %s", folder)
            return folder
        log.info("%s was pre-trained with other settings; pre-training again", folder)
    pretrain(data_dir, cfg, folder, overwrite=True)
    return folder


def prepare_encoder(
    model: SRP4CTRLite, cfg: Config, data_dir: str | Path, run_dir: str | Path
) -> Path | None:
    """SRP4CTR-lite's pre-step (`ctrsink.idmodels.registry`): the encoder `ensure_encoder` finds or pre-trains,
    loaded into the fine-tuning model; None (nothing loaded) for `srp4ctr.init=random`."""
    folder = ensure_encoder(data_dir, cfg, run_dir)
    if folder is not None:
        model.load_encoder(folder)
    return folder


def _read_meta(folder: Path) -> dict[str, Any]:
    import json

    path = folder / ENCODER_META
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise CtrSinkError(f"{path}: not valid JSON; pre-train the encoder again") from None
