"""The ID view and the DIN row: same samples and behaviors as the text view, config sections, run dirs, costs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ctrsink.ablate import ablate, variant_config
from ctrsink.config import Config, load_config
from ctrsink.cost import count_flops
from ctrsink.data import load_sample_set
from ctrsink.errors import CtrSinkError
from ctrsink.idview import IDBatcher, hour_and_weekday
from ctrsink.predict import predict
from ctrsink.run import load_run
from ctrsink.train import train

REPO = Path(__file__).resolve().parents[1]
TINY_DIN = [
    "model=din",
    "train_samples=200",
    "eval_samples=100",
    "epochs=1",
    "num_behaviors=5",
    "num_threads=1",
    "id_model.dim=16",
]


@pytest.fixture(scope="module")
def data(sample_data_dir: Path) -> Path:
    return sample_data_dir


@pytest.fixture(scope="module")
def sample(data: Path) -> tuple[list[dict], pd.DataFrame, list[str]]:
    splits, items, manifest = load_sample_set(data)
    return splits["train"].slice(300, 40).to_pylist(), items.to_pandas(), manifest["history_fields"]


def test_config_sections_parse_and_fail_clearly() -> None:
    cfg = load_config(None, ["model=sparsectr_lite", "sparsectr.chunking=fixed", "sparsectr.chunks=4"])
    assert (cfg.sparsectr.chunking, cfg.sparsectr.chunks, cfg.sparsectr.window) == ("fixed", 4, 8)
    with pytest.raises(CtrSinkError, match=r"unknown config option 'sparsectr.chunk' \(did you mean"):
        load_config(None, ["sparsectr.chunk=3"])
    with pytest.raises(CtrSinkError, match="'srp4ctr.kv'"):
        load_config(None, ["srp4ctr.kv=both"])
    with pytest.raises(CtrSinkError, match="sink options need model=ctrsink"):
        load_config(None, ["model=din", "use_sink=true"])
    with pytest.raises(CtrSinkError, match="'model'"):
        load_config(None, ["model=bst"])
    # a variant decides the model: `baseline` over a DIN base config is the text baseline again
    assert variant_config(load_config(None, ["model=din"]), "baseline").model == "ctrsink"
    assert variant_config(Config(), "srp4ctr_lite").model == "srp4ctr_lite"


def test_id_view_holds_the_text_views_behaviors(sample) -> None:
    rows, items, fields = sample
    cfg = load_config(None, ["num_behaviors=4"])
    batch = IDBatcher(items, cfg, fields)(rows)
    f = batch["fields"]
    assert f["hist_item"].shape == (len(rows), 4 * len(fields))
    for i, row in enumerate(rows):
        mask = f["hist_mask"][i].numpy()
        # left padding: real behaviors are a suffix
        assert not mask[: (~mask).sum()].any() and mask[(~mask).sum() :].all()
        kept = {
            (int(it), int(ts), label)
            for field, label in zip(fields, (2, 1))
            for it, ts in zip(row[f"{field}_item_idx"][-4:], row[f"{field}_timestamp"][-4:])
        }
        got = {
            (int(it) - 1, int(ts), int(fb))
            for it, ts, fb in zip(f["hist_item"][i][mask], f["hist_ts"][i][mask], f["hist_feedback"][i][mask])
        }
        assert got == kept  # same behaviors as the text view keeps; feedback says which field
        ts = f["hist_ts"][i][mask].numpy()
        assert (np.diff(ts) >= 0).all() and (ts < row["timestamp"]).all()
    assert batch["sample_id"].tolist() == [r["sample_id"] for r in rows]
    assert f["target_item"].tolist() == [r["item_idx"] + 1 for r in rows]


def test_time_fields_and_groups(sample) -> None:
    rows, items, fields = sample
    hour, weekday = hour_and_weekday(np.array([0, 1704461081]))  # 1970-01-01 00:00 Thu; 2024-01-05 13:24 Fri
    assert hour.tolist() == [1, 14] and weekday.tolist() == [4, 5]
    batcher = IDBatcher(items, Config(), fields)
    same = [rows[0], {**rows[0], "item_idx": rows[1]["item_idx"], "sample_id": -1}, rows[1]]
    g = batcher(same)["fields"]["group"].tolist()
    assert g[0] == g[1] != g[2]  # another candidate of one history folds; another history does not


def test_flop_count_is_two_per_multiply_add() -> None:
    class Lin(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(8, 3, bias=False)

        def forward(self, fields: dict, pooling: str = "all_tokens") -> torch.Tensor:
            return self.lin(fields["x"]).sum(-1)

    assert count_flops(Lin(), {"fields": {"x": torch.ones(5, 8)}}) == 2 * 5 * 8 * 3


def test_din_trains_into_a_run_dir_like_ctrsink(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "din"
    final = train(data, load_config(None, TINY_DIN), out)
    assert 0.0 <= final["test"]["auc"] <= 1.0
    assert not (out / "backbone").exists() and not (out / "tokenizer").exists()
    info = json.loads((out / "run.json").read_text())
    cost = info["cost"]
    assert cost["parameters"] == info["parameters"] > 0 and cost["flops_per_sample_b1"] > 0
    assert cost["folded"] is False and cost["flops_per_sample_b100"] == cost["flops_per_sample_b1"]
    assert info["backbone"]["family"] == "id" and info["id_view"]["max_behaviors"] == 10
    scores = predict(out, split="test")  # the whole split; training evaluated a seeded subset of it
    assert len(scores) >= final["test"]["n"] and scores["score"].between(0, 1).all()
    bundle = load_run(out)
    assert bundle.tokenizer is None and bundle.cfg.model == "din"


def test_one_ablation_table_holds_text_and_id_rows(data: Path, tmp_path: Path) -> None:
    base = load_config(None, [*TINY_DIN[1:], "scratch_hidden=32"])
    table = ablate(data, base, ["baseline", "din"], [1], tmp_path / "abl")
    assert set(table["variant"]) == {"baseline", "din"}
    costs = pd.read_parquet(tmp_path / "abl" / "costs.parquet")
    assert costs.set_index("variant")["model"].to_dict() == {"baseline": "ctrsink", "din": "din"}
    summary = (tmp_path / "abl" / "summary.md").read_text()
    assert "| din | 1 |" in summary and "MFLOPs/sample" in summary


def test_text_flops_count_attention_and_keep_the_fast_path() -> None:
    from builders import TINY_ROWS, build_tiny
    from torch.utils.flop_counter import FlopCounterMode

    model, batcher = build_tiny()
    batch = batcher(TINY_ROWS)
    hf = model.backbone.model
    assert hf.config._attn_implementation == "sdpa"
    with torch.no_grad(), FlopCounterMode(display=False) as plain:
        model(batch["fields"])
    counted = count_flops(model, batch)
    assert counted > plain.get_total_flops()  # QK^T and AV are in; the CPU sdpa kernel alone has no formula
    assert hf.config._attn_implementation == "sdpa"
