"""Ablation runner: identical data and seeds per variant, tidy table, summary, and resume of a half-finished grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ctrsink.ablate import (
    TABLE_COLUMNS,
    VARIANTS,
    ablate,
    ablation_intervals,
    run_dir_name,
    summarize,
    summarize_dir,
    summary_table,
    variant_config,
)
from ctrsink.config import load_config
from ctrsink.errors import CtrSinkError

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "train_samples=96",
    "eval_samples=64",
    "epochs=2",
    "stage1_epochs=1",
    "stage2_epochs=1",
    "num_behaviors=4",
    "scratch_hidden=32",
    "num_threads=1",
]


@pytest.fixture(scope="module")
def data(sample_data_dir: Path) -> Path:
    return sample_data_dir


def test_variants_switch_only_sink_components() -> None:
    base = load_config(None, ["lr=3e-4", "use_sink=true", "inter_sink=true", "two_stage=true"])
    assert variant_config(base, "baseline").use_sink is False
    full = variant_config(base, "full")
    assert (full.use_sink, full.sink_signal, full.two_stage, full.inter_sink) == (
        True,
        "time_gap",
        True,
        True,
    )
    assert full.lr == base.lr and variant_config(base, "cls_token").use_cls_token
    assert {
        "baseline",
        "sink",
        "sink+signal",
        "sink+signal+two_stage",
        "full",
        "cls_token",
        "random_signal",
    } <= set(VARIANTS)
    with pytest.raises(CtrSinkError, match="unknown variant"):
        variant_config(base, "sinks")


def test_grid_writes_tidy_table_and_resumes(data: Path, tmp_path: Path) -> None:
    base = load_config(None, TINY)
    out = tmp_path / "grid"
    table = ablate(data, base, ["baseline", "full"], [1, 2], out)
    assert list(table.columns) == TABLE_COLUMNS
    assert set(table["variant"]) == {"baseline", "full"} and set(table["seed"]) == {1, 2}
    test_rows = table[(table["split"] == "test") & (table["stage"] == "best")]
    assert len(test_rows) == 4 and test_rows["auc"].between(0, 1).all()
    assert {"sink_only", "all_tokens"} <= set(table.loc[table["variant"] == "full", "stage"])
    assert pd.read_parquet(out / "ablation.parquet").shape == table.shape
    summary = (out / "summary.md").read_text()
    assert "| full | 2 |" in summary and "Δ AUC vs baseline" in summary and "Δ gAUC" in summary
    assert "t-interval over seeds" in summary and "bootstrap over test users" in summary
    # every Δ carries the paired user bootstrap, whose Δ is the table's (the predictions are the evaluated rows)
    boot = pd.read_parquet(out / "bootstrap.parquet").set_index("metric")
    assert set(boot["variant"]) == {"full"} and set(boot.index) == {"auc", "gauc", "logloss"}
    s = summary_table(table, intervals=pd.read_parquet(out / "bootstrap.parquet")).set_index("variant")
    for metric in ("auc", "gauc", "logloss"):
        assert s.at["full", f"{metric}_diff_boot"] == pytest.approx(s.at["full", f"{metric}_diff"], abs=1e-5)
        assert s.at["full", f"{metric}_diff_lo"] <= s.at["full", f"{metric}_diff_hi"]
    assert summary.count(" [") >= 3 and "| baseline | 2 |" in summary
    # AUC split into between users and within users, from the same predictions: its AUC and gAUC are the table's
    parts = pd.read_parquet(out / "users.parquet").set_index(["variant", "seed"]).sort_index()
    best = test_rows.set_index(["variant", "seed"]).sort_index()
    assert len(parts) == 4 and "AUC of user means" in summary
    np.testing.assert_allclose(parts["auc"], best["auc"], atol=1e-5)
    np.testing.assert_allclose(parts["within_gauc"], best["gauc"], atol=1e-5)
    assert parts["between_auc"].between(0, 1).all()
    assert (parts.groupby("seed")["oracle_between_auc"].nunique() == 1).all()  # same rows for every variant
    # the same seed gives the same data and start for every variant: identical sample counts
    assert test_rows.groupby("variant")["n"].first().nunique() == 1

    # a half-finished grid: one run lost its final metrics; only that run trains again
    finished = out / "runs" / run_dir_name("baseline", 1) / "final_metrics.json"
    kept = out / "runs" / run_dir_name("full", 2) / "final_metrics.json"
    stamp = kept.stat().st_mtime_ns
    finished.unlink()
    again = ablate(data, base, ["baseline", "full"], [1, 2], out)
    assert finished.is_file() and kept.stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(
        again[again["split"] == "test"].reset_index(drop=True),
        table[table["split"] == "test"].reset_index(drop=True),
        check_exact=False,
        atol=1e-6,
    )
    assert summarize(again).startswith("| variant |")

    # runs trained before training wrote their test predictions: scored again on the same rows, and cached
    pred_file = out / "runs" / run_dir_name("full", 1) / "predictions_test.parquet"
    written = pd.read_parquet(pred_file)
    pred_file.unlink()
    (out / "bootstrap.parquet").unlink()
    assert summarize_dir(out) == (out / "summary.md").read_text()
    again = pd.read_parquet(pred_file)
    assert again["sample_id"].tolist() == written["sample_id"].tolist()
    assert again["user_id"].tolist() == written["user_id"].tolist()
    np.testing.assert_allclose(again["logit"], written["logit"], atol=1e-4)


def test_control_variants_run_in_a_grid(data: Path, tmp_path: Path) -> None:
    base = load_config(None, [*TINY, "epochs=1"])
    variants = ["baseline", "carrier:separator+time_gap", "text:time_gap"]
    table = ablate(data, base, variants, [1], tmp_path / "grid")
    assert set(table["variant"]) == set(variants)
    summary = (tmp_path / "grid" / "summary.md").read_text()
    assert "| carrier:separator+time_gap | 1 |" in summary and "| text:time_gap | 1 |" in summary
    # every Δ against the control instead of the baseline: the baseline's Δ is minus the control's Δ vs baseline
    control = "carrier:separator+time_gap"
    vs_control = summarize_dir(tmp_path / "grid", against=control)
    assert f"Δ AUC vs {control}" in vs_control and f"| {control} | 1 | " in vs_control
    boot = pd.read_parquet(tmp_path / "grid" / "bootstrap.parquet").set_index(["variant", "metric"])
    flipped = ablation_intervals(tmp_path / "grid", variants, [1], against=control).set_index(
        ["variant", "metric"]
    )
    for metric in ("auc", "gauc", "logloss"):
        assert flipped.at[("baseline", metric), "delta"] == pytest.approx(
            -boot.at[(control, metric), "delta"]
        )
        assert flipped.at[("baseline", metric), "lo"] == pytest.approx(-boot.at[(control, metric), "hi"])
    with pytest.raises(CtrSinkError, match="--against"):
        summarize_dir(tmp_path / "grid", variants=["baseline", "text:time_gap"], against=control)
