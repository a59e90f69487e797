"""docs/RESULTS.md §5c: the tables of scripts/results_analyses.sh, as Markdown.

For every `studies` folder under ROOT: the interventions (Δ with paired user-bootstrap intervals), the heads whose
mean-ablation moves AUC most, the head roles per layer, and the deletion curves of each explanation against random
deletion; for every `epochs` folder: the sink mass and sink metric per kept epoch.

python scripts/analyses_table.py runs/results/analyses
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from sinkviz import load_analysis, load_interventions


def md(frame: pd.DataFrame, index: bool = False) -> str:
    """A Markdown table (no tabulate dependency); floats with 4 decimals."""
    frame = frame.reset_index() if index else frame
    cells = [
        [f"{v:.4f}" if isinstance(v, float) else str(v) for v in row] for row in frame.itertuples(index=False)
    ]
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])


def ci(frame: pd.DataFrame, metric: str) -> pd.Series:
    return frame.apply(
        lambda r: f"{r[f'delta_{metric}']:+.4f} [{r[f'lo_{metric}']:+.4f}, {r[f'hi_{metric}']:+.4f}]", axis=1
    )


def interventions(table: pd.DataFrame) -> str:
    whole = table[(table["kind"] != "head_mean") & ~table["note"].str.startswith("no-op")].copy()
    base = table.iloc[0]
    out = pd.DataFrame(
        {
            "intervention": whole["intervention"],
            "Δ AUC": ci(whole, "auc"),
            "Δ gAUC": ci(whole, "gauc"),
            "Δ LogLoss": ci(whole, "logloss"),
            "mean abs Δ score": whole["delta_abs_score"].map(lambda v: f"{v:.4f}"),
        }
    )
    head = (
        f"unchanged model: AUC {base['base_auc']:.4f}, gAUC {base['base_gauc']:.4f}, n = {int(base['n'])}\n\n"
    )
    return head + md(out)


def top_heads(table: pd.DataFrame, roles: pd.DataFrame | None, k: int = 5) -> str:
    heads = table[table["kind"] == "head_mean"].copy()
    if heads.empty:
        return "(no head grid)"
    heads = heads.reindex(heads["delta_auc"].abs().sort_values(ascending=False).index).head(k)
    if roles is not None:
        hist = roles[roles["field"] == "history"].set_index(["layer", "head"])["role"]
        heads["role"] = [
            hist.get((int(a), int(b)), "upper (pooled fields)") for a, b in zip(heads["layer"], heads["head"])
        ]
    heads["Δ AUC"] = ci(heads, "auc")
    heads["mean abs Δ score"] = heads["delta_abs_score"].map(lambda v: f"{v:.4f}")
    cols = ["layer", "head", *(["role"] if roles is not None else []), "Δ AUC", "mean abs Δ score"]
    return md(heads[cols])


def role_counts(roles: pd.DataFrame) -> str:
    hist = roles[roles["field"] == "history"]
    counts = hist.groupby(["layer", "role"]).size().unstack(fill_value=0)
    return md(counts, index=True)


def deletion(curves: pd.DataFrame) -> str:
    c = curves[curves["measure"] == "comprehensiveness"]
    c = c.assign(cell=c.apply(lambda r: f"{r['mean']:.4f} [{r['lo']:.4f}, {r['hi']:.4f}]", axis=1))
    return md(c.pivot(index="k", columns="method", values="cell"), index=True)


def epochs(folder: Path) -> str:
    rows = []
    for sub in sorted(folder.iterdir(), key=lambda p: int(p.name[5:]) if p.name[5:].isdigit() else -1):
        if not (sub / "manifest.json").is_file():
            continue
        a = load_analysis(sub)
        mass = a["role_mass"]
        mass = mass[mass["field"].isin(["pos", "neg", "all"])]
        # mass is a mean per query role: weight by query count for the share over all history queries
        w = mass.assign(w=mass["mass"] * mass["count"])
        by_key = w.groupby(["layer", "key_role"])["w"].sum() / w.groupby("layer")["w"].sum()
        sm = a["sink_metric"]
        sm = sm[sm["key"] == "any_anchor"]  # share of queries with a sink above eps (the paper's Sink_eps)
        for layer in sorted(mass["layer"].unique()):
            rows.append(
                {
                    "checkpoint": sub.name,
                    "layer": int(layer),
                    "mass on sinks": by_key.get((layer, "sink"), 0.0),
                    "mass on separators": by_key.get((layer, "separator"), 0.0),
                    "sink metric (share)": sm[sm["layer"] == layer]["share"].mean()
                    if len(sm)
                    else float("nan"),
                }
            )
    return md(pd.DataFrame(rows))


def main(root: str) -> None:
    for studies in sorted(Path(root).glob("*/studies")):
        s = load_interventions(studies)
        roles = s.get("head_roles")
        print(f"\n### {studies.parent.name}\n")
        if s.get("interventions") is not None:
            print(interventions(s["interventions"]), "\n")
            print("Heads whose mean-ablation moves test AUC most:\n")
            print(top_heads(s["interventions"], roles), "\n")
        if roles is not None:
            print("Head roles (history fields; threshold 0.5):\n")
            print(role_counts(roles), "\n")
        if s.get("deletion_curves") is not None:
            print("Comprehensiveness (score drop after deleting the top-k behaviors), by explanation:\n")
            print(deletion(s["deletion_curves"]), "\n")
    for folder in sorted(Path(root).glob("*/epochs")):
        print(f"\n### {folder.parent.name}: formation over training\n")
        print(epochs(folder))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/results/analyses")
