"""Attention mass per layer (and per head on demand) by key role, baseline against CTR-Sink; sink metric per layer."""

from __future__ import annotations

import charts
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import ui

from sinkviz.views import mass_by_layer, role_mass_figure

ROLES = ["sink", "separator", "behavior", "prompt", "target", "special"]

st.title("Attention mass")
found, analyses = ui.require_analyses()

# per-epoch analyses are offered once per run; the epoch slider picks the one shown
series = ui.epoch_series(found, analyses)
offered = ui.pickable(analyses, series)
base_labels, picker_labels = ui.series_labels(found, offered, series)
picked = st.multiselect(
    "Analyses to compare",
    list(offered),
    default=ui.default_pair(offered),
    format_func=lambda n: picker_labels[n],
    key="mass_analyses",
)
if not picked:
    st.info("Choose at least one analysis.")
    st.stop()
picked_series = {n: series[n] for n in picked if n in series}
epoch = ui.epoch_slider(list(picked_series.values()), key="mass_epoch")
labels = ui.shown_at_epoch(picked, series, epoch, base_labels)
chosen = list(labels)

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


# ---- over training (per-epoch analyses) --------------------------------------------------------------------


def epoch_trend(members: dict[int, str]) -> pd.DataFrame:
    """Per epoch, means over layers: mass on the run's anchor (sinks; separators in runs without) in the chosen
    fields, heads and query roles, and the sink metric's share for the chosen key and ε."""
    rows = []
    for k, n in members.items():
        anchor = analyses[n].manifest.get("anchor", "sink")
        mass = mass_by_layer(role_mass(n), fields)
        share = charts.sink_metric_frame(
            analyses[n]["sink_metric"], key, eps, sink_fields, "share", None if head == "mean" else head
        )
        rows.append(
            {
                "epoch": k,
                "anchor": anchor,
                "mass": float(mass.loc[mass["key_role"] == anchor, "mass"].mean()),
                "sink_eps": float(share["share"].mean()),
            }
        )
    return pd.DataFrame(rows)


def epoch_trend_figure(trends: dict[str, pd.DataFrame]) -> go.Figure:
    fig = go.Figure()
    for i, (label, t) in enumerate(trends.items()):
        color = {"color": charts.PALETTE[i % len(charts.PALETTE)]}
        anchor = t["anchor"].iloc[0]
        fig.add_scatter(
            x=t["epoch"], y=t["mass"], mode="lines+markers", name=f"{label}: mass on {anchor}s", line=color
        )
        fig.add_scatter(
            x=t["epoch"],
            y=t["sink_eps"],
            mode="lines+markers",
            name=f"{label}: Sink_ε share",
            line={**color, "dash": "dash"},
        )
    fig.add_vline(x=epoch, line={"dash": "dot", "color": "grey"})
    fig.update_layout(
        title=f"Over training: mass on the anchor and Sink_ε (key {key}, ε={eps}), means over layers",
        xaxis={"title": "epoch", "dtick": 1},
        yaxis_title="mass / share",
        height=320,
        template="plotly_white",
    )
    return fig


if picked_series:
    st.subheader("Over training")
    st.caption(
        "One analysis per epoch (`sinkviz capture --every-epoch`); epoch 0 is the model before training. The dotted "
        "line marks the epoch shown above."
    )
    trends = {base_labels[n]: epoch_trend(members) for n, members in picked_series.items()}
    ui.plot(epoch_trend_figure(trends), key="mass_epochs_figure")
