"""sinkviz: attention capture and sink analyses for ctrsink runs.

`capture` (named hook points, eager only while capturing) -> `AttentionAnalysis` (streaming reductions) ->
`write_analysis` / `load_analysis` (versioned artifacts); `capture_run` does all three for a run directory.
ID-based comparison rows (DIN, SparseCTR-lite, SRP4CTR-lite): `capture_points` over their named hook points,
`capture_id_run` / `load_id_analysis` (sinkviz.idrows).
"""

from sinkviz.artifacts import SCHEMA_VERSION, Analysis, AnalysisError, load_analysis, write_analysis
from sinkviz.capture import AttentionAnalysis, capture_run
from sinkviz.hooks import ARCHITECTURES, AttentionCache, AttentionEvent, capture, capture_points, hook_names
from sinkviz.idrows import IDAnalysis, IDRowsAnalysis, capture_id_run, load_id_analysis
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
    "IDAnalysis",
    "IDRowsAnalysis",
    "anchor_positions",
    "capture",
    "capture_id_run",
    "capture_points",
    "capture_run",
    "hook_names",
    "load_analysis",
    "load_id_analysis",
    "write_analysis",
]
