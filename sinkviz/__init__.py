"""sinkviz: attention capture and sink analyses for ctrsink runs.

`capture` (named hook points, eager only while capturing) -> `AttentionAnalysis` (streaming reductions) ->
`write_analysis` / `load_analysis` (versioned artifacts); `capture_run` does all three for a run directory.
ID-based comparison rows (DIN, SparseCTR-lite, SRP4CTR-lite): `capture_points` over their named hook points,
`capture_id_run` / `load_id_analysis` (sinkviz.idrows).
Inference-time studies written next to an analysis and read with `load_interventions`: `intervene` (components
taken away), `attention_rollout`, `faithfulness_curves` (deletion curves of four explanations), `head_roles`.
"""

from sinkviz.artifacts import SCHEMA_VERSION, Analysis, AnalysisError, load_analysis, write_analysis
from sinkviz.capture import AttentionAnalysis, capture_run
from sinkviz.faithfulness import faithfulness_curves
from sinkviz.heads import head_roles
from sinkviz.hooks import ARCHITECTURES, AttentionCache, AttentionEvent, capture, capture_points, hook_names
from sinkviz.idrows import IDAnalysis, IDRowsAnalysis, capture_id_run, load_id_analysis
from sinkviz.interventions import intervene
from sinkviz.reduce import FieldBatch, anchor_positions
from sinkviz.rollout import attention_rollout
from sinkviz.studies import Interventions, find_interventions, load_interventions

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
    "Interventions",
    "anchor_positions",
    "attention_rollout",
    "capture",
    "capture_id_run",
    "capture_points",
    "capture_run",
    "faithfulness_curves",
    "find_interventions",
    "head_roles",
    "hook_names",
    "intervene",
    "load_analysis",
    "load_id_analysis",
    "load_interventions",
    "write_analysis",
]
