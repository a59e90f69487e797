"""docs/RESULTS.md §5b: per layer, where MiniLM's heads put their attention (history fields, mean over heads), and how
many heads put most of their mass (>= 0.5) on separators or on [CLS]/[SEP] ("semantic fragmentation").

python scripts/minilm_attention_table.py runs/results/minilm_attention
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

GROUPS = ["sink", "separator", "first", "prompt", "own_behavior", "previous_behavior", "content"]


def summary(folder: Path) -> pd.DataFrame:
    roles = pd.read_parquet(folder / "studies" / "head_roles.parquet")
    roles = roles[roles["field"] == "history"]
    per_layer = roles.groupby("layer")[GROUPS].mean()
    per_layer["heads_sep_or_first"] = roles.groupby("layer").apply(
        lambda g: int(((g["separator"] + g["first"]) >= 0.5).sum()), include_groups=False
    )
    per_layer["heads_sink"] = roles.groupby("layer").apply(
        lambda g: int((g["sink"] >= 0.5).sum()), include_groups=False
    )
    per_layer["heads"] = roles.groupby("layer").size()
    return per_layer


def main(root: str) -> None:
    for folder in sorted(Path(root).iterdir()):
        if (folder / "studies" / "head_roles.parquet").is_file():
            print(f"\n### {folder.name}\n")
            print(summary(folder).round(3).to_string())


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/results/minilm_attention")
