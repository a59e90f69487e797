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
        f"No ablation found under {root}. Start one below, or from the command line:",
        f"ctrsink ablate --data {ui.q(data_hint)} --variants baseline,sink,sink+signal,full --seeds 1,2,3 "
        f"--out {ui.q(root / 'ablation')}",
    )
else:
    # default: one running from here, else the first with results
    running = [a.name for a in f.ablations if jobs.is_running(a.path)]
    done = [a.name for a in f.ablations if (a.path / discover.ABLATION_FILE).is_file()]
    if st.session_state.get("abl_selected") not in names:
        st.session_state["abl_selected"] = (running or done or names)[0]
    name = st.selectbox("Ablation", names, key="abl_selected")
    art = next(a for a in f.ablations if a.name == name)
    status = jobs.progress(art.path)

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
            p = jobs.progress(art.path)
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
        table = discover.load_ablation(art.path)
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
            grid = discover.read_grid(art.path)
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
        from ctrsink.ablate import summary_table

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
        summary = summary_table(table)
        if "baseline" in variants and len(variants) > 1:
            ui.plot(charts.ablation_diff_figure(summary, metric), key="abl_diff")
        else:
            st.caption("No baseline variant in this grid: differences to the baseline are not available.")
        with st.expander("Summary table (test at each run's best epoch)", expanded=True):
            st.dataframe(summary.round(4), hide_index=True, width="stretch")
        with st.expander("Per stage"):
            st.dataframe(stage_frame.round(4), hide_index=True, width="stretch")
        md = art.path / "summary.md"
        if md.is_file():
            with st.expander("summary.md"):
                st.markdown(md.read_text(encoding="utf-8"))

# ---- start a new one ---------------------------------------------------------------------------------------
st.divider()
st.subheader("Start a new ablation")
data_dirs: dict[str, str] = {}
for d in f.data:
    data_dirs[str(d.path.resolve())] = d.name
for a in f.ablations:
    try:
        g = discover.read_grid(a.path).get("data")
    except Exception:
        g = None
    if g:
        data_dirs.setdefault(str(Path(g)), str(g))
for r in f.standalone_runs():
    try:
        dd = discover.load_run_record(r.path).info.get("data_dir")
    except Exception:
        dd = None
    if dd:
        data_dirs.setdefault(str(Path(dd)), str(dd))
data_dirs = {k: v for k, v in data_dirs.items() if (Path(k) / "manifest.json").is_file()}
if not data_dirs:
    ui.empty(
        "No prepared sample set found to train on. Prepare the bundled sample data first:",
        f"ctrsink prepare --source csv --path sample_data/synthetic --out {ui.q(root / 'data')}",
    )
    st.stop()

c1, c2 = st.columns(2)
data = c1.selectbox("Data", list(data_dirs), format_func=lambda k: data_dirs[k], key="abl_data")
configs = {"": "defaults"} | {
    str(a.path / "base_config.yaml"): f"base config of {a.name}"
    for a in f.ablations
    if (a.path / "base_config.yaml").is_file()
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
seeds_text = c2.text_input("Seeds", value="1", key="abl_seeds", help="comma-separated, e.g. 1,2,3")
overrides_text = c3.text_area(
    "Other config overrides (key=value per line)",
    value="",
    key="abl_overrides",
    height=90,
    help="e.g. epochs=2, train_samples=1000, num_threads=1; the sink components come from the toggles",
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
out_name = st.text_input("Output folder (under the root)", value=f"ablations/{slug}", key="abl_out")
overrides = [
    line.strip() for line in overrides_text.splitlines() if line.strip() and not line.startswith("#")
]
if inter_sink and use_sink and layers:
    overrides.append(f"inter_sink_layers={int(layers)}")
try:
    seeds = [int(s) for s in seeds_text.replace(" ", "").split(",") if s]
except ValueError:
    seeds = []
out = (root / out_name).resolve()
command = jobs.build_command(data, variants, seeds, out, overrides, config or None)
st.markdown(f"Variant **`{variant}`**" + (" against **`baseline`**" if len(variants) > 1 else ""))
st.code(" ".join(ui.q(c) for c in command[1:]).replace("-m ctrsink", "ctrsink", 1), language="bash")

problems = []
if not seeds:
    problems.append("give at least one integer seed, e.g. 1 or 1,2,3")
if not out_name.strip() or Path(out_name).is_absolute() or ".." in Path(out_name).parts:
    problems.append("the output folder must be a relative path inside the root")
if jobs.is_running(out):
    problems.append(f"an ablation is already running in {out_name}")
grid = discover.read_grid(out) if (out / "grid.json").is_file() else {}
if grid and (grid.get("variants") != variants or grid.get("seeds") != seeds):
    problems.append(f"{out_name} already holds a different grid; choose another output folder")
for p in problems:
    st.warning(p)

if st.button("Start ablation", type="primary", disabled=bool(problems), key="abl_start"):
    from ctrsink.errors import CtrSinkError

    try:
        jobs.check(variants, overrides, config or None)
        record = jobs.launch(data, variants, seeds, out, overrides, config or None)
    except (CtrSinkError, RuntimeError, OSError) as exc:
        st.error(f"Not started: {exc}")
    else:
        st.session_state["abl_last_launch"] = record
        rel = out.relative_to(root.resolve()).as_posix() if out.is_relative_to(root.resolve()) else str(out)
        st.session_state["abl_pending_select"] = rel
        discover.find.clear()
        st.rerun()
