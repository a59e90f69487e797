"""Background `ctrsink ablate` runs started from the dashboard: the command, its log, its progress.

The ablation runner only knows named variants (`ctrsink.api.variants()`), so the sink toggles are matched to the
variant that switches exactly those components. Nothing typed on the page reaches the command line as text: the
output folder is a new plain folder name under the root, the data and base config are folders found under the root,
overrides pass `ctrsink.api.validated_overrides` (known keys, typed values), and the command is a list (no shell).
A launch writes `dashboard_launch.json` (command, pid, start time) and `ablate.log` into the ablation folder;
progress is read from the member runs' metrics.jsonl lines, so it also works for a grid started elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import discover
from discover import LAUNCH_FILE

from ctrsink import api

LOG_FILE = "ablate.log"
FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}")
SINK_DEFAULTS = {
    "use_sink": False,
    "sink_signal": "off",
    "use_cls_token": False,
    "two_stage": False,
    "inter_sink": False,
    "signal_carrier": "sink",  # the control variants (signal on separators, signal as text) set these two
    "behavior_signal_text": "off",
}
_PROCS: dict[str, subprocess.Popen] = {}  # started by this server process, so their exit codes are known


def _normal(values: dict[str, Any]) -> dict[str, Any]:
    return {k: values.get(k, v) for k, v in SINK_DEFAULTS.items()}


def variant_for(toggles: dict[str, Any]) -> str | None:
    """The named variant that switches exactly these sink components (None when no variant does)."""
    want = _normal(toggles if toggles.get("use_sink") else {"use_sink": False})
    return next((name for name, values in api.variants().items() if _normal(values) == want), None)


def named_combinations() -> list[dict[str, Any]]:
    """Every variant's sink components, for the 'which combinations exist' hint."""
    return [{"variant": name, **_normal(values)} for name, values in api.variants().items()]


def output_folder(root: str | Path, name: str) -> Path:
    """ROOT/NAME for a new ablation: a plain folder name (no separators, no '..') that does not exist yet."""
    name = str(name).strip()
    if not FOLDER_NAME.fullmatch(name) or ".." in name:
        raise ValueError(
            f"output folder {name!r}: give a new folder name of letters, digits, '_', '-' or '.' (no '/' or '..')"
        )
    out = discover.confine(root, Path(root) / name)
    if out.exists() or out.is_symlink():
        raise ValueError(f"output folder {name!r} already exists under the root; choose a new name")
    return out


def build_command(
    root: str | Path,
    data: str | Path,
    variants: list[str],
    seeds: list[int],
    name: str,
    overrides: list[str] = (),
    config: str | Path | None = None,
) -> list[str]:
    """The validated command of a launch (raises ValueError or CtrSinkError naming the part that is refused)."""
    data = discover.confine_data(root, data)
    config = discover.confine(root, config) if config else None
    out = output_folder(root, name)
    return [
        sys.executable,
        "-m",
        "ctrsink",
        *api.ablation_args(data, variants, seeds, out, overrides, config),
    ]


def launch(
    root: str | Path,
    data: str | Path,
    variants: list[str],
    seeds: list[int],
    name: str,
    overrides: list[str] = (),
    config: str | Path | None = None,
) -> dict[str, Any]:
    """Start `ctrsink ablate` in the background (own session, output to ROOT/NAME/ablate.log); -> the record."""
    cmd = build_command(root, data, variants, seeds, name, overrides, config)
    out = Path(cmd[cmd.index("--out") + 1])
    out.mkdir()  # a new folder: an existing one was refused above
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
        "data": cmd[cmd.index("--data") + 1],
        "variants": list(variants),
        "seeds": [int(s) for s in seeds],
        "overrides": [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"],
        "config": cmd[cmd.index("--config") + 1] if "--config" in cmd else None,
    }
    (out / LAUNCH_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


def read_launch(root: str | Path, out: str | Path) -> dict[str, Any] | None:
    """The launch record of an ablation folder under the root (None when there is none or it is unreadable)."""
    try:
        record = discover.read_json(root, Path(out) / LAUNCH_FILE)
    except (OSError, ValueError):  # OutsideRoot is a ValueError: a record leading outside is no record
        return None
    return record if isinstance(record, dict) else None


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


def is_running(root: str | Path, out: str | Path) -> bool:
    out = Path(out)
    proc = _PROCS.get(str(out.resolve()))
    if proc is not None:
        return proc.poll() is None
    record = read_launch(root, out) or {}
    pid = record.get("pid")
    if isinstance(pid, int) and _pid_alive(pid, out):
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


def progress(root: str | Path, out: str | Path) -> Progress:
    """Progress of an ablation folder under the root from its grid and its runs' metrics.jsonl lines."""
    out = discover.confine(root, out)
    try:
        grid = discover.read_grid(root, out)
    except (OSError, ValueError):
        grid = {}
    record = read_launch(root, out) or {}
    variants = grid.get("variants") or record.get("variants") or []
    seeds = grid.get("seeds") or record.get("seeds") or []
    base = api.config_from_record(grid["base"]) if grid.get("base") else None
    done, lines, parts, newest = 0, 0, [], 0.0
    for v in variants:
        epochs = api.variant_config(base, v).total_epochs if base is not None else 1
        for s in seeds:
            run = discover.confine(root, out / "runs" / api.run_dir_name(v, s))
            for name in (api.METRICS_FILE, api.TRAIN_LOG):
                if (run / name).is_file():
                    newest = max(newest, (run / name).stat().st_mtime)
            # a line being written may be half there: skipped until the next poll
            rows = discover.metric_lines(discover.confine(root, run / api.METRICS_FILE), strict=False)
            lines += len(rows)
            if (run / api.FINAL_METRICS_FILE).is_file():
                done += 1
                parts.append(1.0)
            else:
                epochs_done = len({r.get("epoch") for r in rows if r.get("split") == "valid"})
                parts.append(min(epochs_done / max(epochs, 1), 0.99))
    total = len(variants) * len(seeds)
    code = returncode(out)
    table = out / discover.ABLATION_FILE
    started = float(record.get("started", 0))
    finished = table.is_file() and table.stat().st_mtime >= started - 1
    if is_running(root, out):
        state = "running"
    elif code not in (None, 0):
        state = "failed"
    elif finished:
        state = "finished"
    else:  # no table and not running from this server: started elsewhere, stopped or crashed
        state = "incomplete"
    fraction = 1.0 if state == "finished" else (sum(parts) / total if total else 0.0)
    return Progress(state, fraction, done, total, lines, code, log_tail(root, out), newest)


def log_tail(root: str | Path, out: str | Path, lines: int = 15) -> str:
    file = discover.confine(root, Path(out) / LOG_FILE)
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
