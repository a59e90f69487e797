"""Sample explorer: one user's history as a timeline with per-behavior attributions, the score, offline bertviz
views, the token-level attention map, and what-if edits of the history rescored live with `ctrsink.run`."""

from __future__ import annotations

import charts
import discover
import numpy as np
import pandas as pd
import samples
import streamlit as st
import ui

from ctrsink import api
from sinkviz.views import MAX_TOKENS, analysis_view, attribution_bar, sample_maps, sample_tokens, view_html

st.title("Sample explorer")
found, analyses = ui.require_analyses()
root = ui.root()


def sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


@st.cache_data(show_spinner="Building the bertviz view...", max_entries=16)
def bertviz_page(
    key: tuple, _analysis, sample_id: int, field: str, level: str, kind: str
) -> tuple[str, int, int]:
    view = analysis_view(_analysis, sample_id, field, level)
    return view_html(view, kind), len(view.labels), len(view.layers)


labels = ui.analysis_labels(found, analyses)
default = ui.default_pair(analyses)[-1]
name = st.selectbox(
    "Analysis",
    list(analyses),
    index=list(analyses).index(default),
    format_func=lambda n: labels[n],
    key="ex_analysis",
)
analysis = analyses[name]
manifest = analysis.manifest
art = ui.analysis_run(found, name)
try:
    attributions = discover.load_attributions(root, analysis.path)
except Exception as exc:
    ui.artifact_error(f"{name}/attributions.parquet", exc)
    attributions = None

preds = analysis.tables.get("predictions", pd.DataFrame(columns=["sample_id", "user_id", "label", "logit"]))
with_maps = [int(s) for s in manifest.get("full_map_samples") or []]
with_attr = sorted(set(attributions["sample_id"].astype(int))) if attributions is not None else []
both = [s for s in with_maps if s in set(with_attr)]
order = list(dict.fromkeys(both + with_maps + with_attr + [int(s) for s in preds["sample_id"]]))
if not order:
    st.info("This analysis holds no samples.")
    st.stop()
pred = preds.set_index("sample_id") if len(preds) else None


def sample_label(sid: int) -> str:
    parts = [f"sample {sid}"]
    if pred is not None and sid in pred.index:
        parts.append(f"user {pred.at[sid, 'user_id']} · label {int(pred.at[sid, 'label'])}")
    tags = [t for t, ok in (("attention maps", sid in with_maps), ("attributions", sid in with_attr)) if ok]
    return " · ".join(parts) + (f" · {', '.join(tags)}" if tags else "")


sid = st.selectbox("Sample", order, format_func=sample_label, key="ex_sample")
history_fields = list(manifest.get("history_fields", []))

# ---- the sample and its run --------------------------------------------------------------------------------
run_dir = art.run if art is not None else None
note = art.run_note if art is not None else "the analysis was not found by discovery"
if run_dir is None:
    (st.error if note.startswith("refused") else st.warning)(f"**Run of {name}**: {note}")
elif note:
    st.caption(f"Run of {name}: {note}")
num_behaviors, selection = 10, "recent"
if run_dir is not None:
    try:
        run_cfg = discover.load_run_record(root, run_dir).config
        num_behaviors = int(run_cfg.get("num_behaviors", num_behaviors))
        selection = str(run_cfg.get("behavior_selection", selection))
    except Exception as exc:
        ui.artifact_error(f"run {run_dir}", exc)


def bundle():
    """The run's model (cached across reruns); raises when the run cannot be loaded from under the root."""
    if run_dir is None:
        raise ValueError(f"no run to load for {name}: {note}")
    return discover.load_bundle(root, run_dir)


def kept_of(row: dict) -> tuple[samples.Kept, str | None]:
    """The kept behaviors of the sample: recorded by `sinkviz capture`, else the run's own batcher, else the most
    recent ones (the default rule); -> (kept, a note on where they come from when not from the analysis)."""
    kept = discover.kept_map(analysis, sid)
    if kept is not None:
        return kept, None
    why = (
        f"Sample {sid} is not in this analysis' kept table"
        if "kept" in analysis.tables
        else "This analysis predates the `kept` table (re-capture it with `sinkviz capture` to record it)"
    )
    try:
        kept = api.kept_behaviors(bundle(), row)
    except Exception as exc:  # no model either: the default rule, said so
        counts = samples.kept_counts(analysis.tables.get("tokens"), attributions, sid)
        wrong = (
            f" (this run selects by {selection}, so the marks may be wrong)" if selection != "recent" else ""
        )
        message = (
            f"{why} and the run's model is unavailable ({type(exc).__name__}): 'seen by the model' assumes the "
            f"most recent behaviors{wrong}."
        )
        return samples.recent_kept(row, history_fields, num_behaviors, counts), message
    return kept, f"{why}: the kept behaviors come from the run's own batcher."


row = items = None
try:
    row = samples.sample_row(root, manifest, sid)
    items = discover.load_items(root, manifest["data_dir"])
except Exception as exc:
    ui.artifact_error(
        f"sample {sid} in {manifest.get('data_dir')}",
        exc,
        f"ctrsink prepare --source csv --path sample_data/synthetic --out {ui.q(manifest.get('data_dir', 'DATA_DIR'))}",
    )

c1, c2, c3, c4 = st.columns(4)
if pred is not None and sid in pred.index:
    logit = float(pred.at[sid, "logit"])
    c1.metric("Label", int(pred.at[sid, "label"]))
    c2.metric("Logit (captured)", f"{logit:.4f}")
    c3.metric("Click probability", f"{sigmoid(logit):.3f}")
    c4.metric("User", str(pred.at[sid, "user_id"]))
target = samples.item_title(items, int(row["item_idx"])) if row is not None and items is not None else ""

# ---- timeline ----------------------------------------------------------------------------------------------
st.subheader("History timeline")
history = None
if row is not None and items is not None:
    kept, kept_note = kept_of(row)
    history = samples.history_frame(row, history_fields, items, kept)
    history = samples.with_attributions(history, attributions, sid)
    if kept_note:
        st.caption(kept_note)
    if selection != "recent":
        st.caption(
            f"This run keeps the {num_behaviors} behaviors most similar to the target (k = 0 most similar)."
        )
    ui.plot(
        charts.timeline_figure(history, target, f"Sample {sid}: behaviors before the target"),
        key="ex_timeline",
    )
    with st.expander("History table"):
        st.dataframe(history.drop(columns=["timestamp"]), hide_index=True, width="stretch")
else:
    st.info("The timeline needs the sample set the analysis was captured on.")
if attributions is not None and sid in with_attr:
    ui.plot(attribution_bar(attributions, sid), key="ex_attr")
elif attributions is None:
    st.caption(
        "No attributions in this analysis folder; add them with "
        f"`sinkviz attribute --run {ui.q(run_dir or 'RUN_DIR')} --out {ui.q(analysis.path)} --samples 32`."
    )
else:
    st.caption(f"Sample {sid} has no attributions (attributed samples: {with_attr}).")

# ---- attention ---------------------------------------------------------------------------------------------
st.subheader("Attention")
if sid not in with_maps:
    st.info(f"Full attention maps were kept for samples {with_maps} only (`sinkviz capture --full-maps N`).")
else:
    map_fields = {k[1] for k in analysis.full_maps if k[0] == sid} & set(analysis["tokens"]["field"])
    fields_with_maps = [x for x in manifest.get("fields", history_fields) if x in map_fields]
    c1, c2, c3 = st.columns(3)
    field = c1.selectbox("Field", fields_with_maps, key="ex_field")
    try:
        maps = sample_maps(analysis, sid, field)
        tokens = sample_tokens(analysis, sid, field)
    except Exception as exc:
        ui.artifact_error(f"{name} sample {sid}", exc)
        maps, tokens = {}, None
    if maps and tokens is not None:
        layer = c2.selectbox("Layer", list(maps), key="ex_layer")
        n_heads = maps[layer].shape[0]
        head = c3.selectbox(
            "Head",
            ["mean"] + list(range(n_heads)),
            format_func=lambda h: "mean over heads" if h == "mean" else f"head {h}",
            key="ex_head",
        )
        matrix = maps[layer].mean(0) if head == "mean" else maps[layer][int(head)]
        t = len(tokens)
        start = 0
        if t > MAX_TOKENS:
            start = st.slider("First token shown", 0, t - MAX_TOKENS, 0, key="ex_window")
            st.caption(
                f"Showing tokens {start}-{start + MAX_TOKENS - 1} of {t} (maps are capped at {MAX_TOKENS})."
            )
        stop = min(t, start + MAX_TOKENS)
        names = [f"{i} {tok}" for i, tok in zip(tokens["position"], tokens["token"].astype(str))][start:stop]
        ui.plot(
            charts.heatmap(
                matrix[start:stop, start:stop],
                names,
                names,
                f"Sample {sid} · {field} · layer {layer} · {'mean over heads' if head == 'mean' else f'head {head}'}",
                "key token",
                "query token",
                "attention",
            ),
            key="ex_token_map",
        )
        st.markdown("**bertviz** (offline: the scripts are bundled)")
        c1, c2 = st.columns(2)
        level = c1.radio("Level", ["behavior", "token"], horizontal=True, key="ex_bv_level")
        kind = c2.radio("View", ["head", "model"], horizontal=True, key="ex_bv_kind")
        if field not in history_fields:
            st.caption("bertviz views are drawn for history fields.")
        else:
            try:
                key = discover.stamps(analysis.path, discover.ANALYSIS_FILES)
                page, n_labels, n_layers = bertviz_page(key, analysis, sid, field, level, kind)
                height = 170 + 21 * n_labels if kind == "head" else 200 + 130 * max(n_layers, 1)
                st.iframe(page, height=min(height, 2600))
            except Exception as exc:
                ui.artifact_error(f"bertviz view of sample {sid}", exc)

# ---- what-if -----------------------------------------------------------------------------------------------
st.subheader("What if? Edit the history and rescore")
if row is None or items is None:
    st.info("What-if rescoring needs the sample set the analysis was captured on.")
    st.stop()
rule = (
    f"the {num_behaviors} behaviors most similar to the target"
    if selection == "similarity"
    else f"the last {num_behaviors} behaviors of each field in position order"
)
st.caption(
    "Delete rows, add rows (the + below a table), change an item, its time before the target (hours) or its "
    f"position (order). The model sees {rule}. Scores come from `ctrsink.api.score_rows`."
)
n_items = len(items)
lookup = st.selectbox(
    "Item lookup (find an item_idx to add)",
    items.index.tolist(),
    format_func=lambda i: f"{i}: {items.at[i, 'title']}",
    key="ex_lookup",
)
single = history_fields == ["all"]
editor_keys = [f"whatif|{name}|{sid}|{fld}" for fld in history_fields]
if st.button("Reset edits", key="ex_reset"):
    for k in editor_keys:
        st.session_state.pop(k, None)
tables = {}
cols = st.columns(len(history_fields)) if len(history_fields) > 1 else [st.container()]
for col, fld, key in zip(cols, history_fields, editor_keys):
    with col:
        st.markdown(f"**{fld}**")
        tables[fld] = st.data_editor(
            samples.editable(history, fld),
            key=key,
            num_rows="dynamic",
            hide_index=True,
            width="stretch",
            column_config={
                "position": st.column_config.NumberColumn(
                    "position", step=1, help="order; ties keep row order"
                ),
                "item_idx": st.column_config.NumberColumn(
                    "item_idx", min_value=0, max_value=n_items - 1, step=1
                ),
                "title": st.column_config.TextColumn("title (original)", disabled=True),
                "hours_before": st.column_config.NumberColumn("hours before target", format="%.2f"),
                "label": st.column_config.NumberColumn(
                    "liked",
                    min_value=0,
                    max_value=1,
                    step=1,
                    disabled=not single,
                    help="used by single histories",
                ),
            },
        )
edited, notes = samples.edited_row(row, tables, n_items)
for note in notes:
    st.warning(note)
for fld in history_fields:
    if (np.asarray(edited[f"{fld}_timestamp"]) > int(row["timestamp"])).any():
        st.warning(
            f"{fld}: a behavior lies after the target (negative hours): the data never holds such histories."
        )

try:
    model = bundle()
    pooling = str(manifest.get("pooling", "all_tokens"))
    original_logit = float(api.score_rows(model, [row], pooling=pooling)[0])
    edited_logit = float(api.score_rows(model, [edited], pooling=pooling)[0])
    edited_kept = api.kept_behaviors(model, edited)
except Exception as exc:
    ui.artifact_error(f"model of {run_dir}", exc)
    st.stop()

c1, c2, c3 = st.columns(3)
c1.metric("Original logit (rescored)", f"{original_logit:.4f}")
c2.metric("What-if logit", f"{edited_logit:.4f}", delta=f"{edited_logit - original_logit:+.4f}")
c3.metric(
    "What-if click probability",
    f"{sigmoid(edited_logit):.3f}",
    delta=f"{sigmoid(edited_logit) - sigmoid(original_logit):+.3f}",
)
edited_history = samples.history_frame(edited, history_fields, items, edited_kept).assign(attribution=np.nan)
ui.plot(
    charts.timeline_figure(edited_history, target, f"Sample {sid} after the edits"),
    key="ex_whatif_timeline",
)
with st.expander("Rescored row (the exact input of score_rows)"):
    st.json(
        {
            "original_logit": original_logit,
            "edited_logit": edited_logit,
            "pooling": pooling,
            "row": samples.jsonable(edited),
        },
        expanded=False,
    )
