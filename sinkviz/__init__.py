"""sinkviz: attention capture and sink analyses for ctrsink runs.

`capture` (named hook points, eager only while capturing) -> `AttentionAnalysis` (streaming reductions) ->
`write_analysis` / `load_analysis` (versioned artifacts); `capture_run` does all three for a run directory.
"""

from sinkviz.artifacts import SCHEMA_VERSION, Analysis, AnalysisError, load_analysis, write_analysis
from sinkviz.capture import AttentionAnalysis, capture_run
from sinkviz.hooks import ARCHITECTURES, AttentionCache, AttentionEvent, capture, hook_names
from sinkviz.reduce import FieldBatch, anchor_positions

__all__ = [
    "ARCHITECTURES",
    "SCHEMA_VERSION",
    "Analysis",
    "AnalysisError",
    "AttentionAnalysis",
    "AttentionCache",
    "AttentionEvent",
    "FieldBatch",
    "anchor_positions",
    "capture",
    "capture_run",
    "hook_names",
    "load_analysis",
    "write_analysis",
]
