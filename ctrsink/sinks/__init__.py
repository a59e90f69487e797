"""CTR-Sink's own mechanisms: sink tokens, sink signal embeddings, the inter-sink attention bias."""
