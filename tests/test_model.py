"""The CTR model's sink paths on tiny scratch backbones, encoder (BERT) and decoder (Qwen2) (method spec §4-§7):
signal rows in the embeddings, sink-only pooling, the inter-sink bias under sdpa and eager, decoder causality,
agreement with the library's own forward, and that every ablation variant trains.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch
from builders import CATS, DAY, HISTORY, T0, TITLES, make_items  # noqa: E402,F401
from builders import make_row as _make_row

from ctrsink.backbones import additive_mask, load_backbone
from ctrsink.config import PROMPT_PRESETS, Config
from ctrsink.model import CTRModel, masked_mean
from ctrsink.run import assemble
from ctrsink.sinks.tokens import choose_sink_token
from ctrsink.text import ITEM_FIELDS, ROLE_ID

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BERT, QWEN = "scratch:bert-tiny", "scratch:qwen2-tiny"
FAMILIES = [BERT, QWEN]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is faster, and immune to other processes competing for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_row(*args, **kwargs) -> dict:
    return _make_row(*args, gap_days=3, **kwargs)


# varied lengths: padding in every field, a history with one behavior (no sink) and an empty one
ROWS = [
    make_row(0, [3, 0, 7, 11, 5], [2, 4, 9], target=1, label=1),
    make_row(1, [1, 2], [], target=6, label=0),
    make_row(2, [8, 9, 10, 11, 0, 1, 2], [3], target=4, label=1),
    make_row(3, [5], [6, 7], target=10, label=0),
]
# identical token lengths in every field: no padding anywhere
UNPADDED = [
    make_row(10, [1, 2, 3, 4], [5, 6], target=8, label=1),
    make_row(11, [4, 3, 2, 1], [6, 5], target=8, label=0),
]


def texts() -> list[str]:
    return TITLES + CATS + list(PROMPT_PRESETS["en"].values()) + [";", " (liked)", " (disliked)"]


def unit_vectors(seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(len(TITLES), 16))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def build(backbone: str, *, item_vectors: np.ndarray | None = None, **overrides):
    """-> (model, batcher, cfg, tokenizer) on a seeded scratch backbone: hidden 32, 4 heads (Qwen2: 2 kv heads)."""
    values = dict(
        backbone=backbone,
        scratch_hidden=32,
        scratch_layers=2,
        scratch_heads=4,
        scratch_kv_heads=2,
        scratch_vocab_size=400,
        seed=0,
    )
    values.update(overrides)
    cfg = Config(**values).validate()
    bb, tok, _ = load_backbone(cfg, texts())
    model, batcher, _ = assemble(cfg, bb, tok, make_items(), HISTORY, item_vectors)
    torch.manual_seed(1)
    return model, batcher, cfg, tok


def logits(model: CTRModel, batch: dict, pooling: str = "all_tokens") -> torch.Tensor:
    with torch.no_grad():
        return model(batch["fields"], pooling=pooling)


def amplify_inter_sink(model: CTRModel, lam: float = 5.0) -> None:
    """Sharper, stronger inter-sink bias so its effects are far above float noise in a random tiny model."""
    with torch.no_grad():
        for m in model.inter_sink.values():
            m.q.weight.mul_(4.0)
            m.k.weight.mul_(4.0)
            m.inter_sink_lambda.fill_(lam)


# ------------------------------------------------------------------------- 4. signal rows in the embeddings


@pytest.mark.parametrize("family", FAMILIES)
def test_signal_embedding_replaces_exactly_the_sink_rows(family: str, monkeypatch) -> None:
    model, batcher, _, _ = build(family, use_sink=True, sink_signal="time_gap")
    model.eval()
    f = batcher(ROWS)["fields"]["pos"]
    fed = []
    real_embed = model.backbone.embed
    monkeypatch.setattr(model.backbone, "embed", lambda x: (fed.append(x.detach().clone()), real_embed(x))[1])
    signal = model.signal
    with torch.no_grad():
        model.encode_field("pos", f, "all_tokens")
        model.signal = None
        model.encode_field("pos", f, "all_tokens")
        model.signal = signal
    with_signal, without = fed
    ids = f["sink_signal_ids"]
    is_sink = ids >= 0
    assert torch.equal(is_sink, f["token_roles"] == ROLE_ID["sink"])
    assert int(is_sink.sum()) == 4 + 1 + 6 + 0
    assert torch.equal(with_signal[~is_sink], without[~is_sink])
    assert torch.equal(without, model.backbone.word_embeddings()(f["input_ids"]).detach())
    expected = signal.table.weight[ids[is_sink]] @ signal.proj.weight.T + signal.proj.bias
    torch.testing.assert_close(with_signal[is_sink], expected.detach(), rtol=0, atol=1e-6)
    # different signal ids give different sink rows: the signal is not a constant
    assert len(set(ids[is_sink].tolist())) > 1
    assert not torch.allclose(with_signal[is_sink][0], with_signal[is_sink][1])


# ------------------------------------------------------------------------------ 5. stage-1 pooling by gradient


@pytest.mark.parametrize("family", FAMILIES)
def test_sink_only_pooling_reads_only_sinks(family: str) -> None:
    model, batcher, _, _ = build(family, use_sink=True, sink_signal="index", two_stage=True)
    model.eval()
    f = batcher(ROWS)["fields"]["pos"]
    last_lower = model.backbone.layers[model.split_at - 1]
    assert model.split_at == 1 < model.backbone.num_layers  # split layer: the pooled vector is stage-1's v_f

    def grad_per_position(pooling: str) -> torch.Tensor:
        captured = []

        def hook(module, args, out):
            h = out[0] if isinstance(out, tuple) else out
            h.retain_grad()
            captured.append(h)

        handle = last_lower.register_forward_hook(hook)
        try:
            pooled = model.encode_field("pos", f, pooling)
        finally:
            handle.remove()
        assert pooled.shape == (len(ROWS), model.backbone.hidden_size)
        direction = torch.randn(pooled.shape, generator=torch.Generator().manual_seed(0))
        (pooled * direction).sum().backward()
        (h,) = captured
        return h.grad.abs().sum(-1)

    sink = f["token_roles"] == ROLE_ID["sink"]
    g = grad_per_position("sink_only")
    expected = sink.clone()
    expected[~sink.any(1), 0] = True  # a history without sinks pools its first token
    assert torch.equal(g > 0, expected)
    assert bool(sink[0].sum() == 4) and not bool(sink[3].any())

    model.zero_grad()
    g = grad_per_position("all_tokens")
    assert torch.equal(g > 0, f["attention_mask"].bool())
    # item fields always pool all tokens, also in stage 1
    t = batcher(ROWS)["fields"]["title"]
    with torch.no_grad():
        torch.testing.assert_close(
            model.encode_field("title", t, "sink_only"), model.encode_field("title", t, "all_tokens")
        )


# ------------------------------------------------------------------------ 7. sdpa == eager, golden lambda = 0


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("rows", [ROWS, UNPADDED], ids=["padded", "unpadded"])
def test_sdpa_and_eager_agree_with_inter_sink(family: str, rows: list[dict]) -> None:
    model, batcher, cfg, _ = build(
        family, use_sink=True, sink_signal="index", inter_sink=True, scratch_layers=4
    )
    model.eval()
    assert len(model.inter_sink) == 2  # BERT min(2, L); Qwen2 L // 2
    amplify_inter_sink(model)
    batch = batcher(rows)
    if rows is UNPADDED:
        assert all(bool(batch["fields"][name]["attention_mask"].all()) for name in batch["fields"])
    model.backbone.set_attn_implementation("sdpa")
    assert model.backbone.attn_implementation == "sdpa"
    sdpa = logits(model, batch)
    model.backbone.set_attn_implementation("eager")
    assert model.backbone.attn_implementation == "eager"
    eager = logits(model, batch)
    torch.testing.assert_close(sdpa, eager, rtol=0, atol=1e-5)
    # each sample scores the same alone (no padding) as in its batch, in both implementations
    for i, row in enumerate(rows):
        torch.testing.assert_close(logits(model, batcher([row]))[0], eager[i], rtol=0, atol=1e-5)
    model.backbone.set_attn_implementation("sdpa")
    for i, row in enumerate(rows):
        torch.testing.assert_close(logits(model, batcher([row]))[0], sdpa[i], rtol=0, atol=1e-5)

    with torch.no_grad():
        pooled_biased = model.encode_field("pos", batch["fields"]["pos"], "sink_only")
    # golden: lambda = 0 is the model without inter-sink attention (same weights otherwise)
    with torch.no_grad():
        for m in model.inter_sink.values():
            m.inter_sink_lambda.zero_()
    zero = logits(model, batch)
    assert not torch.equal(zero, sdpa)  # the bias did change the logits above ...
    with torch.no_grad():  # ... visibly so at the sinks (the tiny random head squashes logits)
        pooled_zero = model.encode_field("pos", batch["fields"]["pos"], "sink_only")
        assert (pooled_zero - pooled_biased).abs().max() > 1e-3
    off = CTRModel(model.backbone, dataclasses.replace(cfg, inter_sink=False), model.fields, HISTORY).eval()
    assert len(off.inter_sink) == 0
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("inter_sink.")}
    off.load_state_dict(state, strict=True)
    torch.testing.assert_close(logits(off, batch), zero, rtol=0, atol=1e-6)
    model.backbone.set_attn_implementation("eager")
    torch.testing.assert_close(logits(off, batch), zero, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("rows", [ROWS, UNPADDED], ids=["padded", "unpadded"])
def test_layer_loop_matches_the_library_forward(family: str, rows: list[dict]) -> None:
    """The hand-driven layer loop (own masks, RoPE, embeddings) equals the model's own forward (no split, no sink)."""
    model, batcher, _, _ = build(family, split_layer=False)
    model.eval()
    assert model.split_at == model.backbone.num_layers
    batch = batcher(rows)
    for name in HISTORY + list(ITEM_FIELDS):
        f = batch["fields"][name]
        with torch.no_grad():
            ours = model.encode_field(name, f, "all_tokens")
            out = model.backbone.model(input_ids=f["input_ids"], attention_mask=f["attention_mask"])
            theirs = masked_mean(out.last_hidden_state, f["attention_mask"].bool())
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------ 8. decoder causality


def _lower_states(model: CTRModel, f: dict) -> list[torch.Tensor]:
    states = []
    handles = [
        model.backbone.layers[i].register_forward_hook(
            lambda m, a, out: states.append((out[0] if isinstance(out, tuple) else out).detach().clone())
        )
        for i in range(model.split_at)
    ]
    try:
        with torch.no_grad():
            model.encode_field("pos", f, "all_tokens")
    finally:
        for h in handles:
            h.remove()
    return states


def _perturbed_after(f: dict, p: int, vocab: int) -> dict:
    """New ids and signal ids at every position after p (sink ids and roles kept, so sinks stay sinks)."""
    g = {k: v.clone() for k, v in f.items()}
    after = torch.zeros_like(g["input_ids"], dtype=torch.bool)
    after[:, p + 1 :] = True
    plain = after & (g["token_roles"] != ROLE_ID["sink"])
    g["input_ids"][plain] = (g["input_ids"][plain] * 7 + 11) % vocab
    sink_after = after & (g["token_roles"] == ROLE_ID["sink"])
    g["sink_signal_ids"][sink_after] = (g["sink_signal_ids"][sink_after] + 37) % 100
    return g


def _decoder_with_inter_sink():
    model, batcher, _, tok = build(
        QWEN, use_sink=True, sink_signal="index", inter_sink=True, scratch_layers=4
    )
    model.eval()
    amplify_inter_sink(model)
    f = batcher([make_row(0, [3, 0, 7, 11, 5, 2], [1])])["fields"]["pos"]  # one sample: no padding
    assert bool(f["attention_mask"].all())
    sinks = (f["token_roles"][0] == ROLE_ID["sink"]).nonzero().flatten().tolist()
    assert len(sinks) == 5 and model.split_at == 2 and len(model.inter_sink) == 2
    return model, f, sinks, len(tok)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_decoder_lower_layers_are_causal_with_inter_sink(impl: str) -> None:
    model, f, sinks, vocab = _decoder_with_inter_sink()
    model.backbone.set_attn_implementation(impl)
    assert all(m.causal for m in model.inter_sink.values())  # model.py builds decoders' bias causal
    for p in (sinks[1], sinks[1] + 1, sinks[3] - 1):
        before = _lower_states(model, f)
        after = _lower_states(model, _perturbed_after(f, p, vocab))
        assert len(before) == model.split_at
        for h0, h1 in zip(before, after):
            torch.testing.assert_close(h1[:, : p + 1], h0[:, : p + 1], rtol=0, atol=1e-6)
            assert (h1[:, p + 1 :] - h0[:, p + 1 :]).abs().max() > 1e-3  # the perturbation is real


def test_reference_inter_sink_softmax_leaks_the_future_into_a_decoder() -> None:
    """Without the causal inner softmax (the reference), earlier sinks see later sinks through the normaliser."""
    model, f, sinks, vocab = _decoder_with_inter_sink()
    for m in model.inter_sink.values():
        m.causal = False
    p = sinks[1]
    before = _lower_states(model, f)
    after = _lower_states(model, _perturbed_after(f, p, vocab))
    # layer 0: later sinks' signal rows changed, and earlier sinks see them through the inner softmax's normaliser
    leak = (after[0][:, : p + 1] - before[0][:, : p + 1]).abs().amax(-1)[0]
    assert leak.max() > 1e-4
    assert set(leak.nonzero().flatten().tolist()) == {s for s in sinks if s <= p}  # only the sink rows
    # from there it spreads to every later position of the next layer
    assert (after[1][:, : p + 1] - before[1][:, : p + 1]).abs().max() > 1e-4


def test_assembled_decoder_inter_sink_is_causal() -> None:
    model, f, sinks, vocab = _decoder_with_inter_sink()
    assert all(m.causal for m in model.inter_sink.values())
    p = sinks[1]
    before, after = _lower_states(model, f), _lower_states(model, _perturbed_after(f, p, vocab))
    for h0, h1 in zip(before, after):
        torch.testing.assert_close(h1[:, : p + 1], h0[:, : p + 1], rtol=0, atol=1e-6)


def test_encoder_inter_sink_is_not_causal() -> None:
    model, _, _, _ = build(BERT, use_sink=True, inter_sink=True)
    assert len(model.inter_sink) == 1  # min(2, L) capped by the split at L // 2 = 1
    assert not any(m.causal for m in model.inter_sink.values())
    assert all(m.inter_sink_lambda.item() == 10.0 for m in model.inter_sink.values())
    qwen, _, _, _ = build(QWEN, use_sink=True, inter_sink=True)
    assert all(m.inter_sink_lambda.item() == 1.0 for m in qwen.inter_sink.values())


def test_additive_mask_is_causal_without_padding() -> None:
    """Spec weakness #2: an unpadded decoder batch still gets a causal mask."""
    ones = torch.ones(2, 5, dtype=torch.long)
    mask = additive_mask(ones, causal=True, dtype=torch.float32)
    blocked = mask[0, 0] < 0
    assert torch.equal(blocked, torch.ones(5, 5, dtype=torch.bool).triu(1))
    assert bool((additive_mask(ones, causal=False, dtype=torch.float32) == 0).all())


# --------------------------------------------------------------------------------- 9. every variant trains

VARIANTS = {
    "no_sink": dict(use_sink=False),
    "sink": dict(use_sink=True),
    "signal_none": dict(use_sink=True, sink_signal="none"),
    "signal_index": dict(use_sink=True, sink_signal="index"),
    "signal_time_gap": dict(use_sink=True, sink_signal="time_gap"),
    "signal_random": dict(use_sink=True, sink_signal="random"),
    "signal_similarity": dict(use_sink=True, sink_signal="similarity"),
    "two_stage": dict(use_sink=True, sink_signal="index", two_stage=True),
    "inter_sink": dict(use_sink=True, inter_sink=True),
    "cls_sink": dict(use_sink=True, use_cls_token=True, sink_signal="index"),
    "all_on": dict(use_sink=True, sink_signal="time_gap", two_stage=True, inter_sink=True),
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_trains(family: str, variant: str) -> None:
    values = VARIANTS[variant]
    if values.get("use_cls_token") and family == QWEN:
        pytest.skip("the [CLS]-sink ablation needs a CLS token (encoders only)")
    vectors = unit_vectors() if values.get("sink_signal") == "similarity" else None
    model, batcher, cfg, tok = build(family, item_vectors=vectors, **values)
    model.train()
    pooling = "sink_only" if cfg.two_stage else "all_tokens"
    batch = batcher(ROWS)
    sink_id = None
    if cfg.use_sink:
        sink_id = tok.convert_tokens_to_ids(choose_sink_token(tok, cfg.sink_token, cfg.use_cls_token))
        assert int((batch["fields"]["pos"]["token_roles"] == ROLE_ID["sink"]).sum()) == 4 + 1 + 6
    else:
        assert not any(bool((f["token_roles"] == ROLE_ID["sink"]).any()) for f in batch["fields"].values())
    assert all(p.requires_grad for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = []
    for step in range(3):
        opt.zero_grad()
        loss = loss_fn(model(batch["fields"], pooling=pooling), batch["labels"])
        assert torch.isfinite(loss)
        loss.backward()
        if step == 0:
            _assert_sink_modules_get_gradient(model, cfg, sink_id)
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    moved = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert any(n.startswith("backbone.") for n in moved) and any(n.startswith("ctr.") for n in moved)
    if model.signal is not None:
        assert "signal.table.weight" in moved and "signal.proj.weight" in moved
    for name in model.inter_sink:
        assert f"inter_sink.{name}.inter_sink_lambda" in moved


def _assert_sink_modules_get_gradient(model: CTRModel, cfg: Config, sink_id: int | None) -> None:
    if cfg.use_sink and cfg.sink_signal != "off":
        assert model.signal is not None
        assert model.signal.table.weight.grad is not None and model.signal.table.weight.grad.abs().sum() > 0
        assert model.signal.proj.weight.grad.abs().sum() > 0
    else:
        assert model.signal is None
    if cfg.inter_sink:
        assert len(model.inter_sink) > 0
        for m in model.inter_sink.values():
            assert m.inter_sink_lambda.requires_grad
            assert m.inter_sink_lambda.grad is not None and m.inter_sink_lambda.grad.abs() > 0
            assert m.q.weight.grad is not None and m.q.weight.grad.abs().sum() > 0
    else:
        assert len(model.inter_sink) == 0
    if cfg.use_sink and cfg.sink_signal == "off":  # the sink token's own embedding row trains
        row = model.backbone.word_embeddings().weight.grad[sink_id]
        assert row.abs().sum() > 0
