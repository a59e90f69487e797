"""Named attention hook points and a `capture` context manager over the supported backbones.

Hook names are a public contract, TransformerLens style: `layer.{i}.attn.pattern` is the (B, H, T, T) attention
probability tensor of layer i. Where the attention module sits inside a layer is declared once per architecture in
`ARCHITECTURES`. Attention weights exist only under the `eager` implementation, so `capture` switches to it for the
duration of the block and puts the previous (fast) implementation back afterwards, also when the block raises.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ctrsink.backbones import Backbone

HOOK_TEMPLATE = "layer.{i}.attn.pattern"


@dataclass(frozen=True)
class ArchSpec:
    """Where a family keeps its layer list (inside the base model) and the attention module (inside a layer)."""

    layers: str
    attention: str


# model_type -> paths; the one place to touch when adding an architecture
ARCHITECTURES: dict[str, ArchSpec] = {
    "bert": ArchSpec(layers="encoder.layer", attention="attention.self"),
    "roberta": ArchSpec(layers="encoder.layer", attention="attention.self"),
    "qwen2": ArchSpec(layers="layers", attention="self_attn"),
    "qwen3": ArchSpec(layers="layers", attention="self_attn"),
}

# built-in implementations that return no weights; anything else (eager, a registered custom function) is kept
_FAST_IMPLEMENTATIONS = (
    "sdpa",
    "flash_attention_2",
    "flash_attention_3",
    "flex_attention",
    "paged_attention",
)

NamesFilter = None | str | Collection[str] | Callable[[str], bool]
HeadsFilter = None | Sequence[int] | Mapping[int, Sequence[int]]


def hook_name(layer: int) -> str:
    return HOOK_TEMPLATE.format(i=layer)


def hook_names(num_layers: int) -> list[str]:
    """All hook points of a model with `num_layers` layers, in layer order."""
    return [hook_name(i) for i in range(num_layers)]


@dataclass(frozen=True)
class AttentionEvent:
    """One captured pattern: hook name, layer index, the CTR field being processed (None on a plain model)."""

    name: str
    layer: int
    field: str | None
    pattern: torch.Tensor  # (B, len(heads), T, T), detached
    heads: tuple[int, ...]


class AttentionCache:
    """Everything captured in one `capture` block when no callback is given (nothing is kept otherwise)."""

    def __init__(self) -> None:
        self.events: list[AttentionEvent] = []

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[AttentionEvent]:
        return iter(self.events)

    def names(self) -> list[str]:
        return sorted({e.name for e in self.events}, key=lambda n: int(n.split(".")[1]))

    def patterns(self, name: str, field: str | None = None) -> list[torch.Tensor]:
        """Every pattern captured at `name` (optionally for one field), in call order."""
        return [e.pattern for e in self.events if e.name == name and (field is None or e.field == field)]

    def __getitem__(self, key: str | tuple[str, str]) -> torch.Tensor:
        """`cache[name]` or `cache[name, field]`: the pattern, when exactly one forward was captured there."""
        name, field = key if isinstance(key, tuple) else (key, None)
        found = self.patterns(name, field)
        if len(found) != 1:
            where = f"{name!r}" + (f" for field {field!r}" if field else "")
            raise KeyError(
                f"{len(found)} patterns captured at {where}; use cache.patterns(name, field) for all of them"
            )
        return found[0]


@dataclass
class _Target:
    root: nn.Module  # what the user passed; `current_field` is read from it
    hf_model: Any  # the transformers model whose attention implementation is switched
    model_type: str
    attention: list[nn.Module]  # one attention module per layer


def resolve(model: nn.Module) -> _Target:
    """Find the transformers model and its attention modules in a CTRModel, a Backbone or a plain HF model."""
    inner = getattr(model, "backbone", None)
    if isinstance(inner, Backbone):
        hf = inner.model
    elif isinstance(model, Backbone):
        hf = model.model
    else:
        hf = model
    config = getattr(hf, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"sinkviz cannot capture attention of model_type {model_type!r}; supported: {', '.join(ARCHITECTURES)}"
        )
    spec = ARCHITECTURES[model_type]
    base = getattr(hf, "base_model", hf)  # task heads (…ForSequenceClassification) wrap the base model
    layers = operator.attrgetter(spec.layers)(base)
    attention = [operator.attrgetter(spec.attention)(layer) for layer in layers]
    return _Target(model, hf, model_type, attention)


def _name_predicate(names_filter: NamesFilter, valid: list[str]) -> Callable[[str], bool]:
    if names_filter is None:
        return lambda name: True
    if callable(names_filter):
        return names_filter
    wanted = {names_filter} if isinstance(names_filter, str) else set(names_filter)
    unknown = sorted(wanted - set(valid))
    if unknown:  # a typo would otherwise capture nothing, silently
        raise ValueError(f"unknown hook name(s) {unknown}; this model has {valid[0]} .. {valid[-1]}")
    return wanted.__contains__


def _heads_for(heads: HeadsFilter, layer: int, n_heads: int) -> tuple[int, ...] | None:
    """Head indices to keep at `layer` (None = all)."""
    if heads is None:
        return None
    chosen = heads.get(layer) if isinstance(heads, Mapping) else heads
    if chosen is None:
        return None
    chosen = tuple(int(h) for h in chosen)
    bad = [h for h in chosen if not 0 <= h < n_heads]
    if bad:
        raise ValueError(f"head index {bad} out of range at layer {layer} ({n_heads} heads)")
    return chosen


@contextlib.contextmanager
def capture(
    model: nn.Module,
    names_filter: NamesFilter = None,
    heads: HeadsFilter = None,
    callback: Callable[[AttentionEvent], None] | None = None,
) -> Iterator[AttentionCache]:
    """Capture attention probabilities of every forward run inside the block.

    `names_filter`: None (all), a hook name, a collection of names, or a predicate on names. `heads`: head
    indices kept for every layer, or a {layer: heads} mapping. Each pattern goes to `callback` when given (then
    the yielded cache stays empty, so long loops keep nothing), else into the yielded `AttentionCache`.
    Call `model.eval()` first: in training mode the weights include attention dropout.
    """
    target = resolve(model)
    names = hook_names(len(target.attention))
    keep = _name_predicate(names_filter, names)
    cache = AttentionCache()
    deliver = callback if callback is not None else cache.events.append
    previous = target.hf_model.config._attn_implementation
    handles = []

    def make_hook(layer: int) -> Callable[..., None]:
        name = hook_name(layer)

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                impl = target.hf_model.config._attn_implementation
                raise RuntimeError(f"{name}: attention implementation {impl!r} returned no attention weights")
            pattern = weights.detach()
            chosen = _heads_for(heads, layer, pattern.shape[1])
            if chosen is not None:
                pattern = pattern[:, list(chosen)]
            else:
                chosen = tuple(range(pattern.shape[1]))
            deliver(AttentionEvent(name, layer, getattr(target.root, "current_field", None), pattern, chosen))

        return hook

    try:
        if previous is None or previous in _FAST_IMPLEMENTATIONS:
            target.hf_model.set_attn_implementation("eager")
        # a registered custom function (e.g. one adding a bias) is kept: switching would change the model
        for i, module in enumerate(target.attention):
            if keep(names[i]):
                handles.append(module.register_forward_hook(make_hook(i)))
        yield cache
    finally:
        for h in handles:
            h.remove()
        if target.hf_model.config._attn_implementation != previous and previous is not None:
            target.hf_model.set_attn_implementation(previous)


# ------------------------------------------------------------------------------------------------ ID rows


@contextlib.contextmanager
def capture_points(
    model: nn.Module,
    names_filter: NamesFilter = None,
    callback: Callable[[str, torch.Tensor], None] | None = None,
) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Capture the tensors passing the named `HookPoint`s of an ID row (`model.hook_points()`) in the block.

    Each forward through a hook point calls `callback(name, tensor)` (tensor detached); without a callback the
    yielded {name: [tensor per call]} collects them. `names_filter` as in `capture`. The ID rows compute their
    weights explicitly, so unlike `capture` nothing about the model has to be switched.
    """
    points = getattr(model, "hook_points", None)
    if not callable(points):
        raise ValueError(f"{type(model).__name__} has no hook_points(); capture_points needs an ID row")
    named = points()
    keep = _name_predicate(names_filter, sorted(named) or ["(none)"])
    cache: dict[str, list[torch.Tensor]] = {}

    def collect(name: str, tensor: torch.Tensor) -> None:
        cache.setdefault(name, []).append(tensor)

    deliver = callback if callback is not None else collect
    handles = []

    def make_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            deliver(name, output.detach())

        return hook

    try:
        for name, module in named.items():
            if keep(name):
                handles.append(module.register_forward_hook(make_hook(name)))
        yield cache
    finally:
        for h in handles:
            h.remove()
