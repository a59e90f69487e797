"""Comparison rows (-lite): where DIN, SparseCTR-lite and SRP4CTR-lite put the candidate's attention over the ID
history (time gaps, gap boundaries, branch gates, candidate conditioning, concentration, temporal-bias λ).

Reads `sinkviz capture` folders of ID-row runs through `sinkviz.idrows` only (via discover's cached loader)."""

from __future__ import annotations

from typing import Any

import charts
import discover
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import ui

from sinkviz.idrows import (
    branch_shares,
    conditioning_summary,
    distribution_summary,
    gap_profile,
)

LITE_NOTE = (
    "DIN, and SparseCTR-lite / SRP4CTR-lite: our compact re-implementations from the papers' published "
    "descriptions, trained on the same samples as CTR-Sink. Not the papers' code; nothing here is a paper's result."
)
MODEL_NAMES = {"din": "DIN", "sparsectr_lite": "SparseCTR-lite", "srp4ctr_lite": "SRP4CTR-lite"}


def bar_figure(frame: pd.DataFrame, x: str, y: str, color: str, title: str, yaxis: str) -> go.Figure:
    """Grouped bars: one trace per value of `color`."""
    fig = go.Figure()
    for i, (name, part) in enumerate(frame.groupby(color, sort=False)):
        fig.add_bar(
            x=part[x].tolist(), y=part[y].tolist(), name=str(name), marker_color=charts.PALETTE[i % 8]
        )
    fig.update_layout(title=title, yaxis_title=yaxis, barmode="group", template="plotly_white")
    return fig


def id_command(f: discover.Found) -> str:
    """The capture command for an ID-row run under the root (a placeholder when there is none)."""
    run = None
    for art in f.runs:
        try:
            if discover.load_run_record(ui.root(), art.path).config.get("model", "ctrsink") != "ctrsink":
                run = art.path
                break
        except Exception:  # an unreadable run is reported on the Runs page
            continue
    name = run.name if run else "ID_RUN"
    run_text = ui.q(run) if run else "ID_RUN_DIR"
    return (
        f"ctrsink train --data DATA_DIR --out {ui.q(ui.folder() / 'din')} --set model=din  # if you have none\n"
        f"sinkviz capture --run {run_text} --out {ui.q((run or ui.folder() / name) / 'analysis')} --samples 256"
    )


def load_all(f: discover.Found) -> dict[str, Any]:
    out = {}
    for art in f.id_rows:
        try:
            out[art.name] = discover.load_id_analysis(ui.root(), art.path)
        except Exception as exc:  # one broken folder must not take the page down
            ui.artifact_error(art.name, exc)
    return out


def label_of(name: str, analysis: Any) -> str:
    """The run the analysis belongs to (relative to the root) and its model."""
    art = ui.analysis_run(found, name)
    text = ui.run_label(art.run if art else None, name)
    model = analysis.manifest.get("model", "?")
    return f"{text} ({MODEL_NAMES.get(model, model)})"


st.title("Comparison rows (-lite)")
st.caption(LITE_NOTE)
found = ui.found()
analyses = load_all(found)
if not analyses:
    if not found.id_rows:
        ui.empty(
            f"No ID-row analysis found under {ui.folder()}. Train a comparison row (model=din, sparsectr_lite or "
            "srp4ctr_lite) and capture it:",
            id_command(found),
        )
    st.stop()

labels = {n: f"{label_of(n, a)} · {n}" for n, a in analyses.items()}
c1, c2 = st.columns([3, 1])
chosen = c1.multiselect(
    "ID-row analyses", list(analyses), default=list(analyses)[:3], format_func=labels.get, key="idr_analyses"
)
candidate = c2.radio(
    "Candidate",
    ["true", "other"],
    horizontal=True,
    key="idr_candidate",
    help="Each sample is scored with its true candidate and with one random other item on the same history.",
)
if not chosen:
    st.info("Choose at least one analysis.")
    st.stop()
short = {n: label_of(n, analyses[n]) for n in chosen}
if len(set(short.values())) < len(short):  # two analyses of one run: charts group by label, keep them apart
    short = {n: f"{v} · {n}" for n, v in short.items()}


def stacked(build) -> pd.DataFrame:
    frames = [build(analyses[n]).assign(analysis=short[n]) for n in chosen]
    frames = [x for x in frames if not x.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# ---- mass vs log time gap ----------------------------------------------------------------------------------
st.subheader("Candidate attention vs time to the target")
st.caption(
    "Mean candidate-over-history mass per log-bucketed time gap (the ID view's `hist_gap`), against the uniform "
    "expectation (dashed: each bucket's share of the history tokens). DIN weights are normalised as |w| / Σ|w|; "
    "SparseCTR's global branch spreads each chunk summary's mass over the chunk's behaviors."
)
value = st.radio(
    "Value",
    ["mass", "ratio"],
    horizontal=True,
    key="idr_gap_value",
    format_func=lambda v: "mass" if v == "mass" else "mass ÷ uniform",
)
gap = stacked(lambda a: gap_profile(a, candidate))
if gap.empty:
    st.info("No candidate attention captured in these analyses.")
else:
    fig = go.Figure()
    for i, ((run, series), part) in enumerate(gap.groupby(["analysis", "series"], sort=False)):
        fig.add_scatter(
            x=part["bucket"].tolist(),
            y=part[value].tolist(),
            mode="lines+markers",
            name=f"{run}: {series}",
            line={"color": charts.PALETTE[i % 8]},
        )
    if value == "mass":
        for run, part in gap.groupby("analysis", sort=False):
            first = part[part["series"] == part["series"].iloc[0]]
            fig.add_scatter(
                x=first["bucket"].tolist(),
                y=first["uniform"].tolist(),
                mode="lines",
                name=f"{run}: uniform",
                line={"dash": "dash", "color": "gray"},
            )
    else:
        fig.add_hline(y=1.0, line_dash="dash", line_color="gray")
    ticks = gap.drop_duplicates("bucket").sort_values("bucket")
    fig.update_layout(
        title="Mass per time-gap bucket" + ("" if value == "mass" else " ÷ uniform expectation"),
        xaxis={
            "title": "time before the target (bucket lower edge, log scale)",
            "tickvals": ticks["bucket"].tolist(),
            "ticktext": [charts.format_gap(h) for h in ticks["gap_hours"]],
        },
        yaxis_title=value if value == "mass" else "mass ÷ uniform",
        template="plotly_white",
    )
    ui.plot(fig, key="idr_gap")

# ---- concentration, boundaries, category ---------------------------------------------------------------------
summary = stacked(lambda a: distribution_summary(a.distributions, candidate))
st.subheader("Concentration")
st.caption(
    "Per candidate distribution: entropy normalised by log(history length) (1 = uniform), and the number of "
    "behaviors holding 90% of the mass. Means over the analysed samples."
)
if summary.empty:
    st.info("No distributions in these analyses.")
else:
    metric = st.radio(
        "Metric",
        ["entropy_norm", "entropy", "keys90"],
        horizontal=True,
        key="idr_conc_metric",
        format_func={
            "entropy_norm": "normalised entropy",
            "entropy": "entropy (nats)",
            "keys90": "keys for 90% mass",
        }.get,
    )
    ui.plot(
        bar_figure(summary, "series", metric, "analysis", "Concentration per module", metric), key="idr_conc"
    )

    st.subheader("Mass next to large time gaps")
    gaps = {int(analyses[n].manifest.get("boundary_gaps", 0)) for n in chosen}
    st.caption(
        f"Mass on the behaviors on either side of each history's {', '.join(map(str, sorted(gaps)))} largest time "
        "gaps (SparseCTR-lite's chunk edges) against their share of the history (what random positions get). "
        "Compare with CTR-Sink's behavior-boundary sinks."
    )
    bound = summary.melt(
        id_vars=["analysis", "series"], value_vars=["boundary_mass", "boundary_expected"], var_name="what"
    )
    bound["group"] = (
        bound["analysis"]
        + ": "
        + bound["what"].map({"boundary_mass": "mass", "boundary_expected": "expected"})
    )
    ui.plot(bar_figure(bound, "series", "value", "group", "Boundary alignment", "mass"), key="idr_boundary")
    with st.expander("Numbers (incl. top-3 overlap with the candidate's category)"):
        st.dataframe(
            summary.set_index(["analysis", "series"]).drop(columns=["module", "layer"]), width="stretch"
        )

# ---- target conditioning -------------------------------------------------------------------------------------
st.subheader("Target conditioning")
st.caption(
    "Jensen–Shannon divergence (bits, 0 = identical) between the true and the other candidate's attention over "
    "the same history. SRP4CTR-lite's learned queries do not see the candidate, so they read 0 by construction."
)
cond = stacked(lambda a: conditioning_summary(a.conditioning))
if cond.empty:
    st.info("No paired candidate distributions in these analyses.")
else:
    ui.plot(
        bar_figure(cond, "series", "js_mean", "analysis", "JS divergence per module", "JS (bits)"),
        key="idr_js",
    )

# ---- branch shares -------------------------------------------------------------------------------------------
st.subheader("Branch shares (SparseCTR-lite)")
with_gates = [n for n in chosen if not analyses[n].gates.empty]
if not with_gates:
    st.caption("None of the chosen analyses has branch gates (only SparseCTR-lite does).")
else:
    gate_value = st.radio(
        "Gate value",
        ["share", "gate"],
        horizontal=True,
        key="idr_gate_value",
        format_func={"share": "share of the three gates", "gate": "raw gate"}.get,
    )
    st.caption(
        "The candidate's mean gate per branch and layer (mean over heads), overall and by whether the candidate's "
        "category is new to the history or recurring."
    )
    for n in with_gates:
        shares = branch_shares(analyses[n].gates, gate_value, candidate)
        shares = shares.assign(where=[f"L{layer} {b}" for layer, b in zip(shares["layer"], shares["branch"])])
        ui.plot(
            bar_figure(
                shares, "where", gate_value, "cat_status", f"{short[n]}: branch {gate_value}", gate_value
            ),
            key=f"idr_gates_{n}",
        )
        chunks = analyses[n].chunk_mass
        chunks = chunks[chunks["candidate"] == candidate].melt(
            id_vars=["layer", "chunk_distance"], value_vars=["mass", "token_share"], var_name="what"
        )
        if not chunks.empty:
            chunks["group"] = [f"L{layer} {w}" for layer, w in zip(chunks["layer"], chunks["what"])]
            ui.plot(
                bar_figure(
                    chunks,
                    "chunk_distance",
                    "value",
                    "group",
                    f"{short[n]}: global branch mass by chunk (0 = most recent) vs the chunk's token share",
                    "mass",
                ),
                key=f"idr_chunks_{n}",
            )

# ---- lambda --------------------------------------------------------------------------------------------------
with_lambda = [n for n in chosen if not analyses[n].lambdas.empty]
if with_lambda:
    st.subheader("Temporal bias coefficients λ")
    st.caption(
        "Learned per-head weights of SparseCTR-lite's RelTemporal components (log |Δt|, relative position, hour "
        "difference, weekday relation); head −1 = one λ shared by all heads."
    )
    for n in with_lambda:
        lam = analyses[n].lambdas
        grid = lam.pivot_table(index=["layer", "head"], columns="component", values="value", sort=False)
        ui.plot(
            charts.heatmap(
                grid,
                list(grid.columns),
                [f"layer {lay} head {h}" for lay, h in grid.index],
                f"{short[n]}: λ",
                "component",
                "",
                colorbar="λ",
            ),
            key=f"idr_lambda_{n}",
        )

# ---- CTR-Sink beside -----------------------------------------------------------------------------------------
st.subheader("CTR-Sink on the same data")
sink = ui.load_analyses(found, show_errors=False)
lines = []
for n in chosen:
    m = analyses[n].manifest
    for name, other in sink.items():
        om = other.manifest
        if om.get("data_dir") != m.get("data_dir") or om.get("split") != m.get("split"):
            continue
        same = om.get("samples") == m.get("samples") and om.get("sample_seed", 0) == m.get("seed")
        kind = "CTR-Sink" if om.get("use_sink") else "text baseline"
        lines.append(
            f"- **{short[n]}** ↔ `{name}` ({kind}): "
            + ("the same samples (same split, count and seed)." if same else "same split, other samples.")
        )
if lines:
    st.markdown("\n".join(lines))
    st.page_link(
        "views/attention.py", label="Open Attention mass for the CTR-Sink analyses", icon=":material/link:"
    )
else:
    st.caption(
        "No CTR-Sink analysis of the same data and split under this root; capture one with "
        "`sinkviz capture --run CTRSINK_RUN --out ... --samples N` using the same --samples and --seed."
    )
