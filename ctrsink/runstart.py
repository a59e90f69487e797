"""Starting or resuming a run, the steps `ctrsink.train.train` takes before its first epoch: make the Accelerator,
check the output folder, open the run directory, run the model's pre-step, write the run record. Each step goes
through the model family (`ctrsink.family`), so none knows which model it starts.
"""

from __future__ import annotations

import logging
import platform
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator

import ctrsink
from ctrsink.atomic import atomic_write_json, atomic_write_text
from ctrsink.config import Config, config_to_yaml, load_config
from ctrsink.errors import CtrSinkError
from ctrsink.family import Built, ModelFamily
from ctrsink.sampling import Samples


def make_accelerator(cfg: Config, cpu: bool = False) -> Accelerator:
    """The run's Accelerator. Precision is ctrsink's own autocast (`CTRModel.forward`) and fp16 gradient scaler,
    the same code on CPU and GPU, so Accelerate's mixed precision stays off. The schedule is stepped once per
    optimizer step: Accelerate would step it once per process, and `make_loop` already counts steps per process."""
    accelerator = Accelerator(
        cpu=cpu or not torch.cuda.is_available(),
        mixed_precision="no",
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        step_scheduler_with_optimizer=False,
    )
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    return accelerator


def check_out_dir(out_dir: Path, cfg: Config, overwrite: bool) -> bool:
    """Whether `out_dir` holds an unfinished run to resume; refuses a finished run, a different config or a
    foreign non-empty folder unless `overwrite`."""
    resuming = (out_dir / "checkpoint" / "last" / "trainer_state.json").is_file() and not overwrite
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
    return resuming


def _started_only(out_dir: Path, cfg: Config) -> bool:
    """A run with this config that stopped before its first epoch ended (e.g. while pre-training an encoder)."""
    saved = out_dir / "config.yaml"
    return (
        saved.is_file()
        and not (out_dir / "checkpoint").exists()
        and load_config(saved).to_dict() == cfg.to_dict()
    )


def open_run_dir(
    accelerator: Accelerator, family: ModelFamily, cfg: Config, out_dir: Path, resuming: bool
) -> None:
    """Clear what a new run replaces, log to RUN/train.log and, for a new run, write its config first: a run
    stopped before its first epoch ended (e.g. in a pre-step) then restarts with the same command."""
    if accelerator.is_main_process and not resuming and out_dir.exists():
        for child in out_dir.iterdir():
            if child.name not in family.kept_on_restart:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        _log_to_file(out_dir / "train.log")
        if not resuming:
            atomic_write_text(out_dir / "config.yaml", config_to_yaml(cfg))


def prepare_model(
    accelerator: Accelerator, family: ModelFamily, built: Built, cfg: Config, data_dir: Path, out_dir: Path
) -> None:
    """The pre-step the model asks for (SRP4CTR-lite: pre-train or reuse its encoder): the main process runs it
    first and writes what it makes; the others then run it too and read what main wrote."""
    if accelerator.is_main_process:
        family.prepare(built, cfg, data_dir, out_dir)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        family.prepare(built, cfg, data_dir, out_dir)


def write_run_record(
    accelerator: Accelerator,
    family: ModelFamily,
    built: Built,
    cfg: Config,
    samples: Samples,
    data_dir: Path,
    out_dir: Path,
) -> None:
    """RUN/run.json (data, model, cost, versions) and what the family needs to rebuild the model."""
    if not accelerator.is_main_process:
        return
    record = {
        "ctrsink_version": ctrsink.__version__,
        "data_dir": str(data_dir),
        "data_hash": samples.manifest.get("hash"),
        "data_source": samples.manifest.get("source"),
        "history_fields": samples.history_fields,
        **built.record,
        "seed": cfg.seed,
        "sizes": {k: len(v) for k, v in samples.frames.items()},
        "parameters": int(sum(p.numel() for p in built.model.parameters())),
        "cost": family.cost(built, samples.frames["valid"]),
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
    family.save(built, out_dir)
    atomic_write_json(out_dir / "run.json", record)


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
