"""Pure figure builders the pages need beyond `sinkviz.views`: DataFrames and arrays in, `go.Figure` out.

Nothing here reads files or touches Streamlit, so every builder can be checked on a hand-made frame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

DASHES = ["solid", "dash", "dot", "dashdot", "longdash"]
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
METRIC_LABELS = {"auc": "AUC", "logloss": "LogLoss", "gauc": "gAUC", "calibration": "calibration"}


def interval(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, half-width of a 95% t-interval over seeds, n); half-width NaN with fewer than two values. The toolkit's
    one interval function (`ctrsink.api.t_interval`), so the page, the summary table and the paper figure agree."""
    from ctrsink import api

    v = np.asarray(values, dtype=float)
    mean, half = api.t_interval(v)
    return mean, half, int(np.count_nonzero(~np.isnan(v)))


def _errors(half: pd.Series) -> dict:
    return {"type": "data", "array": [None if np.isnan(h) else float(h) for h in half], "visible": True}


# ------------------------------------------------------------------------------------------------ runs


def stage_label(stage: str, pooling: object) -> str:
    """'all_tokens', or 'sink_only (sink_only pooling)' for the extra pooling reported in two-stage runs."""
    if not isinstance(pooling, str) or pooling == "all_tokens":
        return str(stage)
    return f"{stage} ({pooling} pooling)"


def epoch_metrics_figure(metrics: Mapping[str, pd.DataFrame], metric: str = "auc") -> go.Figure:
    """Validation `metric` per epoch for each run (one line per stage and pooling), test at best as a star."""
    fig = go.Figure()
    for i, (label, frame) in enumerate(metrics.items()):
        if frame.empty or metric not in frame.columns:
            continue
        color = PALETTE[i % len(PALETTE)]
        valid = frame[frame["split"] == "valid"]
        for j, ((stage, pooling), part) in enumerate(valid.groupby(["stage", "pooling"], sort=False)):
            part = part.sort_values("epoch")
            fig.add_trace(
                go.Scatter(
                    x=part["epoch"],
                    y=part[metric],
                    mode="lines+markers",
                    name=f"{label} · valid · {stage_label(stage, pooling)}",
                    line={"color": color, "dash": DASHES[j % len(DASHES)]},
                )
            )
        test = frame[(frame["split"] == "test") & (frame["stage"] == "best")]
        if len(test):
            fig.add_trace(
                go.Scatter(
                    x=test["epoch"],
                    y=test[metric],
                    mode="markers",
                    name=f"{label} · test at best epoch",
                    marker={"symbol": "star", "size": 14, "color": color},
                )
            )
    fig.update_layout(
        title=f"{METRIC_LABELS.get(metric, metric)} per epoch (validation lines; test at the best epoch)",
        xaxis_title="epoch",
        yaxis_title=METRIC_LABELS.get(metric, metric),
        xaxis={"dtick": 1},
        template="plotly_white",
        legend={"font": {"size": 10}},
    )
    return fig


# ------------------------------------------------------------------------------------------------ attention


def sink_metric_frame(
    sink_metric: pd.DataFrame,
    key: str = "any_anchor",
    eps: float | None = None,
    fields: Sequence[str] | None = None,
    value: str = "share",
    head: int | None = None,
) -> pd.DataFrame:
    """Per layer: the n-weighted mean over heads and fields of `share` (Sink_eps) or `importance_mean`."""
    rows = sink_metric[sink_metric["key"] == key]
    if eps is not None:
        rows = rows[np.isclose(rows["eps"], eps)]
    if fields is not None:
        rows = rows[rows["field"].isin(list(fields))]
    if head is not None:
        rows = rows[rows["head"] == head]
    if rows.empty:
        return pd.DataFrame(columns=["layer", value])
    weighted = rows.assign(w=rows[value] * rows["n"])
    agg = weighted.groupby("layer")[["w", "n"]].sum()
    return (agg["w"] / agg["n"]).rename(value).reset_index()


def sink_metric_figure(
    tables: Mapping[str, pd.DataFrame],
    key: str = "any_anchor",
    eps: float | None = None,
    fields: Sequence[str] | None = None,
    value: str = "share",
    head: int | None = None,
) -> go.Figure:
    fig = go.Figure()
    for i, (label, table) in enumerate(tables.items()):
        frame = sink_metric_frame(table, key, eps, fields, value, head)
        if frame.empty:
            continue
        fig.add_trace(
            go.Scatter(
                x=frame["layer"],
                y=frame[value],
                mode="lines+markers",
                name=label,
                line={"color": PALETTE[i % len(PALETTE)]},
            )
        )
    what = (
        f"Sink_ε: share of (sample, head) with importance > ε={eps}"
        if value == "share"
        else "mean importance (attention received per allowed query)"
    )
    fig.update_layout(
        title=f"Sink metric per layer, key {key}: {what}",
        xaxis_title="layer",
        yaxis_title=value,
        xaxis={"dtick": 1},
        template="plotly_white",
    )
    return fig


def head_mass_frame(role_mass: pd.DataFrame, key_role: str, fields: Sequence[str]) -> pd.DataFrame:
    """(layer x head) count-weighted mass on `key_role` over the given fields and every query role."""
    rows = role_mass[role_mass["field"].isin(list(fields)) & (role_mass["key_role"] == key_role)]
    if rows.empty:
        return pd.DataFrame()
    weighted = rows.assign(w=rows["mass"] * rows["count"])
    agg = weighted.groupby(["layer", "head"])[["w", "count"]].sum()
    return (agg["w"] / agg["count"]).unstack("head").sort_index()


def heatmap(
    z: np.ndarray | pd.DataFrame,
    x: Sequence[str],
    y: Sequence[str],
    title: str,
    xaxis_title: str = "",
    yaxis_title: str = "",
    colorbar: str = "mass",
    reverse_y: bool = True,
) -> go.Figure:
    """A labelled heatmap (labels must be unique: plotly merges equal category labels)."""
    z = z.to_numpy() if isinstance(z, pd.DataFrame) else np.asarray(z)
    fig = go.Figure(
        go.Heatmap(
            z=np.where(np.isnan(z), None, z).tolist() if z.size else [[]],
            x=list(x),
            y=list(y),
            colorscale="Viridis",
            colorbar={"title": colorbar},
            hoverongaps=False,
        )
    )
    fig.update_layout(
        title=title,
        xaxis_title=xaxis_title,
        yaxis_title=yaxis_title,
        yaxis={"autorange": "reversed"} if reverse_y else {},
        template="plotly_white",
    )
    return fig


def anchor_grid(attention: np.ndarray, tokens: pd.DataFrame, anchor: str, head: int | None = None):
    """One sample's (H, T, T) map -> (K x K attention among its anchors, the behavior index k of each anchor)."""
    import torch

    from ctrsink import api
    from sinkviz import anchor_positions

    roles = torch.tensor([[api.ROLE_ID[r] for r in tokens["role"]]], dtype=torch.long)
    behavior = torch.from_numpy(tokens["behavior_index"].to_numpy(dtype=np.int64).copy())[None]
    pos = anchor_positions(roles, behavior, anchor)[0].numpy()
    ks = [int(k) for k in np.flatnonzero(pos >= 0)]
    a = attention.mean(0) if head is None else attention[head]
    idx = pos[ks]
    return a[np.ix_(idx, idx)], ks


# ------------------------------------------------------------------------------------------------ ablations


def ablation_stage_frame(table: pd.DataFrame, metric: str = "auc") -> pd.DataFrame:
    """Per variant and stage: mean and 95% interval over seeds of `metric`.

    Validation stages use, per seed, the epoch of that stage (and pooling) with the best validation AUC (the
    selection rule of training); test uses the rows at each run's best epoch. -> variant, stage, mean, ci95, seeds.
    """
    valid = table[(table["split"] == "valid") & (table["stage"] != "best")]
    rows = []
    if len(valid):
        best = valid.loc[valid.groupby(["variant", "seed", "stage", "pooling"], sort=False)["auc"].idxmax()]
        best = best.assign(
            label=["valid · " + stage_label(s, p) for s, p in zip(best["stage"], best["pooling"])]
        )
        rows.append(best[["variant", "seed", "label", metric]])
    test = table[(table["split"] == "test") & (table["stage"] == "best")]
    rows.append(test.assign(label="test · best epoch")[["variant", "seed", "label", metric]])
    per_seed = pd.concat(rows, ignore_index=True)
    out = []
    for (variant, label), part in per_seed.groupby(["variant", "label"], sort=False):
        mean, half, n = interval(part[metric].to_numpy(dtype=float))
        out.append({"variant": variant, "stage": label, "mean": mean, "ci95": half, "seeds": n})
    return pd.DataFrame(out, columns=["variant", "stage", "mean", "ci95", "seeds"])


def ablation_stage_figure(
    frame: pd.DataFrame, metric: str = "auc", variants: Sequence[str] = ()
) -> go.Figure:
    variants = list(variants) or list(dict.fromkeys(frame["variant"]))
    stages = list(dict.fromkeys(frame["stage"]))
    stages = [s for s in stages if not s.startswith("test")] + [s for s in stages if s.startswith("test")]
    fig = go.Figure()
    for i, stage in enumerate(stages):
        part = frame[frame["stage"] == stage].set_index("variant").reindex(variants)
        fig.add_trace(
            go.Bar(
                x=variants,
                y=part["mean"].tolist(),
                name=stage,
                error_y=_errors(part["ci95"]),
                marker={"color": PALETTE[i % len(PALETTE)]},
                customdata=part["seeds"].tolist(),
                hovertemplate="%{x}<br>%{y:.4f}<br>seeds: %{customdata}<extra>" + stage + "</extra>",
            )
        )
    values = frame["mean"].dropna()
    name = METRIC_LABELS.get(metric, metric)
    fig.update_layout(
        title=f"{name} per variant and stage (mean over seeds, error bars: 95% t-interval)",
        barmode="group",
        yaxis_title=name,
        template="plotly_white",
    )
    if len(values):
        pad = max(0.02, float(values.max() - values.min()) * 0.5)
        fig.update_yaxes(range=[float(values.min()) - pad, float(values.max()) + pad])
    return fig


def ablation_diff_figure(summary: pd.DataFrame, metric: str = "auc") -> go.Figure:
    """Test `metric` minus the baseline's, paired by seed, with 95% intervals (from `ctrsink.ablate.summary_table`)."""
    col = f"{metric}_diff"
    rows = summary[summary["variant"] != "baseline"]
    if col in rows.columns:
        rows = rows[rows[col].notna()]
    else:
        rows = rows.iloc[0:0].assign(**{col: [], f"{col}_ci95": []})
    name = METRIC_LABELS.get(metric, metric)
    fig = go.Figure(
        go.Bar(
            x=rows["variant"].tolist(),
            y=rows[col].tolist(),
            error_y=_errors(rows[f"{col}_ci95"]),
            marker={
                "color": ["#2ca02c" if (v > 0) == (metric != "logloss") else "#d62728" for v in rows[col]]
            },
            name=f"Δ {name}",
        )
    )
    fig.add_hline(y=0, line={"color": "#555", "width": 1})
    better = "lower is better" if metric == "logloss" else "higher is better"
    fig.update_layout(
        title=f"Test Δ {name} against baseline, paired by seed ({better}; 95% t-interval)",
        yaxis_title=f"Δ {name}",
        template="plotly_white",
    )
    return fig


# ------------------------------------------------------------------------------------------------ samples


def format_gap(hours: float) -> str:
    if hours != hours:  # NaN
        return "?"
    if abs(hours) < 48:
        return f"{hours:.1f} h"
    if abs(hours) < 24 * 730:
        return f"{hours / 24:.1f} d"
    return f"{hours / 24 / 365:.1f} y"


def timeline_figure(history: pd.DataFrame, target: str = "", title: str = "") -> go.Figure:
    """One sample's behaviors over time (x: days before the target; y: history field).

    `history` columns: field, title, hours_before, kept (bool), attribution (float, NaN where none). Behaviors the
    model does not see (outside its window) are grey; seen ones are coloured by attribution when there is one.
    """
    fig = go.Figure()
    has_attr = "attribution" in history.columns and history["attribution"].notna().any()
    limit = float(history["attribution"].abs().max()) if has_attr else 0.0
    for kept in (False, True):
        part = history[history["kept"] == kept]
        if part.empty:
            continue
        attr = part["attribution"] if has_attr else pd.Series(np.nan, index=part.index)
        hover = [
            f"{f} · {t}<br>{format_gap(h)} before target"
            + ("" if a != a else f"<br>attribution {a:+.4g}")
            + ("" if kept else "<br>(outside the model's window)")
            for f, t, h, a in zip(part["field"], part["title"], part["hours_before"], attr)
        ]
        marker: dict = {"size": 13, "line": {"width": 1, "color": "#333"}}
        if kept and has_attr:
            marker.update(
                color=attr.fillna(0).tolist(),
                colorscale="RdBu",
                cmin=-limit or -1,
                cmax=limit or 1,
                colorbar={"title": "attribution"},
            )
        else:
            marker["color"] = "#1f77b4" if kept else "#c7c7c7"
        fig.add_trace(
            go.Scatter(
                x=(-part["hours_before"] / 24).tolist(),
                y=part["field"].tolist(),
                mode="markers",
                marker=marker,
                name="seen by the model" if kept else "outside the window",
                hovertext=hover,
                hoverinfo="text",
            )
        )
    fig.add_vline(x=0, line={"color": "#9467bd", "dash": "dash"})
    if target:
        fig.add_annotation(x=0, y=1.06, yref="paper", text=f"target: {target}", showarrow=False)
    fig.update_layout(
        title=title or "History timeline",
        xaxis_title="days relative to the target impression",
        yaxis_title="history field",
        template="plotly_white",
        legend={"orientation": "h", "y": -0.25},
    )
    return fig
