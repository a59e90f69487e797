"""Attention analyses of the ID-based comparison rows (DIN, SparseCTR-lite, SRP4CTR-lite).

These rows are our compact "-lite" re-implementations from the papers' descriptions
(../shared/reference/related-models.md §7), so nothing here is a paper's result.

Every analysed sample is scored twice on the same history: with its true candidate and with one other item (a
seeded random draw), in one batch, so the two candidates of a sample always sit `k` rows apart. The hook points
of the row (`IDModel.hook_points()`) are turned into one *candidate-over-history distribution* per row, module and
layer, at capture time (so only (B, L) arrays are kept):

    din.attn.weights                      (B, L) raw weights -> |w| / sum |w|  (DIN weights are not softmaxed and
                                          may be negative; for non-negative weights this is weights / sum)
    target.attn.probs                     (B, L) the same treatment (DIN-style target pooling)
    cross.layer.{l}.attn.probs            (B, H, 1, L) mean over heads
    query.layer.{l}.attn.probs            (B, H, M, L) mean over heads and the M queries (not candidate-specific)
    layer.{l}.branch.{transition,local}.probs   (B, H, T, T) the candidate's row (T - 1), mean over heads
    layer.{l}.branch.global.probs         (B, H, T, P) the candidate's row over chunk summaries; on tokens, each
                                          chunk's mass is spread evenly over its members (the summary is their mean)
    layer.{l}.gates                       (B, H, T, 3) the candidate's gates, mean over heads
    chunks                                (B, L) chunk ids, used by the global branch

Mass on keys that are not real history tokens (the candidate itself in the local branch, padding) is reported as
`outside_mass`; the distribution is renormalised over the real history so that it sums to one.
Tables (schemas in `sinkviz.artifacts.ID_TABLE_COLUMNS`) are per row where the page needs the spread, and summed
over rows where they would grow with the history length (gap and chunk profiles).

Modules: `points` (which hook names are read), `reductions` (numpy reductions of the distributions), `analysis`
(the streaming capture callback), `capture` (a run -> an analysis folder), `folder` (write / load the folder),
`summaries` (what the dashboard shows). Every name stays importable from `sinkviz.idrows`.
"""

from sinkviz.idrows.analysis import IDRowsAnalysis
from sinkviz.idrows.capture import analyse_id_rows, capture_id_run, other_items, run_model_name
from sinkviz.idrows.folder import IDAnalysis, load_id_analysis, read_id_manifest, write_id_analysis
from sinkviz.idrows.points import (
    BRANCHES,
    CANDIDATES,
    MODULE_ORDER,
    RAW_WEIGHT_MODULES,
    parse_point,
    series_label,
)
from sinkviz.idrows.reductions import (
    LAMBDA_COMPONENTS,
    MASS_SHARE,
    TOP_K,
    boundary_tokens,
    bucket_mass,
    entropy,
    gap_hours,
    js_divergence,
    keys_for_mass,
    lambda_table,
    normalise,
    top_category_overlap,
)
from sinkviz.idrows.summaries import (
    branch_shares,
    conditioning_summary,
    distribution_summary,
    gap_profile,
    with_series,
)

__all__ = [
    "BRANCHES",
    "CANDIDATES",
    "LAMBDA_COMPONENTS",
    "MASS_SHARE",
    "MODULE_ORDER",
    "RAW_WEIGHT_MODULES",
    "TOP_K",
    "IDAnalysis",
    "IDRowsAnalysis",
    "analyse_id_rows",
    "boundary_tokens",
    "branch_shares",
    "bucket_mass",
    "capture_id_run",
    "conditioning_summary",
    "distribution_summary",
    "entropy",
    "gap_hours",
    "gap_profile",
    "js_divergence",
    "keys_for_mass",
    "lambda_table",
    "load_id_analysis",
    "normalise",
    "other_items",
    "parse_point",
    "read_id_manifest",
    "run_model_name",
    "series_label",
    "top_category_overlap",
    "with_series",
    "write_id_analysis",
]
