"""Background `ctrsink ablate` runs started from the dashboard: the command, its log, its progress.

The ablation runner only knows named variants (`ctrsink.ablate.VARIANTS`), so the sink toggles are matched to the
variant that switches exactly those components. A launch writes `dashboard_launch.json` (command, pid, start
time) and `ablate.log` into the ablation folder; progress is read from the member runs' metrics.jsonl lines, so it
also works for a grid started in another session or from the command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from discover import LAUNCH_FILE

LOG_FILE = "ablate.log"
SINK_DEFAULTS = {
    "use_sink": False,
    "sink_signal": "off",
    "use_cls_token": False,
    "two_stage": False,
    "inter_sink": False,
}
_PROCS: dict[str, subprocess.Popen] = {}  # started by this server process, so their exit codes are known


def _normal(values: dict[str, Any]) -> dict[str, Any]:
    return {k: values.get(k, v) for k, v in SINK_DEFAULTS.items()}


def variant_for(toggles: dict[str, Any]) -> str | None:
    """The named variant that switches exactly these sink components (None when no variant does)."""
    from ctrsink.ablate import VARIANTS

    want = _normal(toggles if toggles.get("use_sink") else {"use_sink": False})
    return next((name for name, values in VARIANTS.items() if _normal(values) == want), None)


def named_combinations() -> list[dict[str, Any]]:
    """Every variant's sink components, for the 'which combinations exist' hint."""
    from ctrsink.ablate import VARIANTS

    return [{"variant": name, **_normal(values)} for name, values in VARIANTS.items()]


def build_command(
    data: str | Path,
    variants: list[str],
    seeds: list[int],
    out: str | Path,
    overrides: list[str] = (),
    config: str | Path | None = None,
) -> list[str]:
    cmd = [sys.executable, "-m", "ctrsink", "ablate", "--data", str(data), "--variants", ",".join(variants)]
    cmd += ["--seeds", ",".join(str(s) for s in seeds), "--out", str(out)]
    if config:
        cmd += ["--config", str(config)]
    for pair in overrides:
        cmd += ["--set", pair]
    return cmd


def check(
    variants: list[str], overrides: list[str], config: str | Path | None = None
) -> tuple[Any, list[Any]]:
    """Validate the base config and every variant before launching (raises CtrSinkError with the key named)."""
    from ctrsink.ablate import variant_config
    from ctrsink.config import load_config

    base = load_config(config, list(overrides))
    return base, [variant_config(base, v) for v in variants]


def launch(
    data: str | Path,
    variants: list[str],
    seeds: list[int],
    out: str | Path,
    overrides: list[str] = (),
    config: str | Path | None = None,
) -> dict[str, Any]:
    """Start `ctrsink ablate` in the background (own session, output to OUT/ablate.log); -> the launch record."""
    out = Path(out).resolve()
    if is_running(out):
        raise RuntimeError(f"an ablation is already running in {out}")
    out.mkdir(parents=True, exist_ok=True)
    cmd = build_command(data, variants, seeds, out, overrides, config)
    env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_DISABLE="1", TOKENIZERS_PARALLELISM="false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    log = out / LOG_FILE
    with open(log, "ab") as fh:
        fh.write(f"$ {' '.join(cmd)}\n".encode())
        fh.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    _PROCS[str(out)] = proc
    record = {
        "command": cmd,
        "pid": proc.pid,
        "started": time.time(),
        "log": str(log),
        "data": str(data),
        "variants": list(variants),
        "seeds": list(seeds),
        "overrides": list(overrides),
        "config": str(config) if config else None,
    }
    (out / LAUNCH_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


def read_launch(out: str | Path) -> dict[str, Any] | None:
    file = Path(out) / LAUNCH_FILE
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int, out: Path) -> bool:
    """A live, non-zombie process whose command line is this ablation (a recycled pid is not)."""
    proc = Path(f"/proc/{pid}")
    try:
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return (
        state != "Z" and "ablate" in cmdline and str(out.resolve()) in cmdline
    )  # the command holds --out OUT


def returncode(out: str | Path) -> int | None:
    proc = _PROCS.get(str(Path(out).resolve()))
    return proc.poll() if proc is not None else None


def cli_process(out: str | Path) -> int | None:
    """The pid of a `ctrsink ablate ... --out OUT` started elsewhere (e.g. from a shell), if one runs."""
    target = Path(out).resolve()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if "ablate" not in args or "--out" not in args:
                continue
            given = Path(args[args.index("--out") + 1])
            if (
                given if given.is_absolute() else Path(os.readlink(proc / "cwd")) / given
            ).resolve() == target:
                return int(proc.name)
        except (OSError, IndexError, ValueError):
            continue
    return None


def is_running(out: str | Path) -> bool:
    out = Path(out)
    proc = _PROCS.get(str(out.resolve()))
    if proc is not None:
        return proc.poll() is None
    record = read_launch(out)
    if record and _pid_alive(int(record["pid"]), out):
        return True
    return cli_process(out) is not None


@dataclass
class Progress:
    state: (
        str  # running | finished | failed | incomplete (not running from here: elsewhere, stopped or crashed)
    )
    fraction: float
    runs_done: int
    runs_total: int
    metric_lines: int
    returncode: int | None
    log_tail: str
    last_change: float = 0.0  # newest mtime among the grid's files (seconds since the epoch)


def progress(out: str | Path) -> Progress:
    """Progress of an ablation folder from its grid and its runs' metrics.jsonl lines."""
    from ctrsink.ablate import run_dir_name, variant_config
    from ctrsink.config import config_from_dict

    out = Path(out)
    grid = {}
    try:
        grid = json.loads((out / "grid.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    record = read_launch(out) or {}
    variants = grid.get("variants") or record.get("variants") or []
    seeds = grid.get("seeds") or record.get("seeds") or []
    base = config_from_dict(grid["base"]) if grid.get("base") else None
    done, lines, parts, newest = 0, 0, [], 0.0
    for v in variants:
        epochs = variant_config(base, v).total_epochs if base is not None else 1
        for s in seeds:
            run = out / "runs" / run_dir_name(v, s)
            rows = []
            for name in ("metrics.jsonl", "train.log"):
                if (run / name).is_file():
                    newest = max(newest, (run / name).stat().st_mtime)
            if (run / "metrics.jsonl").is_file():
                for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
                    try:
                        rows.append(json.loads(line))
                    except ValueError:
                        continue
            lines += len(rows)
            if (run / "final_metrics.json").is_file():
                done += 1
                parts.append(1.0)
            else:
                epochs_done = len({r.get("epoch") for r in rows if r.get("split") == "valid"})
                parts.append(min(epochs_done / max(epochs, 1), 0.99))
    total = len(variants) * len(seeds)
    code = returncode(out)
    table = out / "ablation.parquet"
    started = float(record.get("started", 0))
    finished = table.is_file() and table.stat().st_mtime >= started - 1
    if is_running(out):
        state = "running"
    elif code not in (None, 0):
        state = "failed"
    elif finished:
        state = "finished"
    else:
        state = (
            "incomplete"  # no table and not running from this server: started elsewhere, stopped or crashed
        )
    fraction = 1.0 if state == "finished" else (sum(parts) / total if total else 0.0)
    return Progress(state, fraction, done, total, lines, code, log_tail(out), newest)


def log_tail(out: str | Path, lines: int = 15) -> str:
    file = Path(out) / LOG_FILE
    if not file.is_file():
        return ""
    with open(file, "rb") as fh:
        fh.seek(max(0, file.stat().st_size - 20_000))
        text = fh.read().decode(errors="replace")
    return "\n".join(text.replace("\r", "\n").splitlines()[-lines:])


def wait(out: str | Path, timeout: float = 120.0, poll: float = 0.5) -> int | None:
    """Block until a launch from this process ends (tests); -> its exit code (None on timeout)."""
    proc = _PROCS.get(str(Path(out).resolve()))
    if proc is None:
        return None
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
