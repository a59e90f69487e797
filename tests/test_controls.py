"""Controls for the CTR-Sink mechanisms (issue 12): the sink's signal carried by the existing separators instead of
new sink tokens (`signal_carrier=separator`), the same signal written as text with no sinks at all
(`behavior_signal_text`), and the ablation variants that run them next to the paper's."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from builders import CATS, DAY, HISTORY, TITLES, make_items, make_row

from ctrsink.ablate import DEFAULT_VARIANTS, VARIANTS, run_dir_name, variant_config
from ctrsink.backbones import _train_tokenizer, load_backbone
from ctrsink.config import PROMPT_PRESETS, Config
from ctrsink.errors import CtrSinkError
from ctrsink.run import assemble
from ctrsink.sinks.signals import SinkSignalEmbedding, time_gap_bucket, time_gap_bucket_start
from ctrsink.text import ROLE_ID, TextRenderer, duration_text, signal_phrase, signal_text_vocabulary

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROWS = [
    make_row(0, [3, 0, 7, 11, 5], [2, 4, 9], target=1, label=1),
    make_row(1, [1, 2], [], target=6, label=0),
    make_row(2, [8, 9, 10, 11, 0, 1, 2], [3], target=4, label=1),
]


def texts(cfg: Config | None = None) -> list[str]:
    extra = signal_text_vocabulary(cfg) if cfg is not None else []
    return TITLES + CATS + list(PROMPT_PRESETS["en"].values()) + [";", " (liked)", " (disliked)"] + extra


def build(backbone: str, **overrides):
    values = dict(backbone=backbone, scratch_hidden=32, scratch_layers=2, scratch_heads=4, scratch_kv_heads=2)
    cfg = Config(**{**values, "scratch_vocab_size": 400, "seed": 0, **overrides}).validate()
    bb, tok, _ = load_backbone(cfg, texts())
    model, batcher, _ = assemble(cfg, bb, tok, make_items(), HISTORY)
    return model.eval(), batcher, cfg


# ------------------------------------------------------------------------------ signal_carrier=separator


@pytest.mark.parametrize("backbone", ["scratch:bert-tiny", "scratch:qwen2-tiny"])
@pytest.mark.parametrize("signal", ["time_gap", "index", "random"])
def test_separator_carrier_changes_only_the_separator_rows(backbone: str, signal: str) -> None:
    torch.manual_seed(0)
    model, batcher, _ = build(backbone, signal_carrier="separator", sink_signal=signal)
    _, base_batcher, _ = build(backbone)
    batch, base = batcher(ROWS)["fields"], base_batcher(ROWS)["fields"]
    assert isinstance(model.signal, SinkSignalEmbedding) and model.signal.mode == "add"
    for name, f in batch.items():
        # the same text as the baseline: same ids, roles and mask, no sink tokens
        for key in ("input_ids", "token_roles", "attention_mask"):
            assert torch.equal(f[key], base[name][key]), (name, key)
        assert not bool((f["token_roles"] == ROLE_ID["sink"]).any())
    with torch.no_grad():
        for name in HISTORY:
            f = batch[name]
            ids = f["sink_signal_ids"]
            carries = ids >= 0
            # one carrying row per separator (N behaviors -> N-1), and every carrying row is a separator
            assert bool((f["token_roles"][carries] == ROLE_ID["separator"]).all())
            per_row = carries.sum(1).tolist()
            assert per_row == ([4, 1, 6] if name == "pos" else [2, 0, 0])
            with_signal = model.input_embeds(f)
            word = model.backbone.word_embeddings()(f["input_ids"])
            signal = (
                model.signal.table.weight[ids[carries]] @ model.signal.proj.weight.T + model.signal.proj.bias
            )
            assert torch.equal(with_signal[~carries], word[~carries])  # only separator rows differ ...
            torch.testing.assert_close(
                with_signal[carries], word[carries] + signal, rtol=0, atol=1e-6
            )  # ... by e_k
            assert not torch.allclose(with_signal[carries], word[carries])
        logits = model(batch)
    assert logits.shape == (len(ROWS),) and bool(torch.isfinite(logits).all())


def test_separator_carries_the_signal_of_the_behavior_it_follows() -> None:
    _, sinks, _ = build("scratch:bert-tiny", use_sink=True, sink_signal="time_gap")
    _, seps, _ = build("scratch:bert-tiny", signal_carrier="separator", sink_signal="time_gap")
    for name in HISTORY:
        a, b = sinks(ROWS)["fields"][name]["sink_signal_ids"], seps(ROWS)["fields"][name]["sink_signal_ids"]
        assert [r[r >= 0].tolist() for r in a] == [r[r >= 0].tolist() for r in b]
    e = seps.encode(ROWS[0])["enc"]["pos"]
    for k, pos in enumerate(e.separator_positions):  # the first token after behavior k's span
        assert pos == e.behavior_spans[k][1] and e.separator_behavior[k] == k


def test_signal_module_adds_or_replaces() -> None:
    torch.manual_seed(0)
    embeds, ids = torch.randn(2, 5, 8), torch.tensor([[-1, 3, -1, 0, -1], [-1, -1, -1, -1, -1]])
    add, rep = SinkSignalEmbedding(10, 4, 8, mode="add"), SinkSignalEmbedding(10, 4, 8)
    rep.load_state_dict(add.state_dict())
    e = rep.proj(rep.table(ids.clamp(min=0)))
    with torch.no_grad():
        torch.testing.assert_close(add(embeds, ids), torch.where(ids[..., None] >= 0, embeds + e, embeds))
        torch.testing.assert_close(rep(embeds, ids), torch.where(ids[..., None] >= 0, e, embeds))
    with pytest.raises(ValueError):
        SinkSignalEmbedding(10, 4, 8, mode="multiply")


@pytest.mark.parametrize(
    ("values", "option"),
    [
        (dict(signal_carrier="separator", use_sink=True, sink_signal="time_gap"), "signal_carrier"),
        (dict(signal_carrier="separator"), "signal_carrier"),  # no signal to carry
        (dict(signal_carrier="separator", sink_signal="index", separator=" "), "signal_carrier"),
        (dict(signal_carrier="separator", sink_signal="index", two_stage=True), "two_stage"),
        (dict(signal_carrier="separator", sink_signal="index", inter_sink=True), "inter_sink"),
        (dict(signal_carrier="sinks"), "signal_carrier"),
        (dict(behavior_signal_text="similarity"), "behavior_signal_text"),
        (dict(model="din", behavior_signal_text="time_gap"), "model"),
        (dict(model="din", signal_carrier="separator", sink_signal="index"), "model"),
    ],
)
def test_config_rejects_control_combinations(values: dict, option: str) -> None:
    with pytest.raises(CtrSinkError, match=f"'{option}'"):
        Config(**values).validate()


def test_config_accepts_controls() -> None:
    for values in (
        dict(signal_carrier="separator", sink_signal="none"),
        dict(behavior_signal_text="time_gap"),
        dict(behavior_signal_text="index", index_origin="newest"),
        dict(behavior_signal_text="time_gap", use_sink=True, sink_signal="time_gap"),
    ):
        Config(**values).validate()
    with pytest.raises(CtrSinkError, match="signal_carrier=separator"):  # the message names the way out
        Config(sink_signal="index").validate()


# ------------------------------------------------------------------------------ behavior_signal_text


def normalized(text: str) -> str:
    return "".join(text.split()).lower()


def renderer(**overrides) -> TextRenderer:
    cfg = Config(behavior_text="title", **overrides).validate()
    tok = _train_tokenizer(texts(cfg), "scratch-bert", 600, seed=0)
    return TextRenderer(tok, make_items(), cfg, HISTORY)


def test_duration_text() -> None:
    assert duration_text(0.0) == "0 minutes"
    assert duration_text(60.0) == "1 minute"
    assert duration_text(3.3 * DAY) == "3.3 days"
    assert duration_text(12.4 * DAY) == "12 days"
    assert duration_text(30 * DAY) == "4.3 weeks"
    assert duration_text(365 * DAY) == "1 year"


def test_time_gap_phrases_are_the_buckets() -> None:
    cfg = Config(behavior_signal_text="time_gap")
    vocab = signal_text_vocabulary(cfg)
    assert len(vocab) == cfg.sink_num_embeddings == len(set(vocab))  # one phrase per bucket, all different
    assert vocab[0] == " (under 5.8 minutes before)" and vocab[-1] == " (1 year or more before)"
    b = int(time_gap_bucket(np.array([3 * DAY]), 100, 1.0, 365.0)[0])
    start = time_gap_bucket_start(b, 100, 1.0, 365.0)
    assert start <= 3 * DAY < time_gap_bucket_start(b + 1, 100, 1.0, 365.0)
    assert signal_phrase("time_gap", b, cfg) == f" ({duration_text(start)} before)"
    prev = Config(behavior_signal_text="time_gap", time_gap_ref="previous")
    assert signal_phrase("time_gap", b, prev).endswith("before the next)")
    assert signal_phrase("index", 7, Config(index_origin="newest")) == " (position 7 from newest)"
    assert signal_text_vocabulary(Config()) == []


@pytest.mark.parametrize(
    ("kind", "origin"), [("time_gap", "oldest"), ("index", "oldest"), ("index", "newest")]
)
def test_signal_text_writes_the_sink_signal_after_each_behavior_but_the_last(kind: str, origin: str) -> None:
    r = renderer(behavior_signal_text=kind, index_origin=origin)
    plain = renderer()
    row = ROWS[0]
    _, sinks, _ = build("scratch:bert-tiny", use_sink=True, sink_signal=kind, index_origin=origin)
    signal_ids = [int(s) for s in sinks.encode(row)["signals"]["pos"] if s >= 0]
    e, p = r.encode(row)["pos"], plain.encode(row)["pos"]
    assert e.kept == p.kept == [0, 1, 2, 3, 4] and not e.sink_positions
    for k, (start, end) in enumerate(e.behavior_spans):
        assert all(
            e.token_roles[i] == ROLE_ID["behavior"] and e.behavior_index[i] == k for i in range(start, end)
        )
        text = r.tok.decode(e.input_ids[start:end])
        title = plain.tok.decode(p.input_ids[slice(*p.behavior_spans[k])])
        phrase = signal_phrase(kind, signal_ids[k], r.cfg) if k < len(e.kept) - 1 else ""
        assert normalized(text) == normalized(title + phrase)  # the phrase of the sink after behavior k
    assert e.separator_positions == [end for _, end in e.behavior_spans[:-1]]


@pytest.mark.parametrize("keep", ["last", "first"])
def test_signal_text_counts_in_the_token_budget(keep: str) -> None:
    """At every budget the field fits, keeps whole behaviors from the right end, and fits all of them exactly when
    the budget is the untruncated length: the phrases are counted, neither too little nor too much."""
    r = renderer(behavior_signal_text="time_gap")
    row = ROWS[2]
    items = np.asarray(row["pos_item_idx"])
    order = np.arange(7) if keep == "last" else np.arange(7)[::-1]
    full = r.encode_history("pos", items, None, order, keep, r.signal_note("pos", row))
    assert len(full.kept) == 7
    for budget in range(len(full.input_ids) - 40, len(full.input_ids) + 1):
        r.cfg.max_user_tokens = budget
        e = r.encode_history("pos", items, None, order, keep, r.signal_note("pos", row))
        assert len(e.input_ids) <= budget and e.truncated == 7 - len(e.kept)
        kept = order[7 - len(e.kept) :] if keep == "last" else order[: len(e.kept)]
        assert e.kept == kept.tolist()
        assert (len(e.kept) == 7) == (budget == len(full.input_ids))
        for k, (start, end) in enumerate(e.behavior_spans):  # a phrase on every kept behavior but the last
            assert ("before" in r.tok.decode(e.input_ids[start:end])) == (k < len(e.kept) - 1)


def test_signal_text_baseline_has_no_sinks_and_no_signal_module() -> None:
    model, batcher, _ = build("scratch:bert-tiny", behavior_signal_text="time_gap")
    assert model.signal is None
    f = batcher(ROWS)["fields"]["pos"]
    assert not bool((f["token_roles"] == ROLE_ID["sink"]).any()) and not bool(
        (f["sink_signal_ids"] >= 0).any()
    )


# ------------------------------------------------------------------------------ ablation variants


def test_control_variants() -> None:
    base = Config(index_origin="newest", lr=3e-4)
    sep = variant_config(base, "carrier:separator+time_gap")
    assert (sep.use_sink, sep.signal_carrier, sep.sink_signal, sep.lr) == (
        False,
        "separator",
        "time_gap",
        3e-4,
    )
    text = variant_config(base, "text:time_gap")
    assert (text.use_sink, text.sink_signal, text.behavior_signal_text) == (False, "off", "time_gap")
    assert variant_config(base, "signal:index").index_origin == "oldest"  # the name decides, not the base
    assert variant_config(base, "signal:index_newest").index_origin == "newest"
    assert variant_config(base, "text:index").index_origin == "oldest"
    # a variant decides its components: a base that sets them does not leak into the paper's variants
    leaky = Config(signal_carrier="separator", sink_signal="index", behavior_signal_text="time_gap")
    for name in ("baseline", "sink", "full"):
        cfg = variant_config(leaky, name)
        assert (cfg.signal_carrier, cfg.behavior_signal_text) == ("sink", "off")
    controls = {
        "carrier:separator+time_gap",
        "text:time_gap",
        "signal:index",
        "signal:index_newest",
        "text:index",
    }
    assert controls <= set(DEFAULT_VARIANTS) and set(DEFAULT_VARIANTS) <= set(VARIANTS)
    for name in VARIANTS:  # every variant validates on the default base and has its own folder
        variant_config(Config(), name)
    assert len({run_dir_name(v, 1) for v in VARIANTS}) == len(VARIANTS)
    assert run_dir_name("carrier:separator+time_gap", 1) == "carrier-separator_time_gap/seed1"
