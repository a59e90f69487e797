"""The dashboard in a real browser, on the main job's own output: `scripts/main.sh` runs with QUICK=1 (the same
steps on a few dozen samples) and NO_DASHBOARD=1, then `streamlit run` serves that folder on a free 127.0.0.1 port
and every page opens in headless Chromium (Playwright driving the Debian package's browser): charts drawn from the
demo's runs and analyses, no empty state, no Streamlit exception, a screenshot per page (in docs/screenshots/ with
CTRSINK_SCREENSHOT_DIR=docs/screenshots). Skipped with the reason when /usr/bin/chromium or playwright is missing.

CTRSINK_DEMO_ROOT=runs/demo reuses the output of a full `bash scripts/main.sh` instead (for the screenshots)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
# screenshots land in a temp folder; CTRSINK_SCREENSHOT_DIR=docs/screenshots refreshes the committed ones
SHOTS = Path(os.environ.get("CTRSINK_SCREENSHOT_DIR") or tempfile.mkdtemp(prefix="ctrsink-shots-"))
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# url path of each page (Streamlit names file pages after the file) -> charts it must draw at least
PAGES = {
    "runs": 1,
    "attention": 2,
    "inter_sink": 2,
    "ablations": 2,
    "explorer": 4,
    "id_rows": 2,
    "interventions": 2,
}
# what a page shows when it found nothing to draw (ui.empty and the pages' own notes)
EMPTY_STATES = (
    "No runs found",
    "No attention analysis found",
    "No ablation",
    "No ID-row",
    "No intervention table yet",
    "No deletion curves yet",
    "No head roles yet",
)
# text each page must show: it draws from the demo's own folders
DEMO_TEXT = {
    "attention": "ctrsink/analysis",
    "inter_sink": "ctrsink/analysis",
    "explorer": "ctrsink",
    "ablations": "ablation",
    "id_rows": "sparsectr_lite",
    "interventions": "ctrsink",
    "runs": "ctrsink",
}

if not CHROMIUM.is_file():
    pytest.skip(
        f"{CHROMIUM} not found: install the Debian browser with `apt-get install -y chromium chromium-driver`",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The main job's output: CTRSINK_DEMO_ROOT, or `scripts/main.sh` run now at its QUICK size."""
    given = os.environ.get("CTRSINK_DEMO_ROOT")
    if given:
        return Path(given).resolve()
    out = tmp_path_factory.mktemp("main_job") / "demo"
    env = dict(os.environ, OUT=str(out), QUICK="1", NO_DASHBOARD="1", OMP_NUM_THREADS="2")
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "main.sh")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, demo_root: Path):
    root = demo_root
    port = free_port()
    log = open(tmp_path_factory.mktemp("streamlit") / "server.log", "w+b")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "streamlit", "run", str(REPO / "app" / "app.py")]
    cmd += ["--server.headless", "true", "--server.address", "127.0.0.1", "--server.port", str(port)]
    cmd += [
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--",
        "--root",
        str(root),
    ]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                log.seek(0)
                pytest.fail(f"streamlit did not start:\n{log.read().decode(errors='replace')[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


def wait_until_idle(page, timeout: float = 60.0) -> None:
    """Until Streamlit's script has finished running (its status widget is gone) and charts are drawn."""
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=timeout * 1000)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if page.locator('[data-testid="stStatusWidget"]').count() == 0:
            time.sleep(1.0)  # let late charts lay out before counting and the screenshot
            if page.locator('[data-testid="stStatusWidget"]').count() == 0:
                return
        time.sleep(0.3)
    raise AssertionError("the app kept running")


@pytest.mark.parametrize("name", list(PAGES))
def test_page_renders_in_chromium(server: str, browser, name: str) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(f"{server}/{'' if name == 'runs' else name}", wait_until="domcontentloaded")
        wait_until_idle(page)
        body = page.inner_text("body")
        assert page.locator('[data-testid="stException"]').count() == 0, body[:2000]
        assert not [m for m in EMPTY_STATES if m in body], body[:2000]
        assert DEMO_TEXT[name] in body, body[:2000]
        drawn = page.locator(".js-plotly-plot .main-svg").count()
        assert drawn >= PAGES[name], f"{name}: {drawn} plotly surfaces"
        if name == "explorer":  # the offline bertviz view draws inside its iframe with no network
            frame = page.frame_locator("iframe").first
            frame.locator("svg").first.wait_for(timeout=30_000)
        # Streamlit scrolls inside its main block, so grow the window to the content for a whole-page picture
        height = page.evaluate("document.querySelector('[data-testid=\"stMain\"]')?.scrollHeight || 1000")
        page.set_viewport_size({"width": 1400, "height": int(min(max(height, 1000), 7000))})
        wait_until_idle(page)
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
        assert (SHOTS / f"{name}.png").stat().st_size > 10_000
    finally:
        page.close()
