"""Inter-sink attention bias (spec §7): sinks attend to each other through a per-layer, content-dependent bias.

The bias enters as a 4-D additive attention mask, which both the `sdpa` and the `eager` attention functions of
transformers take as given, so the same numbers flow on the fast path and while attention is captured.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class InterSinkBias(nn.Module):
    """Per patched layer: LN -> Q, K projections -> softmax over sinks -> mean over heads, times a learnable lambda."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        lambda_init: float,
        dropout: float = 0.0,
        mask_padded_before_softmax: bool = True,
        causal: bool = False,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(hidden_size)
        self.q = nn.Linear(hidden_size, hidden_size)
        self.k = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.inter_sink_lambda = nn.Parameter(torch.tensor(float(lambda_init)))
        # the reference lets padded sink slots into the softmax, so a sample depends on its batch (weakness #5)
        self.mask_padded_before_softmax = mask_padded_before_softmax
        # decoders: sink i's inner softmax sees only sinks j <= i. The reference normalises over all sinks, so the
        # bias an earlier sink gets depends on later sinks' states: a leak of future tokens into past positions.
        self.causal = causal
        self.last_affinity: torch.Tensor | None = None  # (B, m, m), kept for capture hooks

    def affinity(self, sink_states: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        b, m, h = sink_states.shape
        d = h // self.num_heads
        x = self.norm(sink_states)
        q = self.q(x).view(b, m, self.num_heads, d).transpose(1, 2)
        k = self.k(x).view(b, m, self.num_heads, d).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d)  # (B, heads, m, m)
        if self.mask_padded_before_softmax:
            scores = scores.masked_fill(~valid[:, None, None, :], torch.finfo(scores.dtype).min)
        if self.causal:  # positions are in sequence order, so slot j > i is a later sink
            later = torch.ones(m, m, dtype=torch.bool, device=scores.device).triu(1)
            scores = scores.masked_fill(later, torch.finfo(scores.dtype).min)
        a = self.dropout(torch.softmax(scores, dim=-1)).mean(dim=1)
        pair = valid[:, :, None] & valid[:, None, :]
        return a * pair.to(a.dtype)

    def forward(
        self, attn_input: torch.Tensor, sink_positions: torch.Tensor, sink_valid: torch.Tensor
    ) -> torch.Tensor:
        """-> (B, 1, T, T) additive bias, lambda * A at sink-to-sink entries and exactly 0 elsewhere."""
        b, t, h = attn_input.shape
        idx = sink_positions.clamp(min=0)
        states = torch.gather(attn_input, 1, idx.unsqueeze(-1).expand(-1, -1, h))
        a = self.affinity(states, sink_valid)
        self.last_affinity = a.detach()
        bias = attn_input.new_zeros(b, t, t)
        m = idx.shape[1]
        bi = torch.arange(b, device=idx.device)[:, None, None].expand(b, m, m)
        rows = idx[:, :, None].expand(b, m, m)
        cols = idx[:, None, :].expand(b, m, m)
        # accumulate: padded slots all point at position 0 and carry exactly 0, so they add nothing
        # under autocast the affinity comes out in bf16/fp16; the bias keeps the hidden states' dtype
        bias = bias.index_put((bi, rows, cols), a.to(bias.dtype), accumulate=True)
        return (self.inter_sink_lambda * bias).unsqueeze(1)


def gather_sink_positions(token_roles: torch.Tensor, sink_role: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) roles -> (B, m_max) sink positions (0-padded) and validity, in sequence order."""
    is_sink = token_roles == sink_role
    counts = is_sink.sum(1)
    m = int(counts.max().item()) if counts.numel() else 0
    if m == 0:
        z = torch.zeros(token_roles.shape[0], 0, dtype=torch.long, device=token_roles.device)
        return z, z.bool()
    # stable sort puts sink positions first, in order
    order = torch.sort((~is_sink).to(torch.int8), dim=1, stable=True).indices[:, :m]
    valid = torch.arange(m, device=token_roles.device)[None, :] < counts[:, None]
    return torch.where(valid, order, torch.zeros_like(order)), valid
