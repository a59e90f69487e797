"""Ablations: AUC, LogLoss and gAUC per variant and stage with intervals over seeds, differences to the baseline,
and sink-component toggles that start a new `ctrsink ablate` in the background."""

from __future__ import annotations

import re
import time
from pathlib import Path

import charts
import discover
import jobs
import pandas as pd
import streamlit as st
import ui

from ctrsink import api

st.title("Ablations")
f = ui.found()
root = ui.root()

# ---- choose an ablation ------------------------------------------------------------------------------------
pending = st.session_state.pop("abl_pending_select", None)
names = [a.name for a in f.ablations]
if pending in names:
    st.session_state["abl_selected"] = pending
if not names:
    data_hint = f.data[0].path if f.data else root / "data"
    ui.empty(
        f"No ablation found under {ui.folder()}. Start one below, or from the command line:",
        f"ctrsink ablate --data {ui.q(data_hint)} --variants baseline,sink,sink+signal,full --seeds 1,2,3 "
        f"--out {ui.q(root / 'ablation')}",
    )
else:
    # default: one running from here, else the first with results
    running = [a.name for a in f.ablations if jobs.is_running(root, a.path)]
    done = [a.name for a in f.ablations if (a.path / discover.ABLATION_FILE).is_file()]
    if st.session_state.get("abl_selected") not in names:
        st.session_state["abl_selected"] = (running or done or names)[0]
    name = st.selectbox("Ablation", names, key="abl_selected")
    art = next(a for a in f.ablations if a.name == name)
    try:
        status = jobs.progress(root, art.path)
    except ValueError as exc:  # a grid or run leading outside the root
        ui.artifact_error(art.name, exc)
        st.stop()

    def show_progress(p: jobs.Progress) -> None:
        text = (
            f"{p.state}: {p.runs_done}/{p.runs_total} runs finished, {p.metric_lines} metric lines "
            f"({p.fraction:.0%})"
        )
        st.progress(min(max(p.fraction, 0.0), 1.0), text=text)
        if p.log_tail:
            with st.expander("Log (ablate.log)", expanded=p.state != "finished"):
                st.code(p.log_tail, language="text")

    if status.state == "running":

        @st.fragment(run_every=2.0)
        def live() -> None:
            p = jobs.progress(root, art.path)
            show_progress(p)
            if p.state != "running":  # finished (or failed): redraw the whole page with the results
                discover.find.clear()
                st.rerun(scope="app")

        live()
    elif status.state == "failed":
        st.error(f"The ablation in {art.name} failed (exit code {status.returncode}); the log's last lines:")
        show_progress(status)
    elif (art.path / jobs.LOG_FILE).is_file() or status.state != "finished":
        show_progress(status)

    try:
        table = discover.load_ablation(root, art.path)
    except Exception as exc:
        ui.artifact_error(art.name, exc)
        table = None
    if table is None:
        if status.state != "running":
            ago = time.time() - status.last_change if status.last_change else None
            when = f" (last change {charts.format_gap(ago / 3600)} ago)" if ago is not None else ""
            st.info(
                f"{art.name} has no ablation.parquet yet{when} and no process is writing it: it stopped. Resume "
                "it with the same command (finished runs are kept):"
            )
            try:
                grid = discover.read_grid(root, art.path)
            except (OSError, ValueError):
                grid = {}
            st.code(
                f"ctrsink ablate --data {ui.q(grid.get('data', 'DATA_DIR'))} --variants "
                f"{','.join(grid.get('variants', ['baseline']))} --seeds "
                f"{','.join(str(s) for s in grid.get('seeds', [1]))} --out {ui.q(art.path)} "
                f"--config {ui.q(art.path / 'base_config.yaml')}",
                language="bash",
            )
    elif table.empty:
        st.warning(f"{art.name}: the ablation table is empty.")
    else:
        variants = list(dict.fromkeys(table["variant"]))
        seeds = sorted(table["seed"].unique().tolist())
        st.caption(
            f"{len(variants)} variants × {len(seeds)} seeds ({', '.join(map(str, seeds))}); {len(table)} rows."
        )
        metric = st.radio(
            "Metric",
            ["auc", "logloss", "gauc"],
            horizontal=True,
            format_func=lambda m: charts.METRIC_LABELS[m],
            key="abl_metric",
        )
        stage_frame = charts.ablation_stage_frame(table, metric)
        ui.plot(charts.ablation_stage_figure(stage_frame, metric, variants), key="abl_stage")
        summary = api.summary_table(table)
        if "baseline" in variants and len(variants) > 1:
            ui.plot(charts.ablation_diff_figure(summary, metric), key="abl_diff")
        else:
            st.caption("No baseline variant in this grid: differences to the baseline are not available.")
        with st.expander("Summary table (test at each run's best epoch)", expanded=True):
            st.dataframe(summary.round(4), hide_index=True, width="stretch")
        with st.expander("Per stage"):
            st.dataframe(stage_frame.round(4), hide_index=True, width="stretch")
        md = art.path / discover.SUMMARY_FILE
        if md.is_file():
            with st.expander(discover.SUMMARY_FILE):
                try:
                    st.markdown(discover.read_text(root, md))
                except (OSError, ValueError) as exc:
                    ui.artifact_error(f"{art.name}/{discover.SUMMARY_FILE}", exc)

# ---- start a new one ---------------------------------------------------------------------------------------
st.divider()
st.subheader("Start a new ablation")
if ui.read_only():
    st.info(
        "This dashboard runs read-only (`--read-only`): starting ablations is off. Start one from a shell with "
        "`ctrsink ablate --data DATA_DIR --variants ... --seeds ... --out DIR`."
    )
    st.stop()


def sample_sets() -> tuple[dict[str, str], list[str]]:
    """{folder: label} of the prepared sample sets under the root (found, or named by grids and runs), and the
    refusals of those leading outside it."""
    out: dict[str, str] = {}
    refused: list[str] = []

    def add(path: str | Path, label: str) -> None:
        try:
            folder = discover.confine_data(root, path)
        except ValueError as exc:
            refused.append(str(exc))
            return
        if (folder / "manifest.json").is_file():
            out.setdefault(str(folder), label)

    for d in f.data:
        add(d.path, d.name)
    for a in f.ablations:
        try:
            given = discover.read_grid(root, a.path).get("data")
        except (OSError, ValueError):
            given = None
        if given:
            add(given, str(given))
    for r in f.standalone_runs():
        try:
            given = discover.load_run_record(root, r.path).info.get("data_dir")
        except Exception:  # unreadable runs are reported on the Runs page
            given = None
        if given:
            add(given, str(given))
    return out, refused


data_dirs, refused_data = sample_sets()
for message in dict.fromkeys(refused_data):
    st.caption(f"Sample set not offered: {message}")
if not data_dirs:
    ui.empty(
        "No prepared sample set found under the root to train on. Prepare the bundled sample data first:",
        f"ctrsink prepare --source csv --path sample_data/synthetic --out {ui.q(root / 'data')}",
    )
    st.stop()

c1, c2 = st.columns(2)
data = c1.selectbox("Data", list(data_dirs), format_func=lambda k: data_dirs[k], key="abl_data")
configs = {"": "defaults"} | {
    str(a.path / discover.BASE_CONFIG_FILE): f"base config of {a.name}"
    for a in f.ablations
    if (a.path / discover.BASE_CONFIG_FILE).is_file()
}
config = c2.selectbox("Base config", list(configs), format_func=lambda k: configs[k], key="abl_config")

st.markdown("**Sink components**")
t1, t2, t3, t4, t5 = st.columns(5)
use_sink = t1.toggle("Sink tokens", value=True, key="abl_sink")
signal = t2.selectbox(
    "Signal type",
    ["off", "none", "index", "time_gap", "similarity", "random"],
    index=3,
    disabled=not use_sink,
    key="abl_signal",
    help="off: the sink token's own embedding; the others replace it with a signal embedding",
)
two_stage = t3.toggle("Two-stage training", value=False, disabled=not use_sink, key="abl_two_stage")
inter_sink = t4.toggle("Inter-sink bias", value=False, disabled=not use_sink, key="abl_inter_sink")
layers = t5.number_input(
    "Inter-sink layers (0 = family default)",
    min_value=0,
    max_value=48,
    value=0,
    step=1,
    disabled=not (use_sink and inter_sink),
    key="abl_layers",
)
toggles = {
    "use_sink": use_sink,
    "sink_signal": signal,
    "two_stage": two_stage,
    "inter_sink": inter_sink,
}
variant = jobs.variant_for(toggles)
c1, c2, c3 = st.columns([1, 1, 2])
with_baseline = c1.checkbox("Also train the baseline", value=variant != "baseline", key="abl_with_baseline")
seeds = c2.multiselect("Seeds", list(range(1, 11)), default=[1], key="abl_seeds")
overrides_text = c3.text_area(
    "Other config overrides (key=value per line)",
    value="",
    key="abl_overrides",
    height=90,
    help="Known config options only, with values of their type or among their choices, e.g. epochs=2, "
    "train_samples=1000, num_threads=1, behavior_selection=similarity. The sink components come from the toggles.",
)

if variant is None:
    st.warning(
        "No named variant switches exactly these components, so `ctrsink ablate` cannot run this combination. "
        "Combinations it knows:"
    )
    st.dataframe(pd.DataFrame(jobs.named_combinations()), hide_index=True, width="stretch")
    st.stop()

variants = ["baseline", variant] if with_baseline and variant != "baseline" else [variant]
slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", variant)
names_free = (f"ablation_{slug}" + (f"_{i}" if i > 1 else "") for i in range(1, 1000))
default_name = next((n for n in names_free if not (root / n).exists()), f"ablation_{slug}")
out_name = st.text_input(
    "Output folder (a new folder name under the root)",
    value=default_name,
    key="abl_out",
    help="Letters, digits, '_', '-' and '.'; no '/' or '..'.",
)
lines = [line.strip() for line in overrides_text.splitlines() if line.strip() and not line.startswith("#")]
if inter_sink and use_sink and layers:
    lines.append(f"inter_sink_layers={int(layers)}")

problems = []
command: list[str] = []
try:
    command = jobs.build_command(root, data, variants, seeds, out_name, lines, config or None)
except (api.CtrSinkError, ValueError) as exc:  # OutsideRoot is a ValueError
    problems.append(str(exc))
st.markdown(f"Variant **`{variant}`**" + (" against **`baseline`**" if len(variants) > 1 else ""))
if command:
    st.code(" ".join(ui.q(c) for c in command[1:]).replace("-m ctrsink", "ctrsink", 1), language="bash")
for p in problems:
    st.warning(f"Not startable: {p}")

if st.button("Start ablation", type="primary", disabled=bool(problems), key="abl_start"):
    try:
        record = jobs.launch(root, data, variants, seeds, out_name, lines, config or None)
    except (api.CtrSinkError, ValueError, RuntimeError, OSError) as exc:
        st.error(f"Not started: {exc}")
    else:
        st.session_state["abl_last_launch"] = record
        out = Path(record["command"][record["command"].index("--out") + 1])
        try:
            st.session_state["abl_pending_select"] = out.relative_to(ui.folder()).as_posix()
        except ValueError:  # started outside the chosen folder: show the root, where it is
            st.session_state[ui.FOLDER_PENDING] = "."
            st.session_state["abl_pending_select"] = out.relative_to(root).as_posix()
        discover.find.clear()
        st.rerun()
