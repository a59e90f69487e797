"""SparseCTR-lite: chunking, masks (causality, candidate isolation), folding, normalisation, RelTemporal, training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ctrsink.config import Config, load_config
from ctrsink.cost import count_flops
from ctrsink.data import load_sample_set
from ctrsink.idmodels.common import IDVocab
from ctrsink.idmodels.sparsectr import SparseCTRLite, chunk_ids, time_bucket
from ctrsink.idview import HORIZON_DAYS, TAU_HOURS, IDBatcher, hour_and_weekday
from ctrsink.sinks.signals import time_gap_bucket

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "model=sparsectr_lite",
    "id_model.dim=16",
    "id_model.heads=2",
    "id_model.layers=2",
    "id_model.dropout=0",
    "sparsectr.chunks=3",
    "sparsectr.top_k=1",
    "sparsectr.window=2",
]
T0 = 1_700_000_000


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cfg(*overrides: str) -> Config:
    return load_config(None, [*TINY, *overrides])


def vocab_of(cfg: Config) -> IDVocab:
    return IDVocab(items=30, cats=6, time_buckets=cfg.id_model.time_buckets + 2)


def make_model(cfg: Config, seed: int = 0) -> SparseCTRLite:
    torch.manual_seed(seed)
    model = SparseCTRLite(cfg, vocab_of(cfg)).eval()
    for rel in (m for m in model.modules() if type(m).__name__ == "RelTemporal"):
        for table in rel.tables:  # tables start at zero: give the bias something to do
            torch.nn.init.normal_(table, std=0.5)
    return model


def make_fields(
    hist_lens: list[int], group_of_row: list[int], length: int = 12, seed: int = 0, n_buckets: int = 32
) -> dict[str, torch.Tensor]:
    """Every key of the batch contract: group g has a history of hist_lens[g] behaviors, row r is a candidate of
    group group_of_row[r] (own item, category and time; `hist_gap` is relative to the row's own target time)."""
    rng = np.random.default_rng(seed)
    b = len(group_of_row)
    hist_keys = ("hist_item", "hist_cat", "hist_feedback", "hist_ts", "hist_gap", "hist_prev_gap")
    f = {k: np.zeros((b, length), dtype=np.int64) for k in hist_keys}
    target = {k: np.zeros(b, dtype=np.int64) for k in ("target_item", "target_cat", "target_ts")}
    hists = []
    for n in hist_lens:  # bursts of activity separated by hours or days, so chunking has something to cut
        gaps = rng.choice([30, 300, 5 * 3600, 3 * 86400], size=n)
        hists.append(
            (rng.integers(1, 30, n), rng.integers(1, 6, n), rng.integers(1, 3, n), T0 + np.cumsum(gaps))
        )
    for r, g in enumerate(group_of_row):
        items, cats, fb, ts = hists[g]
        n = len(ts)
        t_ts = (ts[-1] if n else T0) + int(rng.integers(60, 86400))
        for key, value in zip(
            ("target_item", "target_cat", "target_ts"), (rng.integers(1, 30), rng.integers(1, 6), t_ts)
        ):
            target[key][r] = value
        if n:
            s = slice(length - n, length)
            for key, value in zip(("hist_item", "hist_cat", "hist_feedback", "hist_ts"), hists[g]):
                f[key][r, s] = value
            f["hist_gap"][r, s] = time_gap_bucket(t_ts - ts, n_buckets, TAU_HOURS, HORIZON_DAYS) + 1
            prev = np.full(n, n_buckets + 1)
            prev[1:] = time_gap_bucket(np.diff(ts), n_buckets, TAU_HOURS, HORIZON_DAYS) + 1
            f["hist_prev_gap"][r, s] = prev
    mask = f["hist_item"] > 0
    hour, wd = hour_and_weekday(f["hist_ts"])
    f["hist_hour"], f["hist_weekday"] = np.where(mask, hour, 0), np.where(mask, wd, 0)
    t_hour, t_wd = hour_and_weekday(target["target_ts"])
    out = {k: torch.from_numpy(v) for k, v in {**f, **target}.items()}
    out.update(
        hist_mask=torch.from_numpy(mask),
        target_hour=torch.from_numpy(t_hour),
        target_weekday=torch.from_numpy(t_wd),
        user_code=torch.tensor(group_of_row),
        group=torch.tensor(group_of_row) * 7919 + 11,  # any ids; rows of one group share one history
    )
    return out


def capture(model: SparseCTRLite, fields: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    seen: dict[str, torch.Tensor] = {}
    handles = [
        hp.register_forward_hook(lambda m, args, out: seen.__setitem__(m.name, out))
        for hp in model.hook_points().values()
    ]
    handles.append(model.blocks[-1].register_forward_hook(lambda m, args, out: seen.__setitem__("x", out)))
    try:
        with torch.no_grad():
            logits = model(fields)
    finally:
        for h in handles:
            h.remove()
    return logits, seen


def left_pad(ts: list[int], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([[0] * pad + ts]), torch.tensor([[False] * pad + [True] * len(ts)])


def test_personalized_chunks_cut_at_the_largest_gaps_whatever_the_padding() -> None:
    ts = [0, 1, 2, 102, 103, 153]  # gaps 1, 1, 100, 1, 50
    for pad in (0, 4):
        t, m = left_pad(ts, pad)
        assert chunk_ids(t, m, 3, "personalized").tolist() == [[-1] * pad + [0, 0, 0, 1, 1, 2]]
    # a batch with different paddings per row, fewer real gaps than cuts, ties (earliest wins), empty rows
    rows = [[0, 1, 2, 102, 103, 153], [5, 15, 25, 35], [7], []]
    t = torch.tensor([[0] * (8 - len(r)) + r for r in rows])
    m = torch.tensor([[False] * (8 - len(r)) + [True] * len(r) for r in rows])
    got = chunk_ids(t, m, 3, "personalized").tolist()
    assert [g[8 - len(r) :] for g, r in zip(got, rows)] == [[0, 0, 0, 1, 1, 2], [0, 1, 2, 2], [0], []]
    assert chunk_ids(t, m, 8, "personalized")[0, 2:].tolist() == [0, 1, 2, 3, 4, 5]  # 5 gaps -> 6 chunks
    assert (chunk_ids(t, m, 3, "personalized")[~m] == -1).all()


def test_fixed_chunks_have_equal_sizes_whatever_the_padding() -> None:
    for pad in (0, 3):
        t, m = left_pad(list(range(8)), pad)
        assert chunk_ids(t, m, 4, "fixed")[0, pad:].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
        assert (chunk_ids(t, m, 4, "fixed")[0, :pad] == -1).all()
    t, m = left_pad(list(range(10)), 2)
    sizes = torch.bincount(chunk_ids(t, m, 4, "fixed")[m])
    assert len(sizes) == 4 and sizes.max() - sizes.min() <= 1
    t, m = left_pad([1, 2], 5)
    assert chunk_ids(t, m, 4, "fixed")[0, 5:].tolist() == [0, 1]  # fewer behaviors than chunks


def test_time_bucket_matches_the_numpy_signal() -> None:
    gaps = np.array([0, 1, 59, 3600, 7200, 86400, 30 * 86400, 365 * 86400, 10**9])
    want = time_gap_bucket(gaps, 32, TAU_HOURS, HORIZON_DAYS)
    assert time_bucket(torch.from_numpy(gaps), 32).tolist() == want.tolist()


def test_history_is_causal_and_candidates_are_isolated() -> None:
    model = make_model(tiny_cfg())
    fields = make_fields([9], [0, 0, 0])
    logits, seen = capture(model, fields)
    # a later history token's content does not reach earlier history tokens (one sequence: the folded group)
    j = 12 - 3
    changed = {k: v.clone() for k, v in fields.items()}
    for key, new in (("hist_item", 29), ("hist_cat", 5), ("hist_feedback", 1)):
        changed[key][:, j] = new
    _, after = capture(model, changed)
    torch.testing.assert_close(after["x"][:, :j], seen["x"][:, :j], rtol=0, atol=1e-6)
    assert not torch.allclose(after["x"][:, j:], seen["x"][:, j:])
    # another candidate's item and time never reach a candidate's logit
    other = {k: v.clone() for k, v in fields.items()}
    other["target_item"][2], other["target_cat"][2] = 1, 1
    other["target_ts"][2] += 3 * 86400 + 5 * 3600
    other["target_hour"][2], other["target_weekday"][2] = 3, 6
    moved = capture(model, other)[0]
    torch.testing.assert_close(moved[:2], logits[:2], rtol=0, atol=1e-6)
    assert abs(float(moved[2] - logits[2])) > 1e-4
    # the user side is candidate-independent: the time-to-target buckets are not read at all
    other = {**fields, "hist_gap": torch.randint(1, 30, fields["hist_gap"].shape)}
    torch.testing.assert_close(capture(model, other)[0], logits, rtol=0, atol=0)


@pytest.mark.parametrize(
    "overrides",
    [[], ["sparsectr.gates=softmax", "sparsectr.chunking=fixed", "sparsectr.temporal_bias=shared"]],
)
def test_listwise_equals_one_at_a_time(overrides: list[str]) -> None:
    model = make_model(tiny_cfg(*overrides))
    # groups with 3, 1, 4 and 2 candidates (rows interleaved), one of them without any history
    fields = make_fields([9, 4, 12, 0], [0, 2, 1, 0, 2, 2, 3, 0, 2, 3], seed=1)
    with torch.no_grad():
        listwise = model(fields)
        model.fold = False
        pointwise = model(fields)
    assert listwise.shape == (10,) and torch.isfinite(listwise).all()
    torch.testing.assert_close(listwise, pointwise, rtol=0, atol=1e-5)


def test_logits_do_not_depend_on_left_padding() -> None:
    model = make_model(tiny_cfg())
    short = make_fields([7, 3], [0, 1, 0], length=8, seed=2)
    long = make_fields([7, 3], [0, 1, 0], length=14, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(model(short), model(long), rtol=0, atol=1e-5)


def test_gates_and_branch_probs_sum_to_one() -> None:
    cfg = tiny_cfg("sparsectr.gates=softmax")
    model = make_model(cfg)
    fields = make_fields([10, 0, 5], [0, 0, 1, 2, 0], seed=3)
    _, seen = capture(model, fields)
    length, heads = 12, cfg.id_model.heads
    s, c = 3, 3  # sequences (groups) and candidate slots (the largest group)
    t = length + c
    assert seen["chunks"].shape == (s, length)
    for layer in range(cfg.id_model.layers):
        pre = f"layer.{layer}"
        gates = seen[f"{pre}.gates"]
        assert gates.shape == (s, heads, t, 3)
        torch.testing.assert_close(gates.sum(-1), torch.ones(s, heads, t))
        probs = {b: seen[f"{pre}.branch.{b}.probs"] for b in ("global", "transition", "local")}
        assert probs["global"].shape == (s, heads, t, cfg.sparsectr.chunks)
        assert probs["transition"].shape == probs["local"].shape == (s, heads, t, t)
        for name, p in probs.items():  # each branch: 1 over its visible keys, or 0 for a query that sees none
            sums = p.sum(-1)
            assert (((sums - 1).abs() < 1e-5) | (sums == 0)).all() and ((sums - 1).abs() < 1e-5).any(), name
        # a real history token or a candidate always sees itself locally; padding sees nothing
        real = torch.cat([fields["hist_mask"][[0, 2, 3]], torch.ones(s, c, dtype=torch.bool)], 1)
        torch.testing.assert_close(probs["local"].sum(-1), real[:, None].expand(s, heads, t).float())
        # candidates with a history see chunk summaries; the empty history has no chunks at all
        torch.testing.assert_close(probs["global"][0, :, length:].sum(-1), torch.ones(heads, c))
        assert (probs["global"][1].sum(-1) == 0).all()
        # history keys up to the query, plus a candidate's own slot: never later tokens or other candidates
        i, j = torch.arange(t)[:, None], torch.arange(t)[None, :]
        allowed = ((j < length) & (j <= i)) | (i == j)
        for name in ("transition", "local"):
            assert (probs[name][..., ~allowed] == 0).all(), name
        # transition: the keys of at most top_k chunks, none of them the query's own
        chunks = seen["chunks"][0]
        for head in range(heads):
            for query, row in enumerate(probs["transition"][0, head, :, :length] > 0):
                assert len(chunks[row].unique()) <= cfg.sparsectr.top_k
                assert query >= length or not (chunks[row] == chunks[min(query, length - 1)]).any()


def test_sigmoid_gates_are_independent() -> None:
    model = make_model(tiny_cfg("sparsectr.gates=sigmoid"))
    _, seen = capture(model, make_fields([6], [0, 0]))
    gates = seen["layer.0.gates"]
    assert ((gates > 0) & (gates < 1)).all() and not torch.allclose(gates.sum(-1), torch.ones(1))


def test_zero_lambda_is_the_plain_model() -> None:
    biased = make_model(tiny_cfg("sparsectr.temporal_bias=per_head"))
    plain = SparseCTRLite(tiny_cfg("sparsectr.temporal_bias=none"), biased.vocab).eval()
    missing, unexpected = plain.load_state_dict(biased.state_dict(), strict=False)
    assert not missing and unexpected and all(".attn.bias." in k for k in unexpected)
    fields = make_fields([9, 5], [0, 1, 1], seed=4)
    with torch.no_grad():
        assert not torch.allclose(biased(fields), plain(fields), atol=1e-4)  # the bias does something
        for block in biased.blocks:
            block.attn.bias.lam.zero_()
        torch.testing.assert_close(biased(fields), plain(fields), rtol=0, atol=1e-6)
    assert biased.blocks[0].attn.bias.lam.shape == (2, 4)
    shared = SparseCTRLite(tiny_cfg("sparsectr.temporal_bias=shared"), biased.vocab)
    assert shared.blocks[0].attn.bias.lam.shape == (1, 4)


def test_hook_names_and_analytic_flops() -> None:
    cfg = tiny_cfg("sparsectr.temporal_bias=none")
    model = make_model(cfg)
    names = set(model.hook_points())
    assert names == {"chunks"} | {
        f"layer.{layer}.{n}"
        for layer in range(2)
        for n in ("gates", "branch.global.probs", "branch.transition.probs", "branch.local.probs")
    }
    assert model.folds and model.fold
    # "dense" counts this implementation's matmuls: one sequence of 12 behaviors and 3 candidates
    fields = make_fields([12], [0, 0, 0])
    got = count_flops(model, {"fields": fields})
    assert model.analytic_flops(12, 3)["dense"] == pytest.approx(got, rel=1e-6)
    long = model.analytic_flops(200, 100)
    assert long["sparse"] < long["dense"] / 2


@pytest.fixture(scope="module")
def real_batches(sample_data_dir: Path) -> tuple[Config, IDBatcher, list[dict]]:
    splits, items, manifest = load_sample_set(sample_data_dir)
    cfg = tiny_cfg("num_behaviors=5")
    batcher = IDBatcher(items.to_pandas(), cfg, manifest["history_fields"])
    rows = splits["train"].slice(0, 128).to_pylist()
    return cfg, batcher, [batcher(rows[:64]), batcher(rows[64:])]


def test_trains_on_real_batches(real_batches) -> None:
    cfg, batcher, batches = real_batches
    torch.manual_seed(0)
    model = SparseCTRLite(cfg, batcher.vocab)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def mean_loss() -> float:
        with torch.no_grad():
            return float(np.mean([loss_fn(model(b["fields"]), b["labels"]).item() for b in batches]))

    before = mean_loss()
    for step in range(16):
        batch = batches[step % 2]
        loss = loss_fn(model(batch["fields"]), batch["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert np.isfinite(before) and mean_loss() < before - 0.1
