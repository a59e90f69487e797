"""The paper's figures as PNG and PDF (matplotlib, no pyplot state, Agg canvas).

`make_figures(analysis, out_dir, compare=..., ablation=..., attributions=...)` writes:

role_mass        attention mass per layer on sinks, separators and content (baseline dashed against CTR-Sink)
inter_sink       attention among anchors (sinks, or separators without sinks) per layer, mean over heads
fragmentation    one sample's token-level attention map per run, behavior spans outlined
attributions     per-behavior attributions of one sample (integrated gradients and occlusion), |attr| share by role
ablation_auc     AUC per variant and stage (best validation AUC per stage, test AUC at the best epoch) and test gAUC,
                 error bars: the 95% t-interval over seeds of the ablation table (`ctrsink.intervals.t_interval`)

Analyses are read only through `sinkviz.artifacts.load_analysis`.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure

from ctrsink.atomic import atomic_write_bytes
from ctrsink.errors import CtrSinkError
from ctrsink.intervals import T_INTERVAL, t_interval
from sinkviz.artifacts import Analysis, load_analysis
from sinkviz.views import ROLE_COLORS, mass_by_layer, sample_maps, sample_tokens, token_groups_np

log = logging.getLogger("sinkviz.figures")
FORMATS = ("png", "pdf")
ABLATION_FILE = "ablation.parquet"
ABLATION_COLUMNS = ("variant", "seed", "stage", "epoch", "split", "pooling", "auc")
LINESTYLES = ("--", "-", ":", "-.")


# ------------------------------------------------------------------------------------------------ helpers


def run_label(analysis: Analysis) -> str:
    return "CTR-Sink" if analysis.manifest.get("use_sink") else "baseline"


def labelled(analyses: Sequence[Analysis]) -> dict[str, Analysis]:
    """{label: analysis}, runs without sinks first; labels get the folder name when two would clash."""
    ordered = sorted(analyses, key=lambda a: bool(a.manifest.get("use_sink")))
    labels = [run_label(a) for a in ordered]
    out = {}
    for a, label in zip(ordered, labels):
        out[f"{label} ({a.path.name})" if labels.count(label) > 1 else label] = a
    return out


def token_layers(analysis: Analysis) -> list[int]:
    return list(range(int(analysis.manifest.get("lower_layers", analysis.manifest["layers"]))))


def save(fig: Figure, out_dir: Path, name: str, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write `name.{fmt}` atomically for each format; PDFs carry no creation date (stable bytes)."""
    paths = []
    for fmt in formats:
        buf = io.BytesIO()
        meta = {"CreationDate": None} if fmt == "pdf" else {}
        fig.savefig(buf, format=fmt, dpi=150, bbox_inches="tight", metadata=meta)
        path = out_dir / f"{name}.{fmt}"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------------ figures


def fig_role_mass(
    analyses: Mapping[str, Analysis], roles: Sequence[str] = ("sink", "separator", "behavior")
) -> Figure:
    """Mass per layer that history-field queries put on sinks, separators and behavior content."""
    fig = Figure(layout="constrained", figsize=(6.4, 4.0))
    ax = fig.subplots()
    for i, (label, analysis) in enumerate(analyses.items()):
        mass = mass_by_layer(analysis["role_mass"])
        for role in roles:
            if role == "sink" and not analysis.manifest.get("use_sink"):
                continue  # a run without sinks has no sink tokens; its separators stand in
            part = mass[mass["key_role"] == role].sort_values("layer")
            if part.empty:
                continue
            ax.plot(
                part["layer"],
                part["mass"],
                LINESTYLES[i % len(LINESTYLES)] if len(analyses) > 1 else "-",
                marker="o",
                color=ROLE_COLORS[role],
                label=f"{label}: {'content' if role == 'behavior' else role}",
            )
    ax.set_xlabel("layer")
    ax.set_ylabel("attention mass per query")
    ax.set_title("Attention mass on sinks, separators and content (history fields)")
    ax.set_xticks(sorted({layer for a in analyses.values() for layer in token_layers(a)}))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def fig_inter_sink(
    analyses: Mapping[str, Analysis], field: str | None = None, max_anchors: int = 12
) -> Figure:
    """Anchor-by-anchor attention per token-level layer (rows: runs; columns: layers), mean over heads."""
    panels = []
    for label, analysis in analyses.items():
        f = field or analysis.manifest["history_fields"][0]
        mean = analysis.arrays.get(f"inter_sink/{f}/head_mean")
        if mean is None:
            continue
        for layer in token_layers(analysis):
            panels.append((label, analysis.manifest.get("anchor", "sink"), f, layer, mean[layer]))
    if not panels:
        raise CtrSinkError(
            "no inter-sink matrices in the analysis (histories with fewer than two behaviors?)"
        )
    rows = list(dict.fromkeys(p[0] for p in panels))
    cols = max(sum(1 for p in panels if p[0] == r) for r in rows)
    fig = Figure(layout="constrained", figsize=(2.8 * cols + 1, 2.6 * len(rows) + 0.6))
    axes = np.atleast_2d(fig.subplots(len(rows), cols, squeeze=False))
    for ax in axes.flat:
        ax.set_visible(False)
    vmax = max(float(np.nanmax(p[4])) if np.isfinite(p[4]).any() else 0.0 for p in panels) or 1.0
    image = None
    next_col = dict.fromkeys(rows, 0)
    for label, anchor, f, layer, matrix in panels:
        ax = axes[rows.index(label), next_col[label]]
        next_col[label] += 1
        ax.set_visible(True)
        m = matrix[:max_anchors, :max_anchors]
        image = ax.imshow(np.ma.masked_invalid(m), cmap="viridis", vmin=0, vmax=vmax)
        ax.set_title(f"{label} · {f} · layer {layer}", fontsize=9)
        ax.set_xlabel(f"key {anchor} k", fontsize=8)
        ax.set_ylabel(f"query {anchor} k", fontsize=8)
        ax.set_xticks(range(m.shape[1]))
        ax.set_yticks(range(m.shape[0]))
        ax.tick_params(labelsize=7)
    if image is not None:
        fig.colorbar(image, ax=list(axes.flat), shrink=0.8, label="attention mass")
    fig.suptitle("Attention among anchors (sink after behavior k; separator for runs without sinks)")
    return fig


def fragmentation_stats(attention: np.ndarray, tokens: pd.DataFrame) -> dict[str, float]:
    """For behavior-content queries: mean mass on their own behavior, on other behaviors, on sinks/separators."""
    roles = tokens["role"].to_numpy()
    groups = token_groups_np(tokens["role"].tolist(), tokens["behavior_index"].to_numpy())
    content = roles == "behavior"
    if not content.any():
        return {"own": float("nan"), "other": float("nan"), "anchors": float("nan")}
    mean = attention.mean(0)  # heads averaged
    q = np.flatnonzero(content)
    same = (groups[q][:, None] == groups[None, :]) & content[None, :]
    other = (groups[q][:, None] != groups[None, :]) & content[None, :]
    anchors = np.isin(roles, ["sink", "separator"])[None, :]
    rows = mean[q]
    return {
        "own": float((rows * same).sum(1).mean()),
        "other": float((rows * other).sum(1).mean()),
        "anchors": float((rows * anchors).sum(1).mean()),
    }


def _spans(tokens: pd.DataFrame) -> list[tuple[int, int, int]]:
    """(start, end, k) of each behavior's content run."""
    out = []
    roles, beh = tokens["role"].tolist(), tokens["behavior_index"].tolist()
    for i, (r, b) in enumerate(zip(roles, beh)):
        if r == "behavior" and (i == 0 or roles[i - 1] != "behavior" or beh[i - 1] != b):
            out.append([i, i + 1, b])
        elif r == "behavior":
            out[-1][1] = i + 1
    return [tuple(s) for s in out]


def choose_sample(analyses: Sequence[Analysis]) -> int:
    """The first sample with full maps in every analysis (else in the first one)."""
    kept = [list(a.manifest.get("full_map_samples") or []) for a in analyses]
    common = [s for s in kept[0] if all(s in k for k in kept[1:])]
    if common or kept[0]:
        return int((common or kept[0])[0])
    raise CtrSinkError("no sample with full attention maps (capture with --full-maps > 0)")


def fig_fragmentation(
    analyses: Mapping[str, Analysis],
    sample_id: int | None = None,
    field: str | None = None,
    layer: int | None = None,
) -> Figure:
    """One sample's head-averaged token attention per run, behavior spans outlined, sinks/separators marked."""
    items = list(analyses.items())
    sid = choose_sample([a for _, a in items]) if sample_id is None else sample_id
    fig = Figure(layout="constrained", figsize=(5.6 * len(items) + 0.8, 5.4))
    axes = np.atleast_1d(fig.subplots(1, len(items), squeeze=False)[0])
    panels = []
    for label, analysis in items:
        f = field or analysis.manifest["history_fields"][0]
        maps = sample_maps(analysis, sid, f)
        lay = max(maps) if layer is None else layer
        panels.append((label, f, lay, maps[lay], sample_tokens(analysis, sid, f)))
    # one colour scale for all runs, so a flatter map looks flatter
    norm = PowerNorm(0.5, vmin=0, vmax=max(max(float(p[3].mean(0).max()) for p in panels), 1e-9))
    image = None
    for ax, (label, f, lay, att, tokens) in zip(axes, panels):
        image = ax.imshow(att.mean(0), cmap="magma", norm=norm)
        for start, end, _k in _spans(tokens):
            ax.add_patch(_rect(start - 0.5, end - start, "#4fc3f7"))
        roles = tokens["role"].to_numpy()
        for role, color in (("sink", ROLE_COLORS["sink"]), ("separator", ROLE_COLORS["separator"])):
            for pos in np.flatnonzero(roles == role):
                ax.axvline(pos, color=color, lw=0.6, alpha=0.7)
        t = len(tokens)
        if t <= 60:
            ticks = tokens["token"].astype(str).tolist()
            ax.set_xticks(range(t), ticks, rotation=90, fontsize=5)
            ax.set_yticks(range(t), ticks, fontsize=5)
        else:
            spans = _spans(tokens)
            ax.set_xticks([(s + e - 1) / 2 for s, e, _ in spans], [f"b{k}" for _, _, k in spans], fontsize=7)
            ax.set_yticks([(s + e - 1) / 2 for s, e, _ in spans], [f"b{k}" for _, _, k in spans], fontsize=7)
        st = fragmentation_stats(att, tokens)
        ax.set_title(
            f"{label} · sample {sid} · {f} · layer {lay}\ncontent queries: own behavior {st['own']:.2f}, "
            f"other behaviors {st['other']:.2f}, sinks/separators {st['anchors']:.2f}",
            fontsize=8,
        )
        ax.set_xlabel("key token")
        ax.set_ylabel("query token")
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.8, label="attention (mean over heads)")
    fig.suptitle(
        "Semantic fragmentation: token attention within and across behaviors (boxes: behavior spans)"
    )
    return fig


def _rect(start: float, size: float, color: str):
    from matplotlib.patches import Rectangle

    return Rectangle((start, start), size, size, fill=False, edgecolor=color, lw=0.8)


def fig_attributions(attributions: pd.DataFrame, sample_id: int | None = None) -> Figure:
    """Left: one sample's behaviors, integrated gradients against occlusion. Right: share of |attr| by role."""
    from sinkviz.views import attribution_frame

    lig = attributions[attributions["method"] == "integrated_gradients"]
    sid = int(attributions["sample_id"].iloc[0]) if sample_id is None else int(sample_id)
    frame = attribution_frame(attributions, sid)
    fig = Figure(layout="constrained", figsize=(11, 4.2))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    labels = list(dict.fromkeys(frame["label"]))
    methods = list(dict.fromkeys(frame["method"]))
    width = 0.8 / max(len(methods), 1)
    for i, method in enumerate(methods):
        part = frame[frame["method"] == method].set_index("label").reindex(labels)
        left.bar(np.arange(len(labels)) + i * width, part["attr_sum"].fillna(0), width, label=method)
    left.set_xticks(np.arange(len(labels)) + width * (len(methods) - 1) / 2, labels, rotation=60, fontsize=7)
    left.axhline(0, color="black", lw=0.6)
    delta = lig[lig["sample_id"] == sid]["delta"]
    note = f" (|delta| {abs(float(delta.iloc[0])):.1e})" if len(delta) else ""
    left.set_title(f"Sample {sid}: attribution of the logit per behavior{note}", fontsize=9)
    left.set_ylabel("attribution (logit units)")
    left.legend(fontsize=8)
    share = lig.groupby(["sample_id", "role"])["attr_abs"].sum()
    share = (share / share.groupby("sample_id").transform("sum")).groupby("role").mean().sort_values()
    right.barh(share.index, share.to_numpy(), color=[ROLE_COLORS.get(r, "#999999") for r in share.index])
    right.set_title(
        f"Share of |attribution| by role (mean over {lig['sample_id'].nunique()} samples)", fontsize=9
    )
    right.set_xlabel("share")
    return fig


def ablation_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per variant and stage: mean and 95% t-interval over seeds (`ctrsink.intervals.t_interval`, the interval of
    the ablation table and the dashboard) of the AUC and gAUC at the epoch with the best validation AUC per stage
    and pooling, and at the best epoch on test. -> variant, stage, auc_mean, auc_ci95, gauc_mean, gauc_ci95, seeds
    (gAUC NaN when the table has none)."""
    missing = [c for c in ABLATION_COLUMNS if c not in table.columns]
    if missing:
        raise CtrSinkError(f"ablation table lacks column(s) {', '.join(missing)}")
    table = table if "gauc" in table.columns else table.assign(gauc=np.nan)
    valid = table[(table["split"] == "valid") & (table["stage"] != "best")]
    pooling = np.where(valid["pooling"] == "all_tokens", "", ", " + valid["pooling"].astype(str) + " pooling")
    valid = valid.assign(label="valid, " + valid["stage"].astype(str) + " epochs" + pooling)
    best = (
        valid.loc[valid.groupby(["variant", "label", "seed"], sort=False)["auc"].idxmax()]
        if len(valid)
        else valid
    )
    test = table[(table["split"] == "test") & (table["stage"] == "best")].assign(label="test (best epoch)")
    per_seed = pd.concat([best, test], ignore_index=True)
    rows = []
    for (variant, label), part in per_seed.groupby(["variant", "label"], sort=False):
        row = {"variant": variant, "stage": label, "seeds": int(part["auc"].notna().sum())}
        for metric in ("auc", "gauc"):
            row[f"{metric}_mean"], row[f"{metric}_ci95"] = t_interval(part[metric].to_numpy(dtype=float))
        rows.append(row)
    columns = ["variant", "stage", "auc_mean", "auc_ci95", "gauc_mean", "gauc_ci95", "seeds"]
    return pd.DataFrame(rows, columns=columns)


def fig_ablation(table: pd.DataFrame) -> Figure:
    """Left: AUC per variant (x) and stage (colour); right: test gAUC per variant. Error bars: 95% t-interval over
    seeds (none with one seed)."""
    summary = ablation_summary(table)
    variants = list(dict.fromkeys(table["variant"]))
    stages = list(dict.fromkeys(summary["stage"]))
    stages = [s for s in stages if not s.startswith("test")] + [s for s in stages if s.startswith("test")]
    fig = Figure(
        layout="constrained", figsize=(max(6.0, 1.2 * len(variants) + 2) + 0.5 * len(variants) + 2, 4.2)
    )
    ax, gax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / max(len(stages), 1)
    for i, stage in enumerate(stages):
        part = summary[summary["stage"] == stage].set_index("variant").reindex(variants)
        x = np.arange(len(variants)) + i * width
        bars = ax.bar(x, part["auc_mean"], width, yerr=part["auc_ci95"].fillna(0), capsize=2, label=stage)
        if stage.startswith("test"):
            ax.bar_label(
                bars, labels=[f"{v:.3f}" if np.isfinite(v) else "" for v in part["auc_mean"]], fontsize=6
            )
    _ylim(ax, summary["auc_mean"])
    ax.set_xticks(np.arange(len(variants)) + width * (len(stages) - 1) / 2, variants, rotation=30, ha="right")
    ax.set_ylabel("AUC")
    seeds = int(summary["seeds"].max()) if len(summary) else 0
    ax.set_title(
        f"AUC per variant and stage (mean over {seeds} seed(s), error bars: {T_INTERVAL})", fontsize=9
    )
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    test = summary[summary["stage"].str.startswith("test")].set_index("variant").reindex(variants)
    bars = gax.bar(
        np.arange(len(variants)), test["gauc_mean"], 0.6, yerr=test["gauc_ci95"].fillna(0), capsize=2
    )
    gax.bar_label(bars, labels=[f"{v:.3f}" if np.isfinite(v) else "" for v in test["gauc_mean"]], fontsize=6)
    _ylim(gax, test["gauc_mean"])
    gax.set_xticks(np.arange(len(variants)), variants, rotation=30, ha="right")
    gax.set_ylabel("gAUC")
    gax.set_title("test gAUC (best epoch)", fontsize=9)
    gax.grid(axis="y", alpha=0.3)
    return fig


def _ylim(ax, values: pd.Series) -> None:
    values = values.dropna()
    if len(values):
        ax.set_ylim(max(0.0, float(values.min()) - 0.03), min(1.0, float(values.max()) + 0.03))


# ------------------------------------------------------------------------------------------------ driver


def load_ablation(path: str | Path) -> pd.DataFrame:
    """`ABL_DIR/ablation.parquet` (or the file itself)."""
    path = Path(path)
    file = path / ABLATION_FILE if path.is_dir() else path
    if not file.is_file():
        raise CtrSinkError(f"no ablation table at {file}; create one with `ctrsink ablate`")
    return pd.read_parquet(file)


def make_figures(
    analysis: str | Path,
    out_dir: str | Path,
    compare: str | Path | None = None,
    ablation: str | Path | None = None,
    attributions: str | Path | None = None,
    *,
    sample_id: int | None = None,
    field: str | None = None,
    layer: int | None = None,
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Write every figure the inputs allow; -> the written files. Attributions default to the analysis folder's."""
    from sinkviz.attribution import BEHAVIORS_FILE, load_attributions

    loaded = [load_analysis(analysis)] + ([load_analysis(compare)] if compare else [])
    table = load_ablation(ablation) if ablation is not None else None
    analyses = labelled(loaded)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = save(fig_role_mass(analyses), out, "role_mass", formats)
    written += save(fig_inter_sink(analyses, field), out, "inter_sink", formats)
    if any(a.full_maps for a in loaded):
        written += save(fig_fragmentation(analyses, sample_id, field, layer), out, "fragmentation", formats)
    else:
        log.warning("no full attention maps in the analysis: skipping the fragmentation figure")
    attr_path = attributions or next(
        (a.path / BEHAVIORS_FILE for a in loaded if (a.path / BEHAVIORS_FILE).is_file()), None
    )
    if attr_path is not None:
        written += save(fig_attributions(load_attributions(attr_path)), out, "attributions", formats)
    if table is not None:
        written += save(fig_ablation(table), out, "ablation_auc", formats)
    return written
