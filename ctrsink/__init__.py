"""ctrsink: click-through-rate prediction with language models and attention sinks (CTR-Sink)."""

__version__ = "0.1.0"
