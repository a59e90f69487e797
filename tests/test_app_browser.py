"""The dashboard in a real browser: `streamlit run` on a free localhost port, every page in headless Chromium
(Playwright driving the Debian package's browser), charts drawn, no Streamlit exception, a screenshot per page
(in docs/screenshots/ with CTRSINK_SCREENSHOT_DIR=docs/screenshots). Skipped with the reason when /usr/bin/chromium or playwright is missing.

The app runs on the small fixture root; set CTRSINK_SCREENSHOT_ROOT to a folder of real runs (e.g. runs/demo after
the main job) for screenshots of trained models."""

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
from app_fixture import session_root

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
PAGES = {"runs": 1, "attention": 2, "inter_sink": 2, "ablations": 2, "explorer": 4}

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
def server(tmp_path_factory: pytest.TempPathFactory):
    custom = os.environ.get("CTRSINK_SCREENSHOT_ROOT")
    root = Path(custom).resolve() if custom else session_root(tmp_path_factory.getbasetemp())
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
        assert page.locator('[data-testid="stException"]').count() == 0, page.inner_text("body")[:2000]
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
