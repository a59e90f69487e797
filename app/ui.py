"""Pieces every page shares: the fixed root and the folder chosen under it, refusals, empty states with the
command to run, per-artifact errors."""

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
FOLDER_KEY = "folder"
FOLDER_PENDING = (
    "folder_pending"  # a folder to switch to on the next run (the widget's value is set before it)
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """`-- --root DIR [--read-only]` (the root defaults to $CTRSINK_DASHBOARD_ROOT, then runs/demo)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--root", default=os.environ.get(ROOT_ENV, DEFAULT_ROOT))
    parser.add_argument("--read-only", action="store_true")
    args, _ = parser.parse_known_args(argv)
    return args


def init_root(argv: list[str]) -> None:
    """The session's root and read-only flag from the server's command line, set once per session.

    Neither is a widget, so nothing a browser sends can change them; tests preset them in session state.
    """
    args = parse_args(argv)
    st.session_state.setdefault("root", args.root)
    # --read-only on the command line wins over anything in the session
    st.session_state["read_only"] = bool(args.read_only or st.session_state.get("read_only"))


def root() -> Path:
    """The fixed root, resolved: every file the app opens must lie under it."""
    raw = Path(str(st.session_state.get("root") or DEFAULT_ROOT)).expanduser()
    if not raw.is_absolute() and not raw.exists() and (REPO / raw).exists():
        raw = REPO / raw  # started from elsewhere: the default is relative to the repository
    return raw.resolve()


def read_only() -> bool:
    return bool(st.session_state.get("read_only"))


def folder() -> Path:
    """The folder the pages scan: the sidebar's choice among the folders under the root (the root by default)."""
    chosen = str(st.session_state.get(FOLDER_KEY) or ".")
    try:
        return discover.confine(root(), root() / chosen)
    except discover.OutsideRoot:
        return root()


def found() -> discover.Found:
    return discover.find(str(folder()), str(root()))


def _check_folder(choices: list[str]) -> str | None:
    """Resets a folder choice that is not one of `choices` to the root; -> the refusal to show, if any."""
    if FOLDER_PENDING in st.session_state:
        st.session_state[FOLDER_KEY] = st.session_state.pop(FOLDER_PENDING)
    chosen = str(st.session_state.get(FOLDER_KEY, "."))
    if chosen in choices:
        return None
    st.session_state[FOLDER_KEY] = "."
    try:
        discover.confine(root(), root() / chosen)
    except discover.OutsideRoot as exc:
        return f"Folder {chosen!r}: {exc}; showing the root instead."
    return f"Folder {chosen!r} is not a folder under the root {root()}; showing the root instead."


def sidebar() -> None:
    refusal = None
    with st.sidebar:
        base = root()
        st.caption(f"Root: `{base}`" + (" · read-only" if read_only() else ""))
        choices = discover.subfolders(base)
        refusal = _check_folder(choices)
        st.selectbox(
            "Folder",
            choices,
            key=FOLDER_KEY,
            help="Runs, ablations and analyses are searched below this folder. The root is fixed when the "
            "dashboard starts (`-- --root DIR`).",
        )
        f = found()
        if not f.exists:
            st.warning(f"{folder()} does not exist")
        else:
            st.caption(
                f"{len(f.standalone_runs())} runs · {len(f.ablations)} ablations · {len(f.analyses)} analyses · "
                f"{len(f.data)} sample sets"
            )
        if st.button("Rescan", help="Look for new folders now (otherwise every few seconds)"):
            discover.find.clear()
    st.session_state["_refusals"] = [refusal] if refusal else []


def refusals() -> None:
    """Refused paths on the page itself: a folder choice outside the root, entries leading outside it."""
    for message in st.session_state.get("_refusals", []):
        st.error(message)
    for name, message in found().refused:
        st.error(f"**{name}** {message}")


def q(path: Path | str) -> str:
    return shlex.quote(str(path))


def empty(message: str, command: str) -> None:
    """An empty state: what is missing and the command that creates it."""
    st.info(message)
    st.code(command, language="bash")


def no_runs() -> None:
    r = folder()
    where = f"{r} does not exist" if not r.exists() else f"No runs found under {r}"
    empty(
        f"{where}. Train the demo pair (baseline and CTR-Sink) on the bundled sample data, or your own run:",
        f"ctrsink demo --out {q(r)}\n# or\nctrsink train --data DATA_DIR --out {q(r / 'my_run')}",
    )


def capture_command(f: discover.Found) -> str:
    runs = f.standalone_runs() or f.runs
    run = runs[0].path if runs else folder() / "RUN_DIR"
    out = run / "analysis" if runs else folder() / "RUN_DIR" / "analysis"
    return (
        f"sinkviz capture --run {q(run)} --out {q(out)} --samples 256 --full-maps 4\n"
        f"sinkviz attribute --run {q(run)} --out {q(out)} --samples 32"
    )


def no_analysis() -> None:
    f = found()
    empty(
        f"No attention analysis found under {folder()}. Capture one from a trained run "
        "(attributions are optional; the Sample explorer shows them when present):",
        capture_command(f),
    )


def artifact_error(name: str, exc: BaseException | str, command: str | None = None) -> None:
    """One broken (or refused) artifact: its name and the error, without a traceback; the page carries on."""
    if isinstance(exc, discover.OutsideRoot):
        st.error(f"**{name}** {exc}")
        return
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
            out[art.name] = discover.load_analysis(root(), art.path)
        except AnalysisError as exc:
            if show_errors:
                schema = "schema version" in str(exc)
                artifact_error(art.name, str(exc), capture_command(f).splitlines()[0] if schema else None)
        except (
            Exception
        ) as exc:  # a damaged Parquet or safetensors file, a refused path: report, keep the page
            if show_errors:
                artifact_error(art.name, exc)
    return out


def run_label(run: Path | None, fallback: str) -> str:
    """A run's folder relative to the root (its name when elsewhere)."""
    if run is None:
        return fallback
    try:
        return Path(run).resolve().relative_to(root()).as_posix()
    except ValueError:
        return Path(run).name or fallback


def analysis_run(f: discover.Found, name: str) -> discover.Artifact | None:
    return next((a for a in f.analyses + f.id_rows if a.name == name), None)


def analysis_labels(f: discover.Found, analyses: dict[str, Any]) -> dict[str, str]:
    """A unique, readable label per analysis: the run it belongs to (relative to the root) and its kind."""
    labels = {}
    for name, analysis in analyses.items():
        art = analysis_run(f, name)
        kind = "CTR-Sink" if analysis.manifest.get("use_sink") else "baseline"
        labels[name] = f"{run_label(art.run if art else None, name)} ({kind})"
    counts = Counter(labels.values())
    return {n: (f"{v} · {n}" if counts[v] > 1 else v) for n, v in labels.items()}


def default_pair(analyses: dict[str, Any]) -> list[str]:
    """A baseline and a CTR-Sink analysis when both exist (else the first two)."""
    base = [n for n, a in analyses.items() if not a.manifest.get("use_sink")]
    sink = [n for n, a in analyses.items() if a.manifest.get("use_sink")]
    if base and sink:
        return [base[0], sink[0]]
    return list(analyses)[:2]


# ---- per-epoch analyses (`sinkviz capture --every-epoch`): one picker entry per series, an epoch slider ---------


def epoch_series(f: discover.Found, analyses: dict[str, Any]) -> dict[str, dict[int, str]]:
    """{representative: {epoch: analysis name}} for every series of loaded per-epoch analyses whose manifests
    name their checkpoint epoch{k}. The representative is the last epoch's analysis (the trained model)."""
    out = {}
    for group in discover.epoch_series([a for a in f.analyses if a.name in analyses]):
        members = {
            k: a.name for k, a in group.items() if analyses[a.name].manifest.get("checkpoint") == f"epoch{k}"
        }
        if len(members) > 1:
            out[members[max(members)]] = members
    return out


def pickable(analyses: dict[str, Any], series: dict[str, dict[int, str]]) -> dict[str, Any]:
    """The analyses a picker offers: a series appears once, by its representative."""
    hidden = {n for rep, members in series.items() for n in members.values() if n != rep}
    return {n: a for n, a in analyses.items() if n not in hidden}


def series_labels(
    f: discover.Found, offered: dict[str, Any], series: dict[str, dict[int, str]]
) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, picker labels) of the pickable analyses: `analysis_labels`, a series named by its folder rather
    than its last member; the picker's also say which epochs a series spans (the slider picks one)."""
    labels = analysis_labels(f, offered)
    for rep in series:
        if rep in labels and labels[rep].endswith(f" · {rep}"):
            labels[rep] = labels[rep].removesuffix(rep) + Path(rep).parent.as_posix()
    picker = {
        n: f"{v} · epochs {min(series[n])}–{max(series[n])}" if n in series else v for n, v in labels.items()
    }
    return labels, picker


def epoch_slider(series: list[dict[int, str]], key: str) -> int | None:
    """One slider over the epochs of the given series (None when there are none); starts at the last epoch."""
    epochs = sorted({k for members in series for k in members})
    if not epochs:
        return None
    if key in st.session_state and st.session_state[key] not in epochs:
        del st.session_state[key]  # another set of series was chosen: start over at its last epoch
    return st.select_slider(
        "Epoch",
        options=epochs,
        value=epochs[-1],
        format_func=lambda k: f"epoch {k}" + (" (before training)" if k == 0 else ""),
        key=key,
        help="Analyses captured from the checkpoint after each epoch (`sinkviz capture --every-epoch`); "
        "epoch 0 holds the weights before the first step.",
    )


def at_epoch(members: dict[int, str], epoch: int) -> str:
    """The series member of `epoch`; a series without it shows its latest epoch before (else its first)."""
    earlier = [k for k in members if k <= epoch]
    return members[max(earlier) if earlier else min(members)]


def shown_at_epoch(
    picked: list[str], series: dict[str, dict[int, str]], epoch: int | None, labels: dict[str, str]
) -> dict[str, str]:
    """{analysis to show: label} for the picked ones: a series stands for its member at `epoch`, labelled with the
    member's epoch; `labels` are the picked analyses' labels without the span of epochs."""
    out = {}
    for n in picked:
        if n in series and epoch is not None:
            member = at_epoch(series[n], epoch)
            k = next(k for k, m in series[n].items() if m == member)
            out[member] = f"{labels[n]} · epoch {k}"
        else:
            out[n] = labels[n]
    return out


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
