"""Ablation grid: variants x seeds on identical data, one tidy table and a Markdown summary.

Each (variant, seed) is an ordinary run directory under ABL_DIR/runs/, so an interrupted grid resumes: finished
runs are read back, a half-finished one resumes from its last epoch, the rest start fresh.

Every Δ against `baseline` in the summary carries two intervals (`ctrsink.intervals`): a t-interval over seeds and a
paired bootstrap over the test split's users (seeds, then users within each seed), read from each run's
predictions_test.parquet. The variants include controls: the signal on the separators instead of sink tokens
(`carrier:separator+SIGNAL`) and the signal written as text with no sinks (`text:SIGNAL`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ctrsink.atomic import atomic_write_bytes, atomic_write_text
from ctrsink.config import Config, config_from_dict, config_to_yaml, load_config
from ctrsink.errors import CtrSinkError
from ctrsink.intervals import BOOTSTRAP_INTERVAL, METRICS, T_INTERVAL, seed_user_bootstrap, t_interval
from ctrsink.run import PREDICTIONS_TEST_FILE

log = logging.getLogger("ctrsink.ablate")
BOOTSTRAP_FILE = "bootstrap.parquet"  # per ablation: Δ and user-bootstrap bounds per variant and metric
USERS_FILE = (
    "users.parquet"  # per run: AUC between users vs within users (ctrsink.metrics.user_decomposition)
)
N_BOOT = 1000
BOOT_SEED = 0

_SIGNAL = {"use_sink": True, "sink_signal": "time_gap"}  # the paper's "temporal distance" signal


def _signal_values(name: str) -> dict[str, Any]:
    """'index_newest' -> index with newest-first ids; every other name is a sink_signal."""
    if name.startswith("index"):
        return {"sink_signal": "index", "index_origin": "newest" if name == "index_newest" else "oldest"}
    return {"sink_signal": name}


VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {"use_sink": False},
    "sink": {"use_sink": True},
    "sink+signal": dict(_SIGNAL),
    "sink+signal+two_stage": {**_SIGNAL, "two_stage": True},
    "full": {**_SIGNAL, "two_stage": True, "inter_sink": True},
    "cls_token": {"use_sink": True, "use_cls_token": True},
    "random_signal": {"use_sink": True, "sink_signal": "random"},
    "signal:none": {"use_sink": True, "sink_signal": "none"},
    "signal:index": {"use_sink": True, "sink_signal": "index", "index_origin": "oldest"},
    "signal:index_newest": {"use_sink": True, "sink_signal": "index", "index_origin": "newest"},
    "signal:time_gap": dict(_SIGNAL),
    "signal:similarity": {"use_sink": True, "sink_signal": "similarity"},
    "signal:random": {"use_sink": True, "sink_signal": "random"},
    # controls: the same signal embedding added to the separator after each behavior (no sink tokens) ...
    **{
        f"carrier:separator+{name}": {"signal_carrier": "separator", **_signal_values(name)}
        for name in ("none", "index", "index_newest", "time_gap", "similarity", "random")
    },
    # ... and no sinks, no signal embedding: the same signal written into each behavior's text
    "text:time_gap": {"behavior_signal_text": "time_gap"},
    "text:index": {"behavior_signal_text": "index", "index_origin": "oldest"},
    "text:index_newest": {"behavior_signal_text": "index", "index_origin": "newest"},
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
    # controls (issue 12): is it the sink token, or the information it carries?
    "carrier:separator+time_gap",
    "text:time_gap",
    "signal:index",
    "signal:index_newest",
    "text:index",
]
SINK_KEYS = (
    "use_sink",
    "sink_signal",
    "use_cls_token",
    "two_stage",
    "inter_sink",
    "signal_carrier",
    "behavior_signal_text",
)
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
    # seed-major: a grid stopped part-way has every variant at the first seeds, not some variants at all seeds
    for seed in seeds:
        for variant in variants:
            run = out / "runs" / run_dir_name(variant, seed)
            if (run / "final_metrics.json").is_file():
                log.info("%s seed %d: done, reading back", variant, seed)
                continue
            cfg = config_from_dict({**configs[variant].to_dict(), "seed": seed})
            log.info("%s seed %d: training -> %s", variant, seed, run)
            train(data_dir, cfg, run)
    table = collect(out, variants, seeds)
    costs = collect_costs(out, variants, seeds)
    boot = ablation_intervals(out, variants, seeds)
    users = user_table(out, variants, seeds)
    atomic_write_bytes(out / "ablation.parquet", table.to_parquet(index=False))
    atomic_write_bytes(out / "costs.parquet", costs.to_parquet(index=False))
    atomic_write_bytes(out / BOOTSTRAP_FILE, boot.to_parquet(index=False))
    atomic_write_bytes(out / USERS_FILE, users.to_parquet(index=False))
    atomic_write_text(out / "summary.md", summarize(table, costs, boot, users))
    return table


def summarize_dir(out_dir: str | Path, variants: list[str] | None = None, against: str = "baseline") -> str:
    """The summary of an ablation folder's tables, restricted to `variants` (in that order) when given, every Δ
    taken against the variant `against` (a control, say, instead of the baseline)."""
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
    if against not in set(table["variant"]):
        raise CtrSinkError(f"option '--against': {against!r} is not among the summarized variants")
    if against == "baseline":
        intervals = _stored_intervals(out, table)
    else:  # bootstrap.parquet holds Δ against the baseline only: compute these, do not store them
        seeds = sorted({int(s) for s in table["seed"]})
        intervals = ablation_intervals(out, list(dict.fromkeys(table["variant"])), seeds, against=against)
    return summarize(table, costs, intervals, _stored_users(out, table), against=against)


def _stored_intervals(out: Path, table: pd.DataFrame) -> pd.DataFrame | None:
    """bootstrap.parquet when it covers the table's variants, else computed from the run folders (and stored);
    None when neither is possible (a table copied without its runs)."""
    variants = list(dict.fromkeys(table["variant"]))
    path = out / BOOTSTRAP_FILE
    if path.is_file():
        stored = pd.read_parquet(path)
        if set(variants) - {"baseline"} <= set(stored["variant"]):
            return stored
    seeds = sorted({int(s) for s in table["seed"]})
    try:
        boot = ablation_intervals(out, variants, seeds)
    except CtrSinkError as exc:
        log.warning("no user-bootstrap intervals: %s", exc)
        return None
    atomic_write_bytes(path, boot.to_parquet(index=False))
    return boot


def _stored_users(out: Path, table: pd.DataFrame) -> pd.DataFrame | None:
    """users.parquet when it covers the table's runs, else computed from the run folders (and stored); None when
    the runs' test predictions are not there."""
    variants = list(dict.fromkeys(table["variant"]))
    seeds = sorted({int(s) for s in table["seed"]})
    path = out / USERS_FILE
    if path.is_file():
        stored = pd.read_parquet(path)
        if set(variants) <= set(stored["variant"]):
            return stored[stored["variant"].isin(variants)]
    try:
        users = user_table(out, variants, seeds)
    except (CtrSinkError, OSError) as exc:
        log.warning("no between/within-user table: %s", exc)
        return None
    atomic_write_bytes(path, users.to_parquet(index=False))
    return users


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
    # seed-major: a grid stopped part-way has every variant at the first seeds, not some variants at all seeds
    for seed in seeds:
        for variant in variants:
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


# ------------------------------------------------------------------------------------ intervals over users


def run_predictions(run: Path) -> pd.DataFrame:
    """A run's test predictions at its best checkpoint (sample_id, user_id, user_code, label, logit): the run's
    predictions_test.parquet, or for runs trained before training wrote it, the same rows scored now and cached."""
    path = run / PREDICTIONS_TEST_FILE
    if path.is_file():
        return pd.read_parquet(path)
    pred = score_evaluated_test(run)
    atomic_write_bytes(path, pred.to_parquet(index=False))
    return pred


def score_evaluated_test(run: Path) -> pd.DataFrame:
    """Score the test rows the run was evaluated on (training's seeded `eval_samples` subset, not the whole split)
    with the pooling of its test row; user codes as training assigned them."""
    from ctrsink.run import load_run, score_rows
    from ctrsink.sampling import load_samples  # the subsets training read, by the same rule

    bundle = load_run(run)
    frames = load_samples(bundle.info["data_dir"], bundle.cfg).frames
    users = sorted(pd.concat([f["user_id"].astype(str) for f in frames.values()]).unique())  # as training
    codes = {u: i for i, u in enumerate(users)}
    test = frames["test"]
    rows = test.to_dict("records")
    for r in rows:
        r["user_code"] = codes[str(r["user_id"])]
    logits = score_rows(bundle, rows, pooling=_test_pooling(run))
    return pd.DataFrame(
        {
            "sample_id": test["sample_id"].to_numpy(),
            "user_id": test["user_id"].astype(str).to_numpy(),
            "user_code": [r["user_code"] for r in rows],
            "label": test["label"].to_numpy(),
            "logit": logits.astype(np.float64),
        }
    )


def _test_pooling(run: Path) -> str:
    """The pooling of the run's test row (metrics.jsonl, stage 'best')."""
    for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if r.get("stage") == "best" and r.get("split") == "test":
            return r.get("pooling") or "all_tokens"
    return "all_tokens"


BOOT_COLUMNS = ["variant", "metric", "delta", "lo", "hi", "seeds", "users", "n_boot"]
USER_COLUMNS = [
    "variant",
    "seed",
    "auc",
    "between_auc",
    "within_gauc",
    "user_rate_corr",
    "oracle_between_auc",
]


def user_table(out: Path, variants: list[str], seeds: list[int]) -> pd.DataFrame:
    """Per run: its test AUC split into what ranking users gives (`between_auc`) and what ranking each user's
    items gives (`within_gauc`), from its test predictions (`ctrsink.metrics.user_decomposition`)."""
    from ctrsink.metrics import auc, user_decomposition

    rows = []
    for variant in variants:
        for seed in seeds:
            pred = run_predictions(out / "runs" / run_dir_name(variant, seed))
            label, prob = pred["label"].to_numpy(), 1.0 / (1.0 + np.exp(-pred["logit"].to_numpy(np.float64)))
            parts = user_decomposition(label, prob, pred["user_id"].astype(str).to_numpy())
            rows.append({"variant": variant, "seed": seed, "auc": auc(label, prob), **parts})
    return pd.DataFrame(rows, columns=USER_COLUMNS)


def ablation_intervals(
    out: Path,
    variants: list[str],
    seeds: list[int],
    n_boot: int = N_BOOT,
    seed: int = BOOT_SEED,
    against: str = "baseline",
) -> pd.DataFrame:
    """Per variant and metric: Δ against the variant `against` and its paired user bootstrap interval over the
    grid's seeds (`ctrsink.intervals.seed_user_bootstrap`). Every variant uses the same bootstrap seed, so the same
    draws of users: their intervals differ by the variants, not by the luck of the draw."""
    if against not in variants:
        return pd.DataFrame(columns=BOOT_COLUMNS)
    base = {s: run_predictions(out / "runs" / run_dir_name(against, s)) for s in seeds}
    rows = []
    for variant in variants:
        if variant == against:
            continue
        pairs = [(run_predictions(out / "runs" / run_dir_name(variant, s)), base[s]) for s in seeds]
        users = float(np.mean([p["user_id"].nunique() for p, _ in pairs]))
        for metric in METRICS:
            delta, lo, hi = seed_user_bootstrap(pairs, metric, n_boot, seed)
            rows.append([variant, metric, delta, lo, hi, len(seeds), users, n_boot])
    return pd.DataFrame(rows, columns=BOOT_COLUMNS)


# ------------------------------------------------------------------------------------------------ summaries


def summary_table(
    table: pd.DataFrame,
    costs: pd.DataFrame | None = None,
    intervals: pd.DataFrame | None = None,
    against: str = "baseline",
) -> pd.DataFrame:
    """Test metrics at each run's best epoch: mean and 95% t-interval over seeds per variant, Δ to baseline paired
    by seed (`{metric}_diff`, `_diff_ci95`) and, given `intervals` (`ablation_intervals`), the paired user
    bootstrap's Δ and bounds (`{metric}_diff_boot`, `_diff_lo`, `_diff_hi`)."""
    test = table[(table["split"] == "test") & (table["stage"] == "best")]
    base = test[test["variant"] == against].set_index("seed")
    rows = []
    for variant, group in test.groupby("variant", sort=False):
        row: dict[str, Any] = {"variant": variant, "seeds": len(group)}
        for metric in METRICS:
            row[metric], row[f"{metric}_ci95"] = t_interval(group[metric].to_numpy(dtype=float))
            if len(base) and variant != against:
                paired = group.set_index("seed")[metric] - base[metric]
                row[f"{metric}_diff"], row[f"{metric}_diff_ci95"] = t_interval(
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
    if intervals is not None and len(intervals) and len(out):
        out = out.merge(_wide_intervals(intervals), on="variant", how="left")
    if costs is not None and len(costs) and len(out):
        cost = costs.groupby("variant", sort=False)[COST_COLUMNS[3:]].mean().reset_index()
        out = out.merge(cost, on="variant", how="left")
    return out


def _wide_intervals(intervals: pd.DataFrame) -> pd.DataFrame:
    wide = intervals.pivot(index="variant", columns="metric", values=["delta", "lo", "hi"])
    wide.columns = [f"{metric}_diff_{'boot' if part == 'delta' else part}" for part, metric in wide.columns]
    wide["boot_users"] = intervals.groupby("variant")["users"].first()
    return wide.reset_index()


def _fmt(mean: float, half: float) -> str:
    return "n/a" if np.isnan(mean) else (f"{mean:.4f}" if np.isnan(half) else f"{mean:.4f} ± {half:.4f}")


def _fmt_diff(r: pd.Series, metric: str, against: str) -> str:
    """'+0.0123 ± 0.0150 [+0.0040, +0.0290]': Δ with its t-interval over seeds, then the user bootstrap's."""
    if r["variant"] == against:
        return "—"
    mean, half = r.get(f"{metric}_diff", np.nan), r.get(f"{metric}_diff_ci95", np.nan)
    if np.isnan(mean):
        return "n/a"
    text = f"{mean:+.4f}" + ("" if np.isnan(half) else f" ± {half:.4f}")
    lo, hi = r.get(f"{metric}_diff_lo", np.nan), r.get(f"{metric}_diff_hi", np.nan)
    return text + ("" if np.isnan(lo) else f" [{lo:+.4f}, {hi:+.4f}]")


def summarize(
    table: pd.DataFrame,
    costs: pd.DataFrame | None = None,
    intervals: pd.DataFrame | None = None,
    user_parts: pd.DataFrame | None = None,
    against: str = "baseline",
) -> str:
    s = summary_table(table, costs, intervals, against)
    with_cost = "parameters" in s.columns
    with_boot = "auc_diff_lo" in s.columns
    lines = [
        f"| variant | seeds | test AUC | Δ AUC vs {against} | test gAUC | Δ gAUC | test LogLoss | Δ LogLoss "
        "| train s/run |" + (" params | MFLOPs/sample b1 | b100 | train samples/s |" if with_cost else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|---|---|---|" if with_cost else ""),
    ]
    for _, r in s.iterrows():
        lines.append(
            f"| {r['variant']} | {r['seeds']} | {_fmt(r['auc'], r['auc_ci95'])} | {_fmt_diff(r, 'auc', against)} | "
            f"{_fmt(r['gauc'], r['gauc_ci95'])} | {_fmt_diff(r, 'gauc', against)} | "
            f"{_fmt(r['logloss'], r['logloss_ci95'])} | {_fmt_diff(r, 'logloss', against)} | {r['train_seconds']:.0f} |"
            + (
                f" {r['parameters']:,.0f} | {r['flops_per_sample_b1'] / 1e6:,.1f} | "
                f"{r['flops_per_sample_b100'] / 1e6:,.1f} | {r['train_samples_per_s']:.0f} |"
                if with_cost
                else ""
            )
        )
    users = s["boot_users"].dropna() if with_boot else pd.Series(dtype=float)
    lines.append("")
    lines.append(
        f"Test metrics at each run's best validation epoch: mean ± half-width of a {T_INTERVAL}. Δ is against "
        f"`{against}`, paired by seed, with the half-width of a {T_INTERVAL}"
        + (
            f" and, in brackets, a {BOOTSTRAP_INTERVAL}: {N_BOOT} replicates draw seeds with replacement, then "
            f"the test split's users (about {users.mean():.0f} per seed) with replacement within each drawn seed, "
            "scoring both runs on the same drawn users. A gain that is real for users excludes 0 in brackets."
            if with_boot and len(users)
            else " (no user-bootstrap interval: the runs' test predictions were not available)."
        )
        + (
            " Parameters and FLOPs per sample (2 per multiply-add, batch 1 and one request of 100 candidates, "
            "where folding rows compute the user side once) from each run's run.json; training samples/s is "
            "the median epoch's, measured while other jobs may have shared the cores."
            if with_cost
            else ""
        )
    )
    if user_parts is not None and len(user_parts):
        lines += _users_lines(user_parts)
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


def _users_lines(users: pd.DataFrame) -> list[str]:
    mean = users.groupby("variant", sort=False)[USER_COLUMNS[2:]].mean()
    lines = [
        "",
        "Between users and within users (test, mean over seeds): `AUC of user means` scores each row by its user's "
        "mean prediction, what telling users apart alone gives; gAUC is the ranking within each user; `corr` is "
        "the correlation over users of the mean prediction with the user's positive rate. Ranking rows by the "
        f"observed user rate itself gives {mean['oracle_between_auc'].iloc[0]:.4f}. A gain in AUC without one in "
        "gAUC is a gain between users.",
        "",
        "| variant | test AUC | AUC of user means | gAUC | corr(user mean, user rate) |",
        "|---|---|---|---|---|",
    ]
    for variant, r in mean.iterrows():
        lines.append(
            f"| {variant} | {r['auc']:.4f} | {r['between_auc']:.4f} | {r['within_gauc']:.4f} | "
            f"{r['user_rate_corr']:.3f} |"
        )
    return lines
