"""A frozen text embedder for behavior selection and the `similarity` signal (spec §8): the bundled MiniLM encoder,
mean-pooled over non-pad tokens and L2-normalised, run once per run over the item titles."""

from __future__ import annotations

import numpy as np
import torch

from ctrsink.backbones import bundled_minilm_path


@torch.no_grad()
def item_vectors(texts: list[str], model_path: str | None = None, batch_size: int = 128) -> np.ndarray:
    from transformers import AutoModel, AutoTokenizer

    path = model_path or str(bundled_minilm_path())
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tok(
            texts[i : i + batch_size], padding=True, truncation=True, max_length=64, return_tensors="pt"
        )
        hidden = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        v = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        out.append(torch.nn.functional.normalize(v, dim=-1).numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 384), dtype=np.float32)
