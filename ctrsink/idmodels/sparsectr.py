"""SparseCTR-lite: a compact PyTorch re-implementation from the published description of SparseCTR (Lai et al.,
WWW 2026; ../shared/reference/related-models.md §1, §4). Our reading, not the paper's code; its numbers are never
the paper's results.

One sequence = the user's history tokens (left-padded, oldest first) followed by C candidate tokens:

    positions 0..L-1      history: item + category + feedback + time-since-previous-behavior embeddings
    positions L..L+C-1    candidates: item + category embeddings

History tokens are causal among themselves and never see candidates; a candidate sees every real history token and
itself, never another candidate. So the user side does not depend on the candidates (the history time embedding uses
`hist_prev_gap`, not the time-to-target `hist_gap`), and scoring all of a request's candidates in one sequence
(`fold=True`) gives the same logits as scoring them one at a time. Causality among history tokens is about their
content: the chunk boundaries are cut from the whole history's timestamps (all known before the target).

Each block: x += Attn(RMSNorm(x)); x += SwiGLU(RMSNorm(x)). Attention has three branches, all as dense masked
attention so their maps are exact (a sparse kernel's cost is reported by `analytic_flops`):

    global      keys/values = per-chunk means of k/v; a query sees the chunks that end before its position
    transition  rank the same visible chunks by q . mean(k) per head, keep the top-k, attend to their tokens
    local       the `window` previous history tokens plus the query itself

The transition and local scores get the RelTemporal bias B_h(i, j) = sum_c lambda_{h,c} T_c[phi_c(i, j)] over
log-bucketed |dt|, clipped relative position, circular hour difference and weekday relation (the global branch's
keys are chunk summaries and get no bias). Per head and per query, gates from the query mix the branch outputs.

Normalisation (what sums to what, per sequence, head and query):
    each branch's probs sum to 1 over the keys it can see, and are all 0 for a query that sees none (a history
    token with no finished chunk gets 0 from the global and transition branches, a padding token gets 0 everywhere);
    gates="softmax": the three gates sum to 1; gates="sigmoid": each gate is in (0, 1) independently.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ctrsink.config import Config
from ctrsink.idmodels.common import BehaviorEmbedding, HookPoint, IDModel, IDVocab, fold_groups, mlp
from ctrsink.idview import HORIZON_DAYS, TAU_HOURS

BRANCHES = ("global", "transition", "local")
REL_POS_MAX = 128  # relative positions beyond this share one bucket
HOURS_HALF = 12  # circular hour difference 0..12
WEEKDAY_RELATIONS = 3  # same weekday | both weekend | other


def chunk_ids(ts: torch.Tensor, mask: torch.Tensor, chunks: int, mode: str) -> torch.Tensor:
    """Chunk id (0..chunks-1) of every behavior of left-padded rows (B, L); -1 at padding.

    personalized: cut each row at its `chunks - 1` largest gaps between consecutive real behaviors (a row with fewer
    real gaps gets fewer chunks; equal gaps: the earliest wins). fixed: `min(chunks, n)` chunks of equal size (sizes
    differ by at most one) over the row's n real behaviors. Both only look at real behaviors, so the ids do not
    depend on the amount of left padding.
    """
    b, length = ts.shape
    if mode == "fixed":
        n = mask.sum(1, keepdim=True)
        rank = mask.long().cumsum(1) - 1  # index among the real behaviors
        parts = n.clamp(max=chunks)
        ids = torch.div(rank * parts, n.clamp(min=1), rounding_mode="floor")
        return ids.masked_fill(~mask, -1)
    if mode != "personalized":
        raise ValueError(f"unknown chunking mode {mode!r}")
    gaps = torch.full((b, length), -math.inf, dtype=torch.float64, device=ts.device)
    real = mask[:, 1:] & mask[:, :-1]  # gap before position j (j >= 1) between two real behaviors
    gaps[:, 1:] = torch.where(real, (ts[:, 1:] - ts[:, :-1]).double(), -math.inf)
    # stable descending sort: among equal gaps the earliest comes first, on any padding
    order = torch.sort(gaps, dim=1, descending=True, stable=True).indices[:, : max(chunks - 1, 0)]
    cut = torch.zeros(b, length, dtype=torch.bool, device=ts.device)
    cut.scatter_(1, order, True)
    cut &= gaps > -math.inf  # fewer real gaps than chunks - 1: fewer cuts
    return cut.long().cumsum(1).masked_fill(~mask, -1)


def time_bucket(gap_seconds: torch.Tensor, n: int) -> torch.Tensor:
    """Torch twin of `ctrsink.sinks.signals.time_gap_bucket` with the ID view's tau and horizon: ids 0..n-1."""
    tau, horizon = TAU_HOURS * 3600.0, HORIZON_DAYS * 86400.0
    gap = gap_seconds.double().clamp(min=0.0)
    ids = torch.floor((n - 1) / math.log1p(horizon / tau) * torch.log1p(gap / tau)).clamp(max=n - 1)
    return torch.where(gap >= horizon, n - 1, ids).long()


def masked_softmax(scores: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim restricted to `visible`; rows with no visible key are all zeros (no NaN)."""
    scores = scores.masked_fill(~visible, -math.inf)
    scores = scores.masked_fill(~visible.any(-1, keepdim=True), 0.0)
    return torch.softmax(scores, dim=-1) * visible


class RelTemporal(nn.Module):
    """B_h(i, j) = sum_c lambda_{h,c} T_c[phi_c(i, j)]: one learned scalar per bucket, learnable mixing lambda.

    Tables start at zero and lambda at one, so a fresh model starts as the plain model and both can learn;
    lambda = 0 gives exactly the plain model (`temporal_bias="none"`). mode "shared": one lambda per component for
    all heads; "per_head": one per head and component.
    """

    def __init__(self, heads: int, time_buckets: int, mode: str) -> None:
        super().__init__()
        sizes = (time_buckets, REL_POS_MAX + 1, HOURS_HALF + 1, WEEKDAY_RELATIONS)
        self.tables = nn.ParameterList([nn.Parameter(torch.zeros(n)) for n in sizes])
        self.lam = nn.Parameter(torch.ones(heads if mode == "per_head" else 1, len(sizes)))

    def forward(self, phi: torch.Tensor) -> torch.Tensor:
        """phi (S, T, T, 4) bucket ids -> bias (S, H, T, T) (H = 1 when shared)."""
        values = torch.stack([t[phi[..., c]] for c, t in enumerate(self.tables)], dim=-1)
        return torch.einsum("stuc,hc->shtu", values, self.lam)


class Attention(nn.Module):
    """Three-branch attention (global / transition / local) with per-head, per-query fusion gates."""

    def __init__(self, cfg: Config, layer: int) -> None:
        super().__init__()
        d, self.heads = cfg.id_model.dim, cfg.id_model.heads
        self.top_k, self.window, self.gate_mode = (
            cfg.sparsectr.top_k,
            cfg.sparsectr.window,
            cfg.sparsectr.gates,
        )
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.gate = nn.Linear(d, 3 * self.heads)
        self.proj = nn.Linear(d, d, bias=False)
        mode = cfg.sparsectr.temporal_bias
        self.bias = None if mode == "none" else RelTemporal(self.heads, cfg.id_model.time_buckets, mode)
        self.hook_probs = nn.ModuleDict(
            {b: HookPoint(f"layer.{layer}.branch.{b}.probs") for b in BRANCHES}
        )  # (S, H, T, P) for global, (S, H, T, T) for transition and local
        self.hook_gates = HookPoint(f"layer.{layer}.gates")  # (S, H, T, 3): global, transition, local

    def forward(self, x: torch.Tensor, lay: dict[str, torch.Tensor]) -> torch.Tensor:
        s, t, d = x.shape
        h = self.heads
        q, k, v = (z.view(s, t, h, d // h).transpose(1, 2) for z in self.qkv(x).split(d, dim=-1))
        scale = 1.0 / math.sqrt(d // h)
        length = lay["chunk"].shape[1]
        # global: attention over per-chunk means of the history keys / values
        kbar = torch.einsum("slp,shld->shpd", lay["member_mean"], k[:, :, :length])
        vbar = torch.einsum("slp,shld->shpd", lay["member_mean"], v[:, :, :length])
        chunk_scores = torch.einsum("shtd,shpd->shtp", q, kbar) * scale
        chunk_vis = lay["chunk_vis"].unsqueeze(1)  # (S,1,T,P)
        p_global = self.hook_probs["global"](masked_softmax(chunk_scores, chunk_vis))
        # transition: the top-k visible chunks by q . mean(k), then their tokens (all earlier than the query)
        ranked = chunk_scores.masked_fill(~chunk_vis, -math.inf)
        top = ranked.topk(min(self.top_k, ranked.shape[-1]), dim=-1).indices
        chosen = torch.zeros_like(chunk_vis.expand_as(ranked)).scatter(-1, top, True) & chunk_vis
        ids = lay["chunk"].clamp(min=0)[:, None, None, :].expand(s, h, t, length)
        in_chosen = F.pad(chosen.gather(-1, ids), (0, t - length))  # (S,H,T,T); candidates are in no chunk
        scores = torch.einsum("shtd,shud->shtu", q, k) * scale
        if self.bias is not None:
            scores = scores + self.bias(lay["phi"])
        p_trans = self.hook_probs["transition"](masked_softmax(scores, in_chosen & lay["visible"]))
        p_local = self.hook_probs["local"](masked_softmax(scores, lay["local"]))
        out = torch.stack([p_global @ vbar, p_trans @ v, p_local @ v], dim=-1)  # (S,H,T,dh,3)
        logits = self.gate(x).view(s, t, h, 3).transpose(1, 2)
        gates = torch.softmax(logits, -1) if self.gate_mode == "softmax" else torch.sigmoid(logits)
        gates = self.hook_gates(gates)  # (S,H,T,3)
        out = (out * gates.unsqueeze(-2)).sum(-1)
        return self.proj(out.transpose(1, 2).reshape(s, t, d))


class SwiGLU(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        hidden = (8 * d // 3 + 7) // 8 * 8  # ~ (8/3) d: the parameter count of a 4d GELU MLP
        self.up = nn.Linear(d, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.up(x).chunk(2, dim=-1)
        return self.down(F.silu(a) * b)


class Block(nn.Module):
    def __init__(self, cfg: Config, layer: int) -> None:
        super().__init__()
        d = cfg.id_model.dim
        self.norm1, self.norm2 = nn.RMSNorm(d), nn.RMSNorm(d)
        self.attn, self.ffn = Attention(cfg, layer), SwiGLU(d)
        self.drop = nn.Dropout(cfg.id_model.dropout)

    def forward(self, x: torch.Tensor, lay: dict[str, torch.Tensor]) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), lay))
        return x + self.drop(self.ffn(self.norm2(x)))


class SparseCTRLite(IDModel):
    """SparseCTR-lite (our reading of the paper, see the module docstring): logits (B,) of a batch of ID fields.

    `fold=True`: one sequence per group of rows sharing a history (`fields["group"]`) with all of the group's
    candidates appended; `fold=False`: one sequence per row with its one candidate. Same logits either way.

    Hook points (S = sequences: groups when folded, rows otherwise; T = L + C, the mixed length with C candidate
    slots; P = `sparsectr.chunks`): `chunks` (S, L) chunk ids, -1 at padding; `layer.{l}.branch.global.probs`
    (S, H, T, P); `layer.{l}.branch.{transition,local}.probs` (S, H, T, T); `layer.{l}.gates` (S, H, T, 3) in the
    order global, transition, local. Set `fold = False` to get one sequence per batch row.
    """

    folds = True

    def __init__(self, cfg: Config, vocab: IDVocab) -> None:
        super().__init__(cfg, vocab)
        d = cfg.id_model.dim
        self.fold = True
        self.embed = BehaviorEmbedding(vocab, d, time_key="hist_prev_gap")
        self.blocks = nn.ModuleList(Block(cfg, layer) for layer in range(cfg.id_model.layers))
        self.norm = nn.RMSNorm(d)
        self.head = mlp([2 * d, 128, 64, 1], dropout=cfg.id_model.dropout)
        self.hook_chunks = HookPoint("chunks")

    def layout(
        self, fields: dict[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """(per-sequence fields with candidates (S, C), sequence index of each row (B,), candidate slot of each row)."""
        b = len(fields["target_item"])
        if self.fold:
            first, seq = fold_groups(fields)
        else:
            first = seq = torch.arange(b, device=fields["target_item"].device)
        counts = torch.bincount(seq, minlength=len(first))
        start = counts.cumsum(0) - counts
        order = torch.argsort(seq, stable=True)
        slot = torch.empty_like(seq)
        slot[order] = torch.arange(b, device=seq.device) - start[seq[order]]
        out = {k: fields[k][first] for k in ("hist_item", "hist_cat", "hist_feedback", "hist_prev_gap")}
        out.update({k: fields[k][first] for k in ("hist_hour", "hist_weekday", "hist_ts", "hist_mask")})
        shape = (len(first), int(counts.max()) if b else 0)
        for k in ("target_item", "target_cat", "target_ts", "target_hour", "target_weekday"):
            out[k] = fields[k].new_zeros(shape).index_put_((seq, slot), fields[k])
        # slots holding a row; the others pad a group to C candidates, are computed and dropped
        out["cand_mask"] = torch.zeros(shape, dtype=torch.bool, device=seq.device).index_put_(
            (seq, slot), torch.ones_like(seq, dtype=torch.bool)
        )
        return out, seq, slot

    def masks(self, f: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Visibility masks, chunk layout and temporal bucket ids of the mixed sequences (shared by all layers)."""
        mask = f["hist_mask"]
        s, length = mask.shape
        c = f["target_item"].shape[1]
        t = length + c
        sc = self.cfg.sparsectr
        chunk = self.hook_chunks(chunk_ids(f["hist_ts"], mask, sc.chunks, sc.chunking))
        member = F.one_hot(chunk.clamp(min=0), sc.chunks).bool() & mask.unsqueeze(-1)  # (S, L, P)
        size = member.sum(1, keepdim=True)
        dev = mask.device
        pos = torch.arange(t, device=dev).clamp(max=length)  # every candidate sits just after the history
        end = torch.where(member, pos[None, :length, None], -1).amax(1)  # (S, P) last position, -1 when empty
        # causal among real history tokens; a candidate sees the real history and itself, never other candidates
        hist_key = F.pad(mask, (0, c))[:, None, :]  # (S, 1, T): candidate keys are not history keys
        self_cand = torch.eye(t, dtype=torch.bool, device=dev) & (pos >= length)
        visible = hist_key & (pos[:, None] >= torch.arange(t, device=dev)[None, :]) | self_cand
        rel = pos[:, None] - pos[None, :]  # (T, T), >= 0 wherever visible
        local = visible & (rel <= self.cfg.sparsectr.window)
        # time, hour, weekday of every token: candidates take the target's
        ts = torch.cat([f["hist_ts"], f["target_ts"]], 1)
        hour = torch.cat([f["hist_hour"], f["target_hour"]], 1)
        wd = torch.cat([f["hist_weekday"], f["target_weekday"]], 1)
        dh = (hour[:, :, None] - hour[:, None, :]).abs() % 24
        weekend = wd >= 6  # Monday = 1
        same = wd[:, :, None] == wd[:, None, :]
        phi = torch.stack(
            [
                time_bucket((ts[:, :, None] - ts[:, None, :]).abs(), self.cfg.id_model.time_buckets),
                rel.clamp(0, REL_POS_MAX)[None].expand(s, t, t),
                torch.minimum(dh, 24 - dh),
                torch.where(same, 0, torch.where(weekend[:, :, None] & weekend[:, None, :], 1, 2)),
            ],
            dim=-1,
        )
        return {
            "chunk": chunk,
            "member_mean": member / size.clamp(min=1),
            "chunk_vis": (size > 0) & (end[:, None, :] < pos[None, :, None]),  # (S, T, P): chunk ended before
            "visible": visible.unsqueeze(1),
            "local": local.unsqueeze(1),
            "phi": phi,
        }

    def forward(self, fields: dict[str, torch.Tensor], pooling: str = "all_tokens") -> torch.Tensor:
        f, seq, slot = self.layout(fields)
        hist = self.embed.history(f)  # (S, L, d)
        x = torch.cat([hist, self.embed.candidate(f)], dim=1)
        lay = self.masks(f)
        for block in self.blocks:
            x = block(x, lay)
        length = hist.shape[1]
        cand = self.norm(x[:, length:])[seq, slot]  # (B, d)
        m = f["hist_mask"].unsqueeze(-1).to(hist.dtype)
        profile = ((hist * m).sum(1) / m.sum(1).clamp(min=1.0))[seq]
        return self.head(torch.cat([cand, profile], dim=-1)).squeeze(-1)

    def analytic_flops(self, length: int, candidates: int = 1) -> dict[str, float]:
        """Multiply-add FLOPs (2 per MAC) of one forward of one sequence: `length` behaviors, `candidates` candidates.

        Counts the matmuls only (projections, attention scores and weighted sums, chunk pooling, FFN, head);
        embedding look-ups, masks, the temporal bias and element-wise ops are left out. "dense": this
        implementation (every branch scores all T = length + candidates tokens); "sparse": a kernel that only
        touches the keys each branch uses: P chunk summaries, top_k chunks of length / P tokens, window + 1 tokens.
        """
        d, h, layers = self.cfg.id_model.dim, self.cfg.id_model.heads, self.cfg.id_model.layers
        sc = self.cfg.sparsectr
        p, t = sc.chunks, length + candidates
        hidden = self.blocks[0].ffn.down.in_features if layers else 0
        shared = 2 * t * d * (3 * d + 3 * h + d + 3 * hidden)  # qkv, gates, out proj, SwiGLU
        pooled = 2 * 2 * length * p * d + 2 * 2 * t * p * d  # chunk means of k, v; global scores + sums
        dense = 2 * 3 * t * t * d  # token scores (once), transition and local weighted sums
        sparse = 2 * 2 * t * (sc.top_k * length / max(p, 1) + sc.window + 1) * d
        head = candidates * 2 * (2 * d * 128 + 128 * 64 + 64)
        return {
            "dense": float(layers * (shared + pooled + dense) + head),
            "sparse": float(layers * (shared + pooled + sparse) + head),
        }
