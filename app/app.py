"""CTR-Sink dashboard: `streamlit run app/app.py -- --root runs/demo [--read-only]`.

The root is fixed at start: the pages open only files under it (app/discover.py `confine`), and `--read-only`
turns the ablation launcher off. Pages (app/views/) read artifacts through sinkviz's loaders and `ctrsink.api`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

APP = Path(__file__).resolve().parent
if str(APP) not in sys.path:  # pages import the shared modules next to this file
    sys.path.insert(0, str(APP))

import ui  # noqa: E402

PAGES = [
    ("views/runs.py", "Runs", ":material/table_chart:"),
    ("views/attention.py", "Attention mass", ":material/stacked_line_chart:"),
    ("views/inter_sink.py", "Inter-sink dependencies", ":material/grid_on:"),
    ("views/ablations.py", "Ablations", ":material/science:"),
    ("views/explorer.py", "Sample explorer", ":material/person_search:"),
    ("views/id_rows.py", "Comparison rows (-lite)", ":material/compare_arrows:"),
    ("views/interventions.py", "Interventions and faithfulness", ":material/content_cut:"),
]

st.set_page_config(page_title="CTR-Sink dashboard", page_icon=":material/insights:", layout="wide")
ui.init_root(sys.argv[1:])
nav = st.navigation(
    [st.Page(path, title=title, icon=icon, default=i == 0) for i, (path, title, icon) in enumerate(PAGES)]
)
ui.sidebar()
ui.refusals()
nav.run()
