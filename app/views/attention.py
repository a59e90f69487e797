"""Attention mass per layer (and per head on demand) by key role, baseline against CTR-Sink; sink metric per layer."""

from __future__ import annotations

import charts
import pandas as pd
import streamlit as st
import ui

from sinkviz.views import mass_by_layer, role_mass_figure

ROLES = ["sink", "separator", "behavior", "prompt", "target", "special"]

st.title("Attention mass")
found, analyses = ui.require_analyses()

labels = ui.analysis_labels(found, analyses)
chosen = st.multiselect(
    "Analyses to compare",
    list(analyses),
    default=ui.default_pair(analyses),
    format_func=lambda n: labels[n],
    key="mass_analyses",
)
if not chosen:
    st.info("Choose at least one analysis.")
    st.stop()

all_fields = list(dict.fromkeys(fld for n in chosen for fld in analyses[n].manifest.get("fields", [])))
history = list(dict.fromkeys(fld for n in chosen for fld in analyses[n].manifest.get("history_fields", [])))
c1, c2, c3 = st.columns(3)
fields = c1.multiselect(
    "Fields (queries and keys)",
    all_fields,
    default=history,
    key="mass_fields",
    help="History fields hold sinks, separators and behaviors; the target item fields (title, categories) hold "
    "the target tokens.",
)
key_roles = c2.multiselect("Key roles", ROLES, default=ROLES[:5], key="mass_roles")
query_roles = c3.multiselect(
    "Query roles (empty = all)",
    ROLES,
    default=[],
    key="mass_query_roles",
    help="Whose attention is averaged.",
)
heads = sorted({int(h) for n in chosen for h in analyses[n]["role_mass"]["head"].unique()})
head = st.selectbox(
    "Heads",
    ["mean"] + heads,
    format_func=lambda h: "mean over heads" if h == "mean" else f"head {h}",
    key="mass_head",
)


def role_mass(name: str) -> pd.DataFrame:
    table = analyses[name]["role_mass"]
    if head != "mean":
        table = table[table["head"] == head]
    if query_roles:
        table = table[table["query_role"].isin(query_roles)]
    return table


if not fields or not key_roles:
    st.info("Choose at least one field and one key role.")
else:
    tables = {labels[n]: role_mass(n) for n in chosen}
    fig = role_mass_figure(tables, key_roles=key_roles, fields=fields)
    if head != "mean":
        fig.update_layout(title=f"Attention mass per layer by key role, head {head}")
    ui.plot(fig, key="mass_figure")
    with st.expander("Numbers"):
        frames = [mass_by_layer(t, fields).assign(run=label) for label, t in tables.items()]
        numbers = pd.concat(frames, ignore_index=True)
        st.dataframe(
            numbers[numbers["key_role"].isin(key_roles)].pivot_table(
                index=["run", "layer"], columns="key_role", values="mass"
            ),
            width="stretch",
        )

    if st.toggle("Per head: mass on one key role, layer × head", key="mass_per_head"):
        role = st.selectbox("Key role", key_roles, key="mass_head_role")
        cols = st.columns(len(chosen))
        for col, n in zip(cols, chosen):
            grid = charts.head_mass_frame(analyses[n]["role_mass"], role, fields)
            with col:
                if grid.empty:
                    st.caption(f"{labels[n]}: no {role} tokens in these fields")
                    continue
                ui.plot(
                    charts.heatmap(
                        grid,
                        [f"head {h}" for h in grid.columns],
                        [f"layer {i}" for i in grid.index],
                        f"{labels[n]}: mass on {role}",
                        "head",
                        "layer",
                    ),
                    key=f"mass_heads_{n}",
                )

# ---- sink metric -------------------------------------------------------------------------------------------
st.subheader("Sink metric per layer")
st.caption(
    "Importance of a key = mean attention it receives from the queries allowed to see it. Sink_ε = share of "
    "(sample, head) where some anchor (the sink after a behavior; the separator in runs without sinks) has "
    "importance above ε. `first_token` is the classic attention sink, for reference."
)
metric_tables = {labels[n]: analyses[n]["sink_metric"] for n in chosen}
all_eps = sorted({float(e) for t in metric_tables.values() for e in t["eps"].unique()})
c1, c2, c3 = st.columns(3)
key = c1.selectbox("Key", ["any_anchor", "first_token"], key="sink_key")
value = c2.radio(
    "Value",
    ["share", "importance_mean"],
    horizontal=True,
    key="sink_value",
    format_func=lambda v: "Sink_ε share" if v == "share" else "mean importance",
)
eps = c3.selectbox("ε", all_eps, key="sink_eps") if all_eps else None
sink_fields = [x for x in fields if x in history] or history
ui.plot(
    charts.sink_metric_figure(metric_tables, key, eps, sink_fields, value, None if head == "mean" else head),
    key="sink_metric_figure",
)
