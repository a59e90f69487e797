"""Ablation grid: variants x seeds on identical data, one tidy table and a Markdown summary.

Each (variant, seed) is an ordinary run directory under ABL_DIR/runs/, so an interrupted grid resumes: finished
runs are read back, a half-finished one resumes from its last epoch, the rest start fresh.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ctrsink.config import Config, config_from_dict, config_to_yaml, load_config
from ctrsink.errors import CtrSinkError
from ctrsink.io import atomic_write_bytes, atomic_write_text

log = logging.getLogger("ctrsink.ablate")

_SIGNAL = {"use_sink": True, "sink_signal": "time_gap"}  # the paper's "temporal distance" signal
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {"use_sink": False},
    "sink": {"use_sink": True},
    "sink+signal": dict(_SIGNAL),
    "sink+signal+two_stage": {**_SIGNAL, "two_stage": True},
    "full": {**_SIGNAL, "two_stage": True, "inter_sink": True},
    "cls_token": {"use_sink": True, "use_cls_token": True},
    "random_signal": {"use_sink": True, "sink_signal": "random"},
    "signal:none": {"use_sink": True, "sink_signal": "none"},
    "signal:index": {"use_sink": True, "sink_signal": "index"},
    "signal:time_gap": dict(_SIGNAL),
    "signal:similarity": {"use_sink": True, "sink_signal": "similarity"},
    "signal:random": {"use_sink": True, "sink_signal": "random"},
    # ID-based comparison rows on the same samples (ctrsink/idmodels): "-lite" = our re-implementations
    "din": {"model": "din"},
    "sparsectr_lite": {"model": "sparsectr_lite"},
    "srp4ctr_lite": {"model": "srp4ctr_lite"},
}
DEFAULT_VARIANTS = [
    "baseline",
    "sink",
    "sink+signal",
    "sink+signal+two_stage",
    "full",
    "cls_token",
    "random_signal",
]
SINK_KEYS = ("use_sink", "sink_signal", "use_cls_token", "two_stage", "inter_sink")
VARIANT_KEYS = ("model", *SINK_KEYS)  # what a variant decides; the base config decides the rest
TABLE_COLUMNS = [
    "variant",
    "seed",
    "stage",
    "epoch",
    "split",
    "pooling",
    "auc",
    "logloss",
    "gauc",
    "calibration",
    "n",
    "train_seconds",
]


def variant_config(base: Config, name: str) -> Config:
    if name not in VARIANTS:
        raise CtrSinkError(f"option '--variants': unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    values = base.to_dict()
    for key in VARIANT_KEYS:  # a variant fully decides the model and its sink components
        values.pop(key)
    values.update(VARIANTS[name])
    return config_from_dict(values)


def run_dir_name(variant: str, seed: int) -> str:
    return f"{variant.replace('+', '_').replace(':', '-')}/seed{seed}"


def ablate(
    data_dir: str | Path, base: Config, variants: list[str], seeds: list[int], out_dir: str | Path
) -> pd.DataFrame:
    from ctrsink.train import train

    out = Path(out_dir)
    configs = {v: variant_config(base, v) for v in variants}  # validate every variant before training any
    if not seeds:
        raise CtrSinkError("option '--seeds': give at least one seed, e.g. --seeds 1,2,3")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out / "grid.json",
        json.dumps(
            {
                "data": str(Path(data_dir).resolve()),
                "variants": variants,
                "seeds": seeds,
                "base": base.to_dict(),
            },
            indent=1,
        ),
    )
    atomic_write_text(out / "base_config.yaml", config_to_yaml(base))
    for variant in variants:
        for seed in seeds:
            run = out / "runs" / run_dir_name(variant, seed)
            if (run / "final_metrics.json").is_file():
                log.info("%s seed %d: done, reading back", variant, seed)
                continue
            cfg = config_from_dict({**configs[variant].to_dict(), "seed": seed})
            log.info("%s seed %d: training -> %s", variant, seed, run)
            train(data_dir, cfg, run)
    table = collect(out, variants, seeds)
    costs = collect_costs(out, variants, seeds)
    atomic_write_bytes(out / "ablation.parquet", table.to_parquet(index=False))
    atomic_write_bytes(out / "costs.parquet", costs.to_parquet(index=False))
    atomic_write_text(out / "summary.md", summarize(table, costs))
    return table


def summarize_dir(out_dir: str | Path, variants: list[str] | None = None) -> str:
    """The summary of an ablation folder's tables, restricted to `variants` (in that order) when given."""
    out = Path(out_dir)
    path = out / "ablation.parquet"
    if not path.is_file():
        raise CtrSinkError(f"{out} holds no ablation.parquet; run `ctrsink ablate --out {out}` first")
    table = pd.read_parquet(path)
    costs = pd.read_parquet(out / "costs.parquet") if (out / "costs.parquet").is_file() else None
    if variants:
        missing = [v for v in variants if v not in set(table["variant"])]
        if missing:
            raise CtrSinkError(f"option '--variants': {', '.join(missing)} not in {path}")
        order = {v: i for i, v in enumerate(variants)}
        table = table[table["variant"].isin(order)].sort_values(
            "variant", key=lambda c: c.map(order), kind="stable"
        )
        costs = costs[costs["variant"].isin(order)] if costs is not None else None
    return summarize(table, costs)


def collect(out: Path, variants: list[str], seeds: list[int]) -> pd.DataFrame:
    rows = []
    for variant in variants:
        for seed in seeds:
            path = out / "runs" / run_dir_name(variant, seed) / "metrics.jsonl"
            for line in path.read_text(encoding="utf-8").splitlines():
                r = json.loads(line)
                rows.append({"variant": variant, "seed": seed, **{k: r.get(k) for k in TABLE_COLUMNS[2:]}})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


COST_COLUMNS = [
    "variant",
    "seed",
    "model",
    "parameters",
    "flops_per_sample_b1",
    "flops_per_sample_b100",
    "train_samples_per_s",
]


def run_cost(run: Path, info: dict[str, Any]) -> dict[str, Any]:
    """A run's cost record (`info` = its run.json); runs recorded by an older counter get it computed once, cached
    in cost.json."""
    from ctrsink.cost import COST_VERSION, model_cost

    if info.get("cost", {}).get("version") == COST_VERSION:
        return info["cost"]
    cached = run / "cost.json"
    if cached.is_file():
        cost = json.loads(cached.read_text(encoding="utf-8"))
        if cost.get("version") == COST_VERSION:
            return cost
    from ctrsink.data import load_sample_set
    from ctrsink.run import load_run

    bundle = load_run(run)
    splits, _, _ = load_sample_set(info["data_dir"])
    cost = model_cost(bundle.model, bundle.batcher, splits["valid"].slice(0, 2000).to_pandas())
    atomic_write_text(cached, json.dumps(cost, indent=1))
    return cost


def collect_costs(out: Path, variants: list[str], seeds: list[int]) -> pd.DataFrame:
    """One row per run: model, parameters, FLOPs per sample (batch 1 / one request of 100), training samples/s."""
    rows = []
    for variant in variants:
        for seed in seeds:
            run = out / "runs" / run_dir_name(variant, seed)
            info = json.loads((run / "run.json").read_text(encoding="utf-8"))
            cost = run_cost(run, info)
            epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            seconds = [
                r["train_seconds"] for r in epochs if r.get("split") == "valid" and r.get("train_seconds")
            ]
            per_epoch = float(np.median(seconds)) if seconds else float("nan")
            rows.append(
                {
                    "variant": variant,
                    "seed": seed,
                    "model": load_config(run / "config.yaml").model,
                    "parameters": cost["parameters"],
                    "flops_per_sample_b1": cost["flops_per_sample_b1"],
                    "flops_per_sample_b100": cost["flops_per_sample_b100"],
                    "train_samples_per_s": info["sizes"]["train"] / per_epoch if seconds else float("nan"),
                }
            )
    return pd.DataFrame(rows, columns=COST_COLUMNS)


def _interval(values: np.ndarray) -> tuple[float, float]:
    """Mean and half-width of a 95% t-interval over seeds (NaN half-width with one seed)."""
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    if len(values) == 1:
        return float(values[0]), float("nan")
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean()), float(half)


def summary_table(table: pd.DataFrame, costs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Test metrics at each run's best epoch: mean and 95% interval per variant, difference to baseline by seed."""
    test = table[(table["split"] == "test") & (table["stage"] == "best")]
    base = test[test["variant"] == "baseline"].set_index("seed")
    rows = []
    for variant, group in test.groupby("variant", sort=False):
        row: dict[str, Any] = {"variant": variant, "seeds": len(group)}
        for metric in ("auc", "logloss", "gauc"):
            row[metric], row[f"{metric}_ci95"] = _interval(group[metric].to_numpy(dtype=float))
            if len(base) and variant != "baseline":
                paired = group.set_index("seed")[metric] - base[metric]
                row[f"{metric}_diff"], row[f"{metric}_diff_ci95"] = _interval(
                    paired.dropna().to_numpy(dtype=float)
                )
        row["train_seconds"] = float(
            table[(table["variant"] == variant) & (table["split"] == "valid")]
            .groupby("seed")["train_seconds"]
            .sum()
            .mean()
        )
        rows.append(row)
    out = pd.DataFrame(rows)
    if costs is not None and len(costs) and len(out):
        cost = costs.groupby("variant", sort=False)[COST_COLUMNS[3:]].mean().reset_index()
        out = out.merge(cost, on="variant", how="left")
    return out


def summarize(table: pd.DataFrame, costs: pd.DataFrame | None = None) -> str:
    s = summary_table(table, costs)
    with_cost = "parameters" in s.columns

    def fmt(mean: float, half: float) -> str:
        return "n/a" if np.isnan(mean) else (f"{mean:.4f}" if np.isnan(half) else f"{mean:.4f} ± {half:.4f}")

    lines = [
        "| variant | seeds | test AUC | Δ AUC vs baseline | test LogLoss | Δ LogLoss | test gAUC | train s/run |"
        + (" params | MFLOPs/sample b1 | b100 | train samples/s |" if with_cost else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|---|---|---|" if with_cost else ""),
    ]
    for _, r in s.iterrows():
        d_auc = (
            fmt(r.get("auc_diff", np.nan), r.get("auc_diff_ci95", np.nan))
            if r["variant"] != "baseline"
            else "—"
        )
        d_ll = (
            fmt(r.get("logloss_diff", np.nan), r.get("logloss_diff_ci95", np.nan))
            if r["variant"] != "baseline"
            else "—"
        )
        lines.append(
            f"| {r['variant']} | {r['seeds']} | {fmt(r['auc'], r['auc_ci95'])} | {d_auc} | "
            f"{fmt(r['logloss'], r['logloss_ci95'])} | {d_ll} | {fmt(r['gauc'], r['gauc_ci95'])} | "
            f"{r['train_seconds']:.0f} |"
            + (
                f" {r['parameters']:,.0f} | {r['flops_per_sample_b1'] / 1e6:,.1f} | "
                f"{r['flops_per_sample_b100'] / 1e6:,.1f} | {r['train_samples_per_s']:.0f} |"
                if with_cost
                else ""
            )
        )
    lines.append("")
    lines.append(
        "Mean ± half-width of a 95% t-interval over seeds; Δ is paired by seed against `baseline`; "
        "test metrics at each run's best validation epoch."
        + (
            " Parameters and FLOPs per sample (2 per multiply-add, batch 1 and one request of 100 candidates, "
            "where folding rows compute the user side once) from each run's run.json; training samples/s is "
            "the median epoch's, measured while other jobs may have shared the cores."
            if with_cost
            else ""
        )
    )
    stage = (
        table[(table["split"] == "valid")].groupby(["variant", "stage", "pooling"])["auc"].max().reset_index()
    )
    if (stage["stage"] == "sink_only").any():
        lines += [
            "",
            "Best validation AUC per stage and pooling (mean over seeds of the per-run maximum):",
            "",
            "| variant | stage | pooling | valid AUC |",
            "|---|---|---|---|",
        ]
        per = (
            table[table["split"] == "valid"]
            .groupby(["variant", "seed", "stage", "pooling"])["auc"]
            .max()
            .groupby(["variant", "stage", "pooling"])
            .mean()
            .reset_index()
        )
        for _, r in per.iterrows():
            lines.append(f"| {r['variant']} | {r['stage']} | {r['pooling']} | {r['auc']:.4f} |")
    return "\n".join(lines) + "\n"
