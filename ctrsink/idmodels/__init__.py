"""ID-based comparison rows trained on the same samples as CTR-Sink: DIN, SparseCTR-lite, SRP4CTR-lite.

"-lite": compact re-implementations from the papers' published descriptions (../shared/reference/related-models.md),
not the papers' code, and their numbers are never the papers' results.
"""
