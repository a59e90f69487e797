"""Inter-sink dependencies: attention among sinks (separators for runs without sinks) per layer, over all analysed
samples and for one sample with its behaviors' titles and time gaps."""

from __future__ import annotations

import charts
import discover
import numpy as np
import samples
import streamlit as st
import ui

from sinkviz.views import inter_sink_frame, inter_sink_heatmap, join_tokens

st.title("Inter-sink dependencies")
found, analyses = ui.require_analyses()

# per-epoch analyses are offered once per run; the epoch slider picks the one shown
series = ui.epoch_series(found, analyses)
offered = ui.pickable(analyses, series)
base_labels, picker_labels = ui.series_labels(found, offered, series)
default = ui.default_pair(offered)[-1]
c1, c2, c3 = st.columns(3)
picked = c1.selectbox(
    "Analysis",
    list(offered),
    index=list(offered).index(default),
    format_func=lambda n: picker_labels[n],
    key="is_analysis",
)
epoch = ui.epoch_slider([series[picked]] if picked in series else [], key="is_epoch")
labels = ui.shown_at_epoch([picked], series, epoch, base_labels)
name = next(iter(labels))
analysis = analyses[name]
anchor = analysis.manifest.get("anchor", "sink")
table = analysis["inter_sink"]
fields = [x for x in analysis.manifest.get("history_fields", []) if x in set(table["field"])]
if table.empty or not fields:
    st.info(
        f"{labels[name]} has no inter-{anchor} attention: every analysed history had fewer than two behaviors. "
        "Capture more samples or a dataset with longer histories."
    )
    st.stop()
field = c2.selectbox("History field", fields, key="is_field")
heads = sorted(int(h) for h in table["head"].unique())
head = c3.selectbox(
    "Heads",
    ["mean"] + heads,
    format_func=lambda h: "mean over heads" if h == "mean" else f"head {h}",
    key="is_head",
)
head_arg = None if head == "mean" else int(head)
layers_all = sorted(int(x) for x in table[table["field"] == field]["layer"].unique())
layers = st.multiselect("Layers", layers_all, default=layers_all, key="is_layers")
if anchor == "separator":
    st.caption("This run has no sinks: the separator after each behavior stands in for its sink.")

# ---- aggregated --------------------------------------------------------------------------------------------
st.subheader(f"Aggregated over {analysis.manifest.get('samples', '?')} samples")
st.caption(
    f"Row: query {anchor} after behavior k; column: key {anchor} after behavior j (behaviors oldest first); "
    "cell: mean attention over the samples that have both."
)
cols = st.columns(2)
for i, layer in enumerate(layers):
    with cols[i % 2]:
        if inter_sink_frame(table, layer, field, head_arg).empty:
            st.caption(f"layer {layer}: no data")
            continue
        ui.plot(inter_sink_heatmap(table, layer, field, head_arg, anchor), key=f"is_agg_{layer}")

# ---- one sample --------------------------------------------------------------------------------------------
st.subheader("One sample")
kept = [int(s) for s in analysis.manifest.get("full_map_samples") or []]
if not kept:
    st.info("This analysis kept no full attention maps; capture with `--full-maps 4` to see single samples.")
    st.stop()
sid = st.selectbox("Sample (with full maps)", kept, key="is_sample")
try:
    tokens = analysis["tokens"]
    tokens = tokens[(tokens["sample_id"] == sid) & (tokens["field"] == field)].sort_values("position")
    maps = {layer: m for (s, fl, layer), m in analysis.full_maps.items() if s == sid and fl == field}
except Exception as exc:
    ui.artifact_error(f"{name} sample {sid}", exc)
    st.stop()
if tokens.empty or not maps:
    st.info(f"No token-level maps of sample {sid} in field {field}.")
    st.stop()

# behavior titles from the token table; time gaps from the sample set when it is still there
titles = {
    int(k): join_tokens(part["token"].astype(str).tolist())
    for k, part in tokens[tokens["role"] == "behavior"].groupby("behavior_index")
}
gaps: dict[int, float] = {}
try:
    row = samples.sample_row(ui.root(), analysis.manifest, sid)
    ts = np.asarray(row[f"{field}_timestamp"], dtype=np.int64)
    kept = discover.kept_map(analysis, sid)
    if kept is None:  # an analysis from before the `kept` table: the most recent behaviors, oldest first
        kept = samples.recent_kept(row, [field], len(ts), {field: len(titles)})
        st.caption(
            "This analysis predates the `kept` table: time gaps assume the model kept the most recent behaviors "
            "(right for `recent` selection only; re-capture with `sinkviz capture` to record them)."
        )
    stored = kept.get(field, [])
    gaps = {k: (int(row["timestamp"]) - int(ts[stored[k]])) / samples.HOUR for k in titles if k < len(stored)}
except discover.OutsideRoot as exc:
    ui.artifact_error(f"time gaps of sample {sid}", exc)
except Exception as exc:
    st.caption(f"Time gaps unavailable ({type(exc).__name__}: {exc}); axes show titles only.")


def axis_label(k: int) -> str:
    text = titles.get(k, "")
    text = text if len(text) <= 24 else text[:23] + "…"
    gap = f" · {charts.format_gap(gaps[k])} before" if k in gaps else ""
    return f"{k}: {text}{gap}"


with st.expander("Behaviors of this sample", expanded=False):
    st.dataframe(
        [
            {"k": k, "behavior": titles[k], "before target": charts.format_gap(gaps.get(k, np.nan))}
            for k in titles
        ],
        hide_index=True,
        width="stretch",
    )
cols = st.columns(2)
for i, layer in enumerate(layer for layer in layers if layer in maps):
    z, ks = charts.anchor_grid(maps[layer], tokens, anchor, head_arg)
    with cols[i % 2]:
        if not ks:
            st.caption(f"layer {layer}: fewer than two behaviors, no {anchor}s")
            continue
        names = [axis_label(k) for k in ks]
        which = "mean over heads" if head_arg is None else f"head {head_arg}"
        ui.plot(
            charts.heatmap(
                z,
                names,
                names,
                f"Sample {sid}: inter-{anchor} attention, layer {layer}, {which}",
                f"key {anchor} after behavior",
                f"query {anchor} after behavior",
            ),
            key=f"is_sample_{layer}",
        )
st.caption(f"Analysis folder: {analysis.path}")
