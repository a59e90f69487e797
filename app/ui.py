"""Pieces every page shares: the root folder, empty states with the command to run, per-artifact errors."""

from __future__ import annotations

import argparse
import os
import shlex
from collections import Counter
from pathlib import Path
from typing import Any

import discover
import streamlit as st

DEFAULT_ROOT = "runs/demo"
ROOT_ENV = "CTRSINK_DASHBOARD_ROOT"
REPO = Path(__file__).resolve().parents[1]


def init_root(argv: list[str]) -> None:
    """Session root from `-- --root DIR` (then $CTRSINK_DASHBOARD_ROOT, then runs/demo), set once per session."""
    if "root" in st.session_state:
        return
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--root", default=os.environ.get(ROOT_ENV, DEFAULT_ROOT))
    args, _ = parser.parse_known_args(argv)
    st.session_state["root"] = args.root


def root() -> Path:
    raw = Path(str(st.session_state.get("root") or DEFAULT_ROOT)).expanduser()
    if not raw.is_absolute() and not raw.exists() and (REPO / raw).exists():
        raw = REPO / raw  # started from elsewhere: the default is relative to the repository
    return raw


def found() -> discover.Found:
    return discover.find(str(root()))


def sidebar() -> None:
    with st.sidebar:
        st.text_input("Root folder", key="root", help="Runs, ablations and analyses are searched below it.")
        f = found()
        if not f.exists:
            st.warning(f"{root()} does not exist")
        else:
            st.caption(
                f"{len(f.standalone_runs())} runs · {len(f.ablations)} ablations · {len(f.analyses)} analyses · "
                f"{len(f.data)} sample sets"
            )
        if st.button("Rescan", help="Look for new folders now (otherwise every few seconds)"):
            discover.find.clear()


def q(path: Path | str) -> str:
    return shlex.quote(str(path))


def empty(message: str, command: str) -> None:
    """An empty state: what is missing and the command that creates it."""
    st.info(message)
    st.code(command, language="bash")


def no_runs() -> None:
    r = root()
    where = f"{r} does not exist" if not r.exists() else f"No runs found under {r}"
    empty(
        f"{where}. Train the demo pair (baseline and CTR-Sink) on the bundled sample data, or your own run:",
        f"ctrsink demo --out {q(r)}\n# or\nctrsink train --data DATA_DIR --out {q(r / 'my_run')}",
    )


def capture_command(f: discover.Found) -> str:
    runs = f.standalone_runs() or f.runs
    run = runs[0].path if runs else root() / "RUN_DIR"
    name = run.name if runs else "NAME"
    return (
        f"sinkviz capture --run {q(run)} --out {q(root() / 'analysis' / name)} --samples 256 --full-maps 4\n"
        f"sinkviz attribute --run {q(run)} --out {q(root() / 'analysis' / name)} --samples 32"
    )


def no_analysis() -> None:
    f = found()
    empty(
        f"No attention analysis found under {root()}. Capture one from a trained run "
        "(attributions are optional; the Sample explorer shows them when present):",
        capture_command(f),
    )


def artifact_error(name: str, exc: BaseException | str, command: str | None = None) -> None:
    """One broken artifact: its name and the error, without a traceback; the page carries on."""
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    st.error(f"**{name}** could not be read: {text}")
    if command:
        st.code(command, language="bash")


def load_analyses(f: discover.Found, show_errors: bool = True) -> dict[str, Any]:
    """{name: Analysis} of every readable analysis; unreadable ones are reported (unknown schema with the fix)."""
    from sinkviz import AnalysisError

    out = {}
    for art in f.analyses:
        try:
            if art.error:
                raise AnalysisError(art.error)
            out[art.name] = discover.load_analysis(art.path)
        except AnalysisError as exc:
            if show_errors:
                schema = "schema version" in str(exc)
                artifact_error(
                    art.name,
                    str(exc),
                    capture_command(f).splitlines()[0] if schema else None,
                )
        except Exception as exc:  # a damaged Parquet or safetensors file: report it, keep the page alive
            if show_errors:
                artifact_error(art.name, exc)
    return out


def analysis_labels(analyses: dict[str, Any]) -> dict[str, str]:
    """A unique, readable label per analysis: its run (relative to the root when inside it) and its kind."""
    base = root().resolve()
    labels = {}
    for name, analysis in analyses.items():
        run = Path(str(analysis.manifest.get("run_dir", "")))
        try:
            text = run.resolve().relative_to(base).as_posix()
        except ValueError:
            text = run.name or name
        kind = "CTR-Sink" if analysis.manifest.get("use_sink") else "baseline"
        labels[name] = f"{text} ({kind})"
    counts = Counter(labels.values())
    return {n: (f"{v} · {n}" if counts[v] > 1 else v) for n, v in labels.items()}


def default_pair(analyses: dict[str, Any]) -> list[str]:
    """A baseline and a CTR-Sink analysis when both exist (else the first two)."""
    base = [n for n, a in analyses.items() if not a.manifest.get("use_sink")]
    sink = [n for n, a in analyses.items() if a.manifest.get("use_sink")]
    if base and sink:
        return [base[0], sink[0]]
    return list(analyses)[:2]


def plot(fig: Any, key: str | None = None) -> None:
    st.plotly_chart(fig, width="stretch", key=key)


def require_analyses() -> tuple[Any, dict[str, Any]]:
    """(discovered folders, loaded analyses) for a page that needs analyses; stops the page with a hint otherwise."""
    f = found()
    analyses = load_analyses(f)
    if not analyses:
        if not f.analyses:
            no_analysis()
        st.stop()
    return f, analyses
