"""Views of an analysis: offline bertviz pages (token and behavior level) and pure plotly figure builders.

bertviz pages load require.js, d3 and jQuery from a CDN; `offline_page` inlines the copies in `sinkviz/vendor/`
(licenses there) so a page renders with no internet and holds no `http://`/`https://` text. Token-level views
are capped (`MAX_TOKENS`) with a visible note; behavior-level views sum token attention over segments (prompt,
each behavior, each sink, each separator run, special tokens), so rows still sum to one.

The plotly builders take DataFrames (analysis tables, attribution tables) and return `go.Figure`s for the
dashboard; they never read files.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from ctrsink.atomic import atomic_write_text
from ctrsink.errors import CtrSinkError
from ctrsink.text import ROLE_ID
from sinkviz.artifacts import Analysis

if TYPE_CHECKING:
    import plotly.graph_objects as go

MAX_TOKENS = 128
VENDOR = Path(__file__).resolve().parent / "vendor"
SCRIPTS = ("d3.min.js", "jquery.min.js", "require.js")  # order matters: d3 and jQuery before require.js
LICENSES = ("LICENSE.d3.txt", "LICENSE.jquery.txt", "LICENSE.requirejs.txt")
AMD_SHIM = "define('d3', [], () => window.d3);\ndefine('jquery', [], () => window.jQuery);"
ROLE_COLORS = {
    "sink": "#d62728",
    "separator": "#ff7f0e",
    "behavior": "#1f77b4",
    "prompt": "#2ca02c",
    "special": "#7f7f7f",
    "target": "#9467bd",
}
_CDN_SCRIPT = re.compile(r'<script src="https?://[^"]*"></script>')
_REQUIRE_CONFIG = re.compile(r"require\.config\(\{\s*paths:\s*\{[^{}]*\}\s*\}\);", re.S)


# ------------------------------------------------------------------------------------------------ data


@dataclass
class AttentionView:
    """What a bertviz page shows: one (H, N, N) matrix per shown layer over N labels."""

    attention: list[np.ndarray]
    labels: list[str]
    layers: list[int]  # the model layer of each matrix
    title: str
    note: str | None = None


def sample_tokens(analysis: Analysis, sample_id: int, field: str) -> pd.DataFrame:
    """The analysis' token table for one sample and field, in position order."""
    tokens = analysis.tables.get("tokens")
    if tokens is None:
        raise CtrSinkError(f"{analysis.path}: no token table (capture with --full-maps > 0)")
    rows = tokens[(tokens["sample_id"] == sample_id) & (tokens["field"] == field)].sort_values("position")
    if rows.empty:
        kept = sorted(tokens["sample_id"].unique().tolist())
        raise CtrSinkError(
            f"{analysis.path}: no full maps for sample {sample_id} field {field!r}; kept samples: {kept}"
        )
    return rows.reset_index(drop=True)


def sample_maps(analysis: Analysis, sample_id: int, field: str) -> dict[int, np.ndarray]:
    """{layer: (H, T, T)} full attention maps of one sample and field (token-level layers only)."""
    maps = {layer: m for (s, f, layer), m in analysis.full_maps.items() if s == sample_id and f == field}
    if not maps:
        raise CtrSinkError(f"{analysis.path}: no full maps for sample {sample_id} field {field!r}")
    return dict(sorted(maps.items()))


def token_groups_np(roles: Sequence[str], behavior: np.ndarray) -> np.ndarray:
    """Per token: the behavior index (sinks follow their behavior, separators the behavior before them)."""
    from sinkviz.attribution import token_groups

    r = torch.tensor([[ROLE_ID[x] for x in roles]], dtype=torch.long)
    b = torch.tensor(np.array(behavior, dtype=np.int64))[None]
    return token_groups(r, b)[0].numpy()


def join_tokens(tokens: Sequence[str]) -> str:
    """Readable text of WordPiece (##) or byte-level BPE (Ġ) pieces."""
    if any(t.startswith("Ġ") for t in tokens):
        return "".join(tokens).replace("Ġ", " ").strip()
    return "".join(t[2:] if t.startswith("##") else f" {t}" for t in tokens).strip()


def segments(tokens: pd.DataFrame, width: int = 18) -> tuple[np.ndarray, list[str]]:
    """(segment id per token, segment labels): runs of tokens with the same role and behavior."""
    roles = tokens["role"].tolist()
    groups = token_groups_np(roles, tokens["behavior_index"].to_numpy())
    seg = np.zeros(len(roles), dtype=np.int64)
    labels: list[str] = []
    starts: list[int] = []
    for i, (role, g) in enumerate(zip(roles, groups)):
        if i == 0 or role != roles[i - 1] or g != groups[i - 1] or role == "special":
            starts.append(i)
            labels.append("")
        seg[i] = len(labels) - 1
    for s, start in enumerate(starts):
        members = tokens["token"].iloc[np.flatnonzero(seg == s)].astype(str).tolist()
        role, g = roles[start], int(groups[start])
        text = join_tokens(members)
        text = text if len(text) <= width else text[: width - 1] + "…"
        labels[s] = {
            "behavior": f"b{g}: {text}",
            "sink": f"[sink {g}]",
            "separator": f"[sep {g}]",
            "prompt": "[prompt]",
            "target": f"target: {text}",
        }.get(role, text)
    return seg, labels


def segment_matrix(attention: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """(H, T, T) token attention -> (H, S, S): mean over a segment's queries of the mass on each key segment."""
    onehot = np.eye(int(seg.max()) + 1)[seg]  # (T, S)
    summed = np.einsum("ts,htk,kr->hsr", onehot, attention.astype(np.float64), onehot)
    return summed / onehot.sum(0)[None, :, None]


def token_view(
    maps: Mapping[int, np.ndarray],
    tokens: pd.DataFrame,
    *,
    max_tokens: int = MAX_TOKENS,
    start: int = 0,
    title: str = "",
) -> AttentionView:
    """Token-level view; sequences longer than `max_tokens` show a window from `start`, with a note."""
    t = len(tokens)
    start = max(0, min(start, t - 1))
    stop = min(t, start + max_tokens)
    note = None
    if start > 0 or stop < t:
        note = (
            f"Showing tokens {start}-{stop - 1} of {t} (token views are capped at {max_tokens} tokens); "
            "attention to tokens outside the window is not drawn, so rows may not sum to one. "
            "The behavior-level view covers the whole sequence."
        )
    labels = tokens["token"].astype(str).tolist()[start:stop]
    return AttentionView(
        [m[:, start:stop, start:stop] for m in maps.values()], labels, list(maps), title, note
    )


def behavior_view(maps: Mapping[int, np.ndarray], tokens: pd.DataFrame, *, title: str = "") -> AttentionView:
    """Behavior-level view of one sample: segment-by-segment attention (rows sum to one)."""
    seg, labels = segments(tokens)
    return AttentionView([segment_matrix(m, seg) for m in maps.values()], labels, list(maps), title)


def dataset_behavior_view(analysis: Analysis, field: str) -> AttentionView:
    """Behavior i -> behavior j over all analysed samples (the `behavior_map` means), per token-level layer."""
    mean = analysis.arrays.get(f"behavior_map/{field}/mean")
    count = analysis.arrays.get(f"behavior_map/{field}/count")
    if mean is None or count is None:
        raise CtrSinkError(f"{analysis.path}: no behavior map for field {field!r}")
    layers = [int(i) for i in np.flatnonzero(count.reshape(count.shape[0], -1).sum(1) > 0)]
    return AttentionView(
        [np.nan_to_num(mean[i]) for i in layers],
        [f"b{k}" for k in range(mean.shape[-1])],
        layers,
        f"{field}: behavior -> behavior attention, mean over {analysis.manifest.get('samples', '?')} samples",
        "Content tokens only; row i is the mean over behavior i's tokens of the attention on behavior j's tokens.",
    )


def analysis_view(
    analysis: Analysis,
    sample_id: int | None = None,
    field: str | None = None,
    level: str = "token",
    max_tokens: int = MAX_TOKENS,
) -> AttentionView:
    """A view of a kept sample (default: the first) and field (default: the first history field)."""
    field = field or analysis.manifest["history_fields"][0]
    if level == "dataset":
        return dataset_behavior_view(analysis, field)
    if sample_id is None:
        kept = analysis.manifest.get("full_map_samples") or []
        if not kept:
            raise CtrSinkError(f"{analysis.path}: no samples with full maps (capture with --full-maps > 0)")
        sample_id = int(kept[0])
    tokens, maps = sample_tokens(analysis, sample_id, field), sample_maps(analysis, sample_id, field)
    run = Path(str(analysis.manifest.get("run_dir", ""))).name
    title = f"{run} · sample {sample_id} · field {field} · {analysis.manifest.get('anchor', '')} anchors"
    if level == "token":
        return token_view(maps, tokens, max_tokens=max_tokens, title=title)
    if level == "behavior":
        return behavior_view(maps, tokens, title=title)
    raise ValueError(f"level must be token, behavior or dataset, got {level!r}")


# ------------------------------------------------------------------------------------------------ html


def _vendor(name: str) -> str:
    return (VENDOR / name).read_text(encoding="utf-8")


def _script(js: str) -> str:
    """Inline script text: no URL scheme text (`:\\/\\/` is the same string to JS), no early `</script`."""
    js = re.sub(r"</(script)", r"<\\/\1", js, flags=re.I)
    return "<script>\n" + js.replace("://", ":\\/\\/") + "\n</script>\n"


def _license_comment() -> str:
    texts = []
    for name in LICENSES:
        body = re.sub(r"https?://", "", _vendor(name)).replace("--", "- -")
        texts.append(f"=== {name} ===\n{body.strip()}")
    return "<!--\nBundled libraries and their licenses:\n\n" + "\n\n".join(texts) + "\n-->\n"


def offline_page(fragment: str, title: str = "", note: str | None = None) -> str:
    """A standalone page from bertviz's `html_action='return'` HTML, with local d3/jQuery/require.js inlined."""
    if len(_CDN_SCRIPT.findall(fragment)) != 1 or len(_REQUIRE_CONFIG.findall(fragment)) != 1:
        raise ValueError(
            "unexpected bertviz HTML: expected one CDN require.js tag and one require.config block"
        )
    body = _REQUIRE_CONFIG.sub("", _CDN_SCRIPT.sub("", fragment))
    head, sep, rest = body.partition('<script type="text/javascript">')
    script, _, tail = rest.rpartition("</script>")  # the last tag: labels in the params may hold "</script>"
    if not sep:
        raise ValueError("unexpected bertviz HTML: no inline script")
    libs = "".join(_script(_vendor(name)) for name in SCRIPTS) + _script(AMD_SHIM)
    banner = f'<div class="sinkviz-note"><b>Note:</b> {_text(note)}</div>\n' if note else ""
    page = (
        '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_text(title or 'attention view')}</title>\n"
        "<style>body{font-family:Helvetica,Arial,sans-serif;margin:12px}"
        ".sinkviz-note{background:#fff3cd;border:1px solid #e0c36c;padding:6px 10px;margin:6px 0 10px;"
        "font-size:13px}</style>\n"
        f"{libs}</head>\n<body>\n<h3>{_text(title)}</h3>\n{banner}{head}{_script(script)}{tail}\n"
        f"{_license_comment()}</body>\n</html>\n"
    )
    if "http://" in page or "https://" in page:  # a guard for new bertviz or vendor versions
        raise ValueError("offline page still contains a URL")
    return page


def _text(s: str) -> str:
    return html.escape(s).replace("://", ":&#47;&#47;")


def view_html(view: AttentionView, kind: str = "head", display_mode: str = "light", digits: int = 4) -> str:
    """Standalone offline bertviz HTML (`kind` = head or model) for a view."""
    from bertviz import head_view, model_view

    attention = [
        torch.tensor(np.round(np.asarray(m, dtype=np.float64), digits))[None] for m in view.attention
    ]
    labels = [str(x) for x in view.labels]
    if kind == "head":
        fragment = head_view(attention, labels, html_action="return").data
    elif kind == "model":
        fragment = model_view(attention, labels, display_mode=display_mode, html_action="return").data
    else:
        raise ValueError(f"kind must be head or model, got {kind!r}")
    note = view.note or ""
    if view.layers != list(range(len(view.layers))):
        note = f"{note} Layer k in the menu is model layer {view.layers}[k].".strip()
    return offline_page(fragment, view.title, note or None)


def write_views(
    analysis: Analysis,
    out_dir: str | Path,
    samples: Sequence[int] | None = None,
    fields: Sequence[str] | None = None,
    levels: Sequence[str] = ("token", "behavior", "dataset"),
    kinds: Sequence[str] = ("head", "model"),
    max_tokens: int = MAX_TOKENS,
) -> list[Path]:
    """Write `{level}_{kind}_{field}[_s{sample}].html` pages and an `index.html` linking them (relative links)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fields = list(fields or analysis.manifest["history_fields"])
    samples = [
        int(s) for s in (samples if samples is not None else analysis.manifest.get("full_map_samples") or [])
    ]
    written = []
    for field in fields:
        for level in levels:
            for sid in [None] if level == "dataset" else samples:
                view = analysis_view(analysis, sid, field, level, max_tokens)
                for kind in kinds:
                    name = f"{level}_{kind}_{field}" + ("" if sid is None else f"_s{sid}") + ".html"
                    atomic_write_text(out / name, view_html(view, kind))
                    written.append(out / name)
    links = "".join(f'<li><a href="{html.escape(p.name)}">{html.escape(p.stem)}</a></li>\n' for p in written)
    atomic_write_text(
        out / "index.html",
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>attention views</title></head><body>'
        f"<h3>Attention views of {_text(str(analysis.path))}</h3><ul>\n{links}</ul></body></html>\n",
    )
    return written


# ------------------------------------------------------------------------------------------------ plotly


def history_fields_of(role_mass: pd.DataFrame) -> list[str]:
    """Fields with behavior-content queries (the history fields), in table order."""
    rows = role_mass[role_mass["query_role"] == "behavior"]
    return list(dict.fromkeys(rows["field"]))


def mass_by_layer(
    role_mass: pd.DataFrame,
    fields: Sequence[str] | None = None,
    query_roles: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Mean attention mass per layer on each key role: count-weighted over fields and query roles, mean over heads.

    Defaults: the history fields, every query role. -> columns layer, key_role, mass.
    """
    fields = list(fields) if fields is not None else history_fields_of(role_mass)
    rows = role_mass[role_mass["field"].isin(fields)]
    if query_roles is not None:
        rows = rows[rows["query_role"].isin(list(query_roles))]
    if rows.empty:
        return pd.DataFrame(columns=["layer", "key_role", "mass"])
    weighted = rows.assign(w=rows["mass"] * rows["count"])
    agg = weighted.groupby(["layer", "key_role"])[["w", "count"]].sum()
    return (agg["w"] / agg["count"]).rename("mass").reset_index()


def role_mass_figure(
    role_mass: pd.DataFrame | Mapping[str, pd.DataFrame],
    key_roles: Sequence[str] = ("sink", "separator", "behavior"),
    fields: Sequence[str] | None = None,
) -> go.Figure:
    """Attention mass per layer on sinks, separators and content; several labelled tables compare runs."""
    import plotly.graph_objects as go

    tables = {"": role_mass} if isinstance(role_mass, pd.DataFrame) else dict(role_mass)
    dashes = ["solid", "dash", "dot", "dashdot"]
    fig = go.Figure()
    for i, (label, table) in enumerate(tables.items()):
        mass = mass_by_layer(table, fields)
        for role in key_roles:
            part = mass[mass["key_role"] == role].sort_values("layer")
            if part.empty:
                continue
            fig.add_trace(
                go.Scatter(
                    x=part["layer"],
                    y=part["mass"],
                    mode="lines+markers",
                    name=f"{label}: {role}" if label else role,
                    line={"color": ROLE_COLORS.get(role), "dash": dashes[i % len(dashes)]},
                )
            )
    fig.update_layout(
        title="Attention mass per layer by key role (history fields, mean over queries and heads)",
        xaxis_title="layer",
        yaxis_title="attention mass",
        xaxis={"dtick": 1},
        template="plotly_white",
    )
    return fig


def inter_sink_frame(
    inter_sink: pd.DataFrame, layer: int, field: str | None = None, head: int | None = None
) -> pd.DataFrame:
    """Anchor-by-anchor mean attention (query rows, key columns) at one layer; heads averaged unless `head`."""
    rows = inter_sink[inter_sink["layer"] == layer]
    if field is None and not rows.empty:
        field = str(rows["field"].iloc[0])
    rows = rows[rows["field"] == field]
    if head is not None:
        rows = rows[rows["head"] == head]
    if rows.empty:
        return pd.DataFrame()
    grid = rows.groupby(["query_anchor", "key_anchor"])["mass"].mean().unstack("key_anchor")
    return grid.sort_index().sort_index(axis=1)


def inter_sink_heatmap(
    inter_sink: pd.DataFrame,
    layer: int,
    field: str | None = None,
    head: int | None = None,
    anchor: str = "sink",
) -> go.Figure:
    """Heatmap of attention among anchors (sinks, or separators for runs without sinks) at one layer."""
    import plotly.graph_objects as go

    grid = inter_sink_frame(inter_sink, layer, field, head)
    fig = go.Figure(
        go.Heatmap(
            z=grid.to_numpy() if not grid.empty else [[]],
            x=[f"{anchor} {k}" for k in grid.columns],
            y=[f"{anchor} {k}" for k in grid.index],
            colorscale="Viridis",
            colorbar={"title": "mass"},
        )
    )
    which = "mean over heads" if head is None else f"head {head}"
    fig.update_layout(
        title=f"Inter-{anchor} attention, layer {layer}, {which}",
        xaxis_title=f"key {anchor} (after behavior k)",
        yaxis_title=f"query {anchor}",
        yaxis={"autorange": "reversed"},
        template="plotly_white",
    )
    return fig


def behavior_label(field: str, behavior: int, role: str) -> str:
    if role == "behavior":
        return f"{field} b{behavior}"
    if behavior >= 0:
        return f"{field} {role} {behavior}"
    return f"{field} {role}"


def attribution_frame(
    attributions: pd.DataFrame, sample_id: int | None = None, roles: Sequence[str] = ("behavior",)
) -> pd.DataFrame:
    """One sample's rows (default: the first) of the given roles: label, method, attr_sum, in layout order."""
    if attributions.empty:
        return pd.DataFrame(columns=["label", "method", "attr_sum", "attr_abs"])
    sid = int(attributions["sample_id"].iloc[0]) if sample_id is None else int(sample_id)
    rows = attributions[(attributions["sample_id"] == sid) & attributions["role"].isin(list(roles))]
    labels = [behavior_label(f, int(b), r) for f, b, r in zip(rows["field"], rows["behavior"], rows["role"])]
    return rows.assign(label=labels)[["label", "method", "attr_sum", "attr_abs", "field", "behavior", "role"]]


def attribution_bar(
    attributions: pd.DataFrame, sample_id: int | None = None, roles: Sequence[str] = ("behavior",)
) -> go.Figure:
    """Per-behavior attribution of one sample's logit: integrated gradients next to the occlusion effect."""
    import plotly.graph_objects as go

    frame = attribution_frame(attributions, sample_id, roles)
    fig = go.Figure()
    for method, part in frame.groupby("method", sort=False):
        fig.add_trace(go.Bar(x=part["label"], y=part["attr_sum"], name=str(method)))
    sid = sample_id if sample_id is not None else (attributions["sample_id"].iloc[0] if len(frame) else "-")
    fig.update_layout(
        title=f"Attribution of the CTR logit per behavior, sample {sid}",
        barmode="group",
        yaxis_title="attribution (logit units)",
        template="plotly_white",
    )
    return fig
