"""Capture points of the ID-row analyses: which hook names they read, and how a series is labelled.

The hook points themselves are named by the rows (`IDModel.hook_points()`); see `sinkviz.idrows` for what each one
holds and how it becomes a candidate-over-history distribution.
"""

from __future__ import annotations

import re

CANDIDATES = ("true", "other")
BRANCHES = ("global", "transition", "local")  # SparseCTR-lite's gate order
MODULE_ORDER = ("din", "target", "cross", "query", "global", "transition", "local")
RAW_WEIGHT_MODULES = {"din", "target"}  # unnormalised, possibly signed weights

_POINTS: list[tuple[re.Pattern[str], str | None]] = [
    (re.compile(r"din\.attn\.weights"), "din"),
    (re.compile(r"target\.attn\.probs"), "target"),
    (re.compile(r"cross\.layer\.(\d+)\.attn\.probs"), "cross"),
    (re.compile(r"query\.layer\.(\d+)\.attn\.probs"), "query"),
    (re.compile(r"layer\.(\d+)\.branch\.(global|transition|local)\.probs"), None),  # module = the branch
    (re.compile(r"layer\.(\d+)\.gates"), "gates"),
    (re.compile(r"chunks"), "chunks"),
]


def parse_point(name: str) -> tuple[str, int] | None:
    """(module, layer) of a hook name these analyses use; None for the others (e.g. encoder self-attention)."""
    for pattern, module in _POINTS:
        m = pattern.fullmatch(name)
        if m:
            groups = m.groups()
            layer = int(groups[0]) if groups else 0
            return (module or groups[1]), layer
    return None


def series_label(module: str, layer: int) -> str:
    """'din', 'cross L1', 'local L0': single-layer modules carry no layer."""
    return module if module in RAW_WEIGHT_MODULES else f"{module} L{layer}"
