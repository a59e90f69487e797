"""SRP4CTR-lite: folding, one-way cross-attention, K/V sharing, freezing, pre-training, encoder files, training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import ctrsink.pretrain as pretrain_mod
from ctrsink.config import Config, config_from_dict
from ctrsink.cost import count_flops
from ctrsink.data import load_sample_set
from ctrsink.errors import CtrSinkError
from ctrsink.idmodels.common import IDVocab
from ctrsink.idmodels.srp4ctr import ENCODER_KEYS, SRP4CTRLite, SRPEncoder
from ctrsink.idview import IDBatcher
from ctrsink.pretrain import ensure_encoder, pretrain, pretrain_rows

REPO = Path(__file__).resolve().parents[1]
TINY: dict[str, Any] = {
    "model": "srp4ctr_lite",
    "id_model": {"dim": 16, "heads": 2, "layers": 2, "dropout": 0.0},
    "num_behaviors": 5,
    "train_samples": 300,
    "batch_size": 32,
    "srp4ctr": {"queries": 2, "pretrain_epochs": 1},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cfg(**sections: dict[str, Any]) -> Config:
    """TINY with some options changed: tiny_cfg(srp4ctr={"kv": "untied"}, id_model={"dropout": 0.1})."""
    cfg = config_from_dict(TINY)
    return config_from_dict(sections, cfg) if sections else cfg


def make_model(cfg: Config, vocab: IDVocab, seed: int = 0) -> SRP4CTRLite:
    torch.manual_seed(seed)
    return SRP4CTRLite(cfg, vocab).eval()


@pytest.fixture(scope="module")
def data(sample_data_dir: Path) -> Path:
    return sample_data_dir


@pytest.fixture(scope="module")
def real(data: Path) -> tuple[IDBatcher, list[dict], dict]:
    """(batcher, training rows, manifest) of the prepared sample data, with TINY's num_behaviors."""
    splits, items, manifest = load_sample_set(data)
    batcher = IDBatcher(items.to_pandas(), tiny_cfg(), manifest["history_fields"])
    return batcher, splits["train"].slice(0, 600).to_pylist(), manifest


def request(rows: list[dict], candidates: int) -> list[dict]:
    """Each row's history with `candidates` different target items, rows interleaved (groups are not contiguous)."""
    return [
        {**r, "item_idx": (r["item_idx"] + 37 * j) % 600, "label": j % 2, "sample_id": 1000 * j + i}
        for j in range(candidates)
        for i, r in enumerate(rows)
    ]


def full_rows(rows: list[dict], k: int = 5) -> list[dict]:
    """Rows whose every history field has at least k behaviors (no padding in the ID view)."""
    return [r for r in rows if len(r["pos_item_idx"]) >= k and len(r["neg_item_idx"]) >= k]


def capture(model: SRP4CTRLite, fields: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
    seen: dict[str, Any] = {}
    handles = [
        hp.register_forward_hook(lambda m, args, out: seen.__setitem__(m.name, out))
        for hp in model.hook_points().values()
    ]
    handles.append(model.encoder.register_forward_hook(lambda m, a, out: seen.__setitem__("encoder", out)))
    try:
        with torch.no_grad():
            logits = model(fields)
    finally:
        for h in handles:
            h.remove()
    return logits, seen


@pytest.mark.parametrize("kv", ["shared", "untied"])
def test_folded_equals_unfolded(real, kv: str) -> None:
    batcher, rows, _ = real
    model = make_model(tiny_cfg(srp4ctr={"kv": kv}, id_model={"dropout": 0.1}), batcher.vocab)
    picked = [rows[5], rows[200], rows[400], full_rows(rows)[0]]  # short (padded) and full histories
    fields = batcher(request(picked, 3))["fields"]
    assert len(torch.unique(fields["group"])) == 4  # 12 rows, 4 shared histories
    with torch.no_grad():
        folded = model(fields)
        model.fold = False
        unfolded = model(fields)
    assert folded.shape == (12,) and torch.isfinite(folded).all()
    torch.testing.assert_close(folded, unfolded, rtol=0, atol=1e-5)
    assert folded.std() > 0  # candidates of one user get different scores


def test_attention_probs_are_normalised_over_real_history(real) -> None:
    batcher, rows, _ = real
    cfg = tiny_cfg()
    model = make_model(cfg, batcher.vocab)
    fields = batcher(request([rows[3], rows[300]], 2))["fields"]
    _, seen = capture(model, fields)
    b, length = fields["hist_mask"].shape
    heads, m, groups = cfg.id_model.heads, cfg.srp4ctr.queries, 2
    assert set(seen) - {"encoder"} == {
        *(f"{part}.layer.{layer}.attn.probs" for part in ("encoder", "cross") for layer in range(2)),
        "query.layer.0.attn.probs",
        "target.attn.probs",
    }
    real_keys = fields["hist_mask"].float()
    assert (~fields["hist_mask"]).any()  # some padding to check
    for layer in range(cfg.id_model.layers):
        cross = seen[f"cross.layer.{layer}.attn.probs"]
        assert cross.shape == (b, heads, 1, length)
        torch.testing.assert_close(cross.sum(-1), torch.ones(b, heads, 1))
        assert (cross[~fields["hist_mask"][:, None, None, :].expand_as(cross)] == 0).all()
        enc = seen[f"encoder.layer.{layer}.attn.probs"]  # folded: one sequence per group
        assert enc.shape == (groups, heads, length, length)
        group_mask = seen["encoder"].mask
        want = (
            group_mask[:, None, :].float().expand(groups, heads, length)
        )  # real queries sum to 1, padding 0
        torch.testing.assert_close(enc.sum(-1), want)
        assert (enc * (~group_mask)[:, None, None, :] == 0).all()
    query = seen["query.layer.0.attn.probs"]
    assert query.shape == (groups, heads, m, length)
    torch.testing.assert_close(query.sum(-1), torch.ones(groups, heads, m))
    target = seen["target.attn.probs"]
    assert target.shape == (b, length)
    torch.testing.assert_close(target.sum(-1), torch.ones(b))
    assert (target * (1 - real_keys) == 0).all()


def test_candidate_never_reaches_the_encoder(real) -> None:
    batcher, rows, _ = real
    model = make_model(tiny_cfg(), batcher.vocab)
    fields = batcher(request([rows[10], rows[250]], 2))["fields"]
    logits, seen = capture(model, fields)
    other = {
        **fields,
        "target_item": (fields["target_item"] + 11) % 600 + 1,
        "target_cat": fields["target_cat"] % 3 + 1,
    }
    other_logits, other_seen = capture(model, other)
    assert torch.equal(other_seen["encoder"].out, seen["encoder"].out)
    for layer in range(2):
        assert torch.equal(other_seen["encoder"].states[layer].k, seen["encoder"].states[layer].k)
    assert (other_logits - logits).abs().max() > 1e-4  # the candidate does matter to the logit
    # the time-to-target buckets (candidate-dependent) are not read at all
    shuffled = {**fields, "hist_gap": torch.randint(1, 30, fields["hist_gap"].shape)}
    torch.testing.assert_close(capture(model, shuffled)[0], logits, rtol=0, atol=0)
    # while the history does reach it
    changed = {**fields, "hist_item": fields["hist_item"].clone()}
    changed["hist_item"][:, -1] = changed["hist_item"][:, -1] % 599 + 1
    assert not torch.allclose(capture(model, changed)[1]["encoder"].out, seen["encoder"].out)


def test_shared_kv_reuses_the_encoder_projections(real) -> None:
    batcher, _, _ = real
    d, layers = 16, 2
    shared = make_model(tiny_cfg(srp4ctr={"kv": "shared"}), batcher.vocab)
    untied = make_model(tiny_cfg(srp4ctr={"kv": "untied"}), batcher.vocab)
    for layer in range(layers):
        w_k, w_v = shared.kv_projections(layer)
        enc = shared.encoder.layers[layer].attn
        assert w_k is enc.w_k and w_v is enc.w_v and w_k.weight is enc.w_k.weight
        assert shared.cross[layer].attn.w_k is None and shared.cross[layer].attn.w_v is None
        u_k, u_v = untied.kv_projections(layer)
        u_enc = untied.encoder.layers[layer].attn
        assert u_k is untied.cross[layer].attn.w_k and u_v is untied.cross[layer].attn.w_v
        assert u_k.weight is not u_enc.w_k.weight and u_v.weight is not u_enc.w_v.weight
    encoder_ids = {id(p) for p in untied.encoder.parameters()}
    cross_ids = {id(p) for p in untied.cross.parameters()}
    assert not encoder_ids & cross_ids
    n = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert n(untied) - n(shared) == layers * 2 * d * d


def test_frozen_encoder_stays_fixed_while_the_rest_trains(real) -> None:
    batcher, rows, _ = real
    batch = batcher(rows[100:164])
    tuned = make_model(tiny_cfg(), batcher.vocab)
    enc_ids = {id(p) for p in tuned.encoder.parameters()}
    assert {id(p) for p in tuned.backbone_parameters()} == enc_ids
    assert not enc_ids & {id(p) for p in tuned.new_parameters()}
    assert len(tuned.backbone_parameters()) + len(tuned.new_parameters()) == len(list(tuned.parameters()))

    model = make_model(tiny_cfg(srp4ctr={"encoder_mode": "frozen"}, id_model={"dropout": 0.1}), batcher.vocab)
    model.train()
    assert not model.encoder.training and model.tower.training
    assert model.backbone_parameters() == [] and not any(p.requires_grad for p in model.encoder.parameters())
    groups = [
        {"params": model.backbone_parameters(), "lr": 1e-2},
        {"params": model.new_parameters(), "lr": 1e-2},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=1e-2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch["fields"]), batch["labels"])
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    for key in before:
        if key.startswith("encoder."):
            assert torch.equal(before[key], after[key]), key
    changed = [k for k in before if not k.startswith("encoder.") and not torch.equal(before[k], after[k])]
    assert any(k.startswith("tower.") for k in changed) and any(k.startswith("cross.") for k in changed)
    assert any(k.startswith("query.") for k in changed) and "queries" in changed


def test_pretrain_loss_decreases_on_real_batches(real) -> None:
    batcher, rows, _ = real
    cfg = tiny_cfg()
    torch.manual_seed(0)
    encoder = SRPEncoder(cfg, batcher.vocab)
    seqs = pretrain_rows(pd.DataFrame(rows), 3).to_dict("records")
    batches = [
        {k: v for k, v in batcher(seqs[i : i + 64])["fields"].items() if k in ENCODER_KEYS} for i in (0, 64)
    ]

    def fixed_loss() -> float:  # the same masks (both modes) before and after training
        encoder.eval()
        with torch.no_grad():
            out = [
                encoder.pretrain_loss(b, torch.Generator().manual_seed(s)).item()
                for b in batches
                for s in range(6)
            ]
        encoder.train()
        return float(np.mean(out))

    before = fixed_loss()
    optimizer = torch.optim.Adam(encoder.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(1)
    for step in range(30):
        loss = encoder.pretrain_loss(batches[step % 2], generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = fixed_loss()
    assert np.isfinite(before) and after < before - 0.2, (before, after)
    # each mode masks its own fields; a fine-tuning encoder has no cloze heads
    modes = {tuple(encoder.pretrain_losses(batches[0], torch.Generator().manual_seed(s))) for s in range(8)}
    assert modes == {("item", "cat"), ("feedback", "time")}
    with pytest.raises(RuntimeError):
        SRPEncoder(cfg, batcher.vocab, pretrain_heads=False).pretrain_loss(batches[0], torch.Generator())


def test_pretrain_rows_take_each_users_last_sample_and_every_kth_before() -> None:
    frame = pd.DataFrame(
        {
            "user_id": ["a"] * 7 + ["b"] * 2,
            "timestamp": [7, 1, 2, 3, 4, 5, 6, 10, 11],
            "sample_id": list(range(9)),
        }
    )
    got = pretrain_rows(frame, 3)
    assert got[["user_id", "timestamp"]].values.tolist() == [["a", 1], ["a", 4], ["a", 7], ["b", 11]]


@pytest.fixture(scope="module")
def encoder_dir(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("pretrained") / "enc"
    return out, pretrain(data, tiny_cfg(), out)


def test_pretrain_writes_a_loadable_encoder(data: Path, real, encoder_dir) -> None:
    batcher, _, manifest = real
    out, record = encoder_dir
    assert sorted(p.name for p in out.iterdir()) == ["encoder.json", "encoder.safetensors"]
    meta = json.loads((out / "encoder.json").read_text())
    assert meta == json.loads(json.dumps(record))
    assert meta["data_hash"] == manifest["hash"] and meta["seed"] == 42
    assert meta["vocab"] == batcher.vocab.to_dict() and meta["id_model"]["dim"] == 16
    assert meta["train_samples_used"] == 300 and 0 < meta["sequences"] <= 300  # the subset, cut points only
    assert [r["epoch"] for r in meta["losses"]] == [0]
    assert all(np.isfinite(meta["losses"][0][k]) for k in ("item", "cat", "feedback", "time", "loss"))
    weights = load_file(str(out / "encoder.safetensors"))
    assert not any(k.startswith("cloze.") for k in weights)
    model = make_model(tiny_cfg(), batcher.vocab, seed=5)
    model.load_encoder(out)
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, weights[key]), key
    with pytest.raises(CtrSinkError, match="not empty; pass --overwrite"):
        pretrain(data, tiny_cfg(), out)


def test_ensure_encoder_pretrains_once_and_checks_the_option(
    data: Path, encoder_dir, tmp_path, monkeypatch
) -> None:
    given, _ = encoder_dir
    assert ensure_encoder(data, tiny_cfg(srp4ctr={"init": "random"}), tmp_path / "run") is None
    assert ensure_encoder(data, tiny_cfg(srp4ctr={"encoder": str(given)}), tmp_path / "run") == given
    (tmp_path / "empty").mkdir()
    with pytest.raises(CtrSinkError, match="'srp4ctr.encoder'.*encoder.safetensors"):
        ensure_encoder(data, tiny_cfg(srp4ctr={"encoder": str(tmp_path / "empty")}), tmp_path / "run")
    run = tmp_path / "run"
    first = ensure_encoder(data, tiny_cfg(), run)
    assert first == run / "encoder" and (first / "encoder.safetensors").is_file()
    stamp = (first / "encoder.safetensors").stat().st_mtime_ns
    calls: list[Config] = []
    monkeypatch.setattr(pretrain_mod, "pretrain", lambda d, c, o, overwrite=False: calls.append(c))
    assert ensure_encoder(data, tiny_cfg(), run) == first and not calls  # reused, not pre-trained again
    assert (first / "encoder.safetensors").stat().st_mtime_ns == stamp
    ensure_encoder(data, config_from_dict({"seed": 7}, tiny_cfg()), run)  # other settings: pre-train again
    assert len(calls) == 1


def test_load_encoder_rejects_a_mismatched_encoder(real, encoder_dir, tmp_path) -> None:
    batcher, _, _ = real
    out, _ = encoder_dir
    other = IDVocab(items=31, cats=batcher.vocab.cats, time_buckets=batcher.vocab.time_buckets)
    with pytest.raises(CtrSinkError, match=r"encoder\.safetensors.*vocab"):
        make_model(tiny_cfg(), other).load_encoder(out)
    with pytest.raises(CtrSinkError, match=r"encoder\.safetensors.*dim 16 \(this model: 32\)"):
        make_model(tiny_cfg(id_model={"dim": 32}), batcher.vocab).load_encoder(out)
    bare = tmp_path / "bare"  # without encoder.json the tensor shapes still catch it
    bare.mkdir()
    (bare / "encoder.safetensors").write_bytes((out / "encoder.safetensors").read_bytes())
    with pytest.raises(CtrSinkError, match=r"bare/encoder\.safetensors: does not fit.*embed\.item\.weight"):
        make_model(tiny_cfg(), other).load_encoder(bare)
    with pytest.raises(CtrSinkError, match="not found"):
        make_model(tiny_cfg(), other).load_encoder(tmp_path / "nowhere")


def test_analytic_flops_match_the_counted_matmuls(real) -> None:
    batcher, rows, _ = real
    full = full_rows(rows)[0]
    for kv in ("shared", "untied"):
        model = make_model(tiny_cfg(srp4ctr={"kv": kv}), batcher.vocab)
        length = 10  # 5 behaviors per field, 2 fields, no padding
        one = batcher([full])
        assert count_flops(model, one) == pytest.approx(
            model.analytic_flops(length, 1, folded=False), rel=1e-9
        )
        assert model.analytic_flops(length, 1, folded=True) == model.analytic_flops(length, 1, folded=False)
        req = batcher(request([full], 4))
        assert count_flops(model, req) == pytest.approx(model.analytic_flops(length, 4), rel=1e-9)
        assert model.analytic_flops(200, 100) < model.analytic_flops(200, 100, folded=False) / 2


def test_fine_tuning_trains_on_real_batches(real) -> None:
    batcher, rows, _ = real
    torch.manual_seed(0)
    model = SRP4CTRLite(tiny_cfg(), batcher.vocab)
    batches = [batcher(rows[300:364]), batcher(rows[364:428])]
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def mean_loss() -> float:
        model.eval()
        with torch.no_grad():
            out = float(np.mean([loss_fn(model(b["fields"]), b["labels"]).item() for b in batches]))
        model.train()
        return out

    before = mean_loss()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(16):
        batch = batches[step % 2]
        loss = loss_fn(model(batch["fields"]), batch["labels"])
        opt.zero_grad()
        loss.backward()
        # every parameter takes part (multi-process DDP would fail on unused ones)
        assert all(p.grad is not None for p in model.parameters())
        opt.step()
    assert np.isfinite(before) and mean_loss() < before - 0.1
