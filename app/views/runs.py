"""Runs: every run and ablation under the root; config, data and metrics per epoch and stage side by side."""

from __future__ import annotations

from pathlib import Path

import charts
import discover
import pandas as pd
import streamlit as st
import ui

from ctrsink import api

SINK_KEYS = ("use_sink", "sink_signal", "two_stage", "inter_sink", "inter_sink_layers", "use_cls_token")

st.title("Runs")
f = ui.found()
root = ui.root()
if not f.runs and not f.ablations:
    ui.no_runs()
    st.stop()

# ---- every run ---------------------------------------------------------------------------------------------
records: dict[str, discover.RunRecord] = {}
broken: list[tuple[str, Exception]] = []
for art in f.runs:
    try:
        records[art.name] = discover.load_run_record(root, art.path)
    except Exception as exc:  # one damaged run must not hide the others
        broken.append((art.name, exc))
for name, exc in broken:
    ui.artifact_error(name, exc)

groups = {a.name: a.group for a in f.runs}
paths = {a.name: a.path.resolve() for a in f.runs}
analysed: dict[Path, list[str]] = {}  # run folder -> the analyses captured from it
for a in f.analyses + f.id_rows:
    if a.run is not None:
        analysed.setdefault(a.run, []).append(a.name)
show_members = st.toggle(
    "Include the runs inside ablations",
    value=not f.standalone_runs(),
    help="Each (variant, seed) of a grid is a run.",
)
shown = {n: r for n, r in records.items() if show_members or groups.get(n) is None}


def overview_row(name: str, rec: discover.RunRecord) -> dict:
    test = (rec.final or {}).get("test", {})
    return {
        "run": name,
        "ablation": groups.get(name) or "",
        "status": "finished" if rec.final else f"training ({len(rec.metrics)} metric rows)",
        "data": str(rec.info.get("data_dir", "")),
        # din / sparsectr_lite / srp4ctr_lite are ID rows: no text backbone
        "model": rec.config.get("model", "ctrsink"),
        "backbone": rec.config.get("backbone") if rec.config.get("model", "ctrsink") == "ctrsink" else "—",
        "parameters": (rec.info.get("cost") or {}).get("parameters", rec.info.get("parameters")),
        "MFLOPs/sample": ((rec.info.get("cost") or {}).get("flops_per_sample_b1") or float("nan")) / 1e6,
        **{k: rec.config.get(k) for k in SINK_KEYS},
        "seed": rec.config.get("seed"),
        "analyses": ", ".join(analysed.get(paths[name], [])),
        "best epoch": (rec.final or {}).get("best_epoch"),
        "test AUC": test.get("auc"),
        "test LogLoss": test.get("logloss"),
        "test gAUC": test.get("gauc"),
    }


if shown:
    st.subheader(f"{len(shown)} runs")
    st.dataframe(
        pd.DataFrame([overview_row(n, r) for n, r in shown.items()]), hide_index=True, width="stretch"
    )
elif records:
    st.caption("All runs belong to ablations; switch the toggle above to list them.")

# ---- side by side ------------------------------------------------------------------------------------------
if shown:
    st.subheader("Side by side")
    chosen = st.multiselect("Runs to compare", list(shown), default=list(shown)[:2], key="runs_compare")
    if chosen:
        metric = st.radio(
            "Metric", ["auc", "logloss", "gauc", "calibration"], horizontal=True, key="runs_metric"
        )
        frames = {n: shown[n].metrics for n in chosen}
        ui.plot(charts.epoch_metrics_figure(frames, metric), key="runs_epochs")

        tab_cfg, tab_data, tab_metrics = st.tabs(["Config", "Data", "Metrics per epoch and stage"])
        with tab_cfg:
            cfg = pd.DataFrame({n: pd.Series(shown[n].config).map(str) for n in chosen})
            only_diff = st.checkbox("Only options that differ", value=len(chosen) > 1, key="runs_diff")
            if only_diff and len(chosen) > 1:
                cfg = cfg[cfg.nunique(axis=1) > 1]
            st.dataframe(cfg, width="stretch")
        with tab_data:
            keys = [
                "data_dir",
                "data_source",
                "data_hash",
                "history_fields",
                "sizes",
                "parameters",
                "processes",
            ]
            data = pd.DataFrame({n: {k: str(shown[n].info.get(k, "")) for k in keys} for n in chosen})
            st.dataframe(data, width="stretch")
        with tab_metrics:
            for n in chosen:
                m = shown[n].metrics
                st.markdown(f"**{n}**")
                if m.empty:
                    st.caption("no metrics yet")
                    continue
                cols = [
                    c
                    for c in (
                        "epoch",
                        "stage",
                        "split",
                        "pooling",
                        "auc",
                        "logloss",
                        "gauc",
                        "calibration",
                        "n",
                        "train_loss",
                        "train_seconds",
                    )
                    if c in m.columns
                ]
                st.dataframe(m[cols], hide_index=True, width="stretch")

# ---- ablations ---------------------------------------------------------------------------------------------
if f.ablations:
    st.subheader(f"{len(f.ablations)} ablations")
    rows = []
    for art in f.ablations:
        grid = {}
        try:
            grid = discover.read_grid(root, art.path)
        except Exception as exc:
            ui.artifact_error(art.name, exc)
        members = [r for r in f.runs if r.group == art.name]
        finished = sum(1 for r in members if (r.path / api.FINAL_METRICS_FILE).is_file())
        total = len(grid.get("variants", [])) * len(grid.get("seeds", [])) or len(members)
        rows.append(
            {
                "ablation": art.name,
                "variants": ", ".join(grid.get("variants", [])),
                "seeds": ", ".join(str(s) for s in grid.get("seeds", [])),
                "runs finished": f"{finished}/{total}",
                "table": "yes" if (art.path / discover.ABLATION_FILE).is_file() else "not yet",
                "data": grid.get("data", ""),
            }
        )
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    st.caption("Open the Ablations page for metrics per variant and stage with intervals over seeds.")
