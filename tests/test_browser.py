"""End to end in a real browser: ``streamlit run app.py`` on a free local port, driven by Playwright with Debian's
chromium. Opens every page, moves sliders, registers pairs (and refuses a bad upload), follows a click from the
Embedding page to the Register page, plays a tracked cycle on the Motion page (another server, with a cohort of
cines), checks that no exception or unexpected error appears, and saves a screenshot of every page under
``test-artifacts/``."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import app_environment, motion_environment

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
BUSY = '[data-testid="stSpinner"], [data-testid="stSkeleton"], [data-testid="stStatusWidget"]'
EXCEPTION = '[data-testid="stException"]'
ERROR = '[data-testid="stAlertContentError"]'

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing: `make browser` (as root) "
                       "installs Debian's chromium; the browser tests need it"),
]
playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(folder: Path, app_env: dict[str, str]) -> Iterator[str]:
    """The app served on 127.0.0.1:<free port> with the environment ``app_env``; its log in ``folder``."""
    env = {**os.environ, **app_env, "PYTHONUNBUFFERED": "1"}
    port = free_port()
    log = open(folder / "streamlit.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.address", "127.0.0.1",
         "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"streamlit did not start: {(folder / 'streamlit.log').read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_cohort):
    """The app with the test cohort and a random paper-sized checkpoint."""
    folder = tmp_path_factory.mktemp("browser-env")
    with serve(folder, app_environment(folder, tiny_cohort)) as url:
        yield url


@pytest.fixture(scope="module")
def motion_server(tmp_path_factory):
    """The app with a cohort of three small cines, a small model and a motion model (``motion_environment``)."""
    folder = tmp_path_factory.mktemp("browser-motion")
    with serve(folder, motion_environment(folder)) as url:
        yield url


@pytest.fixture(scope="module")
def page():
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        tab = browser.new_page(viewport={"width": 1400, "height": 1800})
        tab.set_default_timeout(120_000)
        yield tab
        browser.close()


def settle(tab, quiet: float = 1.5, timeout: float = 240) -> None:
    """Wait until the script has finished: no spinner or skeleton for ``quiet`` seconds."""
    end, calm = time.time() + timeout, None
    while time.time() < end:
        if tab.locator(BUSY).count() == 0:
            calm = calm or time.time()
            if time.time() - calm >= quiet:
                return
        else:
            calm = None
        tab.wait_for_timeout(200)
    raise TimeoutError("the page kept running")


def assert_no_errors(tab, allowed: int = 0) -> None:
    assert tab.locator(EXCEPTION).count() == 0, tab.locator(EXCEPTION).all_inner_texts()
    errors = tab.locator(ERROR).all_inner_texts()
    assert len(errors) == allowed, errors


def shot(tab, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def open_page(tab, server: str, path: str, title: str) -> None:
    tab.goto(f"{server}/{path}")
    tab.get_by_role("heading", name=title, exact=False).first.wait_for()
    settle(tab)
    if path != "benchmark":  # every other page ends with figures
        tab.wait_for_selector(".js-plotly-plot", timeout=120_000)
        settle(tab)


def slider(tab, label: str):
    """The range input of the slider labelled ``label`` (its accessible name repeats the label)."""
    return tab.locator(f'input[type="range"][aria-label="{label}"]')


def slider_value(tab, label: str) -> str:
    return slider(tab, label).input_value()


def move_slider(tab, label: str, presses: int) -> None:
    slider(tab, label).focus()
    for _ in range(presses):
        tab.keyboard.press("ArrowRight")
    settle(tab)


def test_every_page_in_a_real_browser(server, page):
    tab = page
    # a page opened by its URL right after the server started still goes through app.py (sidebar, layout)
    open_page(tab, server, "register", "Register")
    assert tab.get_by_text("Checkpoint").first.is_visible()
    assert_no_errors(tab)
    before = slider_value(tab, "Axial (short axis) slice")
    move_slider(tab, "Axial (short axis) slice", 5)
    assert int(slider_value(tab, "Axial (short axis) slice")) == int(before) + 5
    assert_no_errors(tab)
    shot(tab, "register")
    tab.get_by_role("tab", name="Coronal").click()
    settle(tab)
    move_slider(tab, "Coronal slice", 3)
    assert int(slider_value(tab, "Coronal slice")) == 64 + 3
    assert_no_errors(tab)
    shot(tab, "register-coronal")

    # register another pair of the cohort
    subject = tab.get_by_role("combobox", name="Subject")
    subject.click()
    tab.get_by_role("option").nth(2).click()
    settle(tab)
    assert "patient" in subject.input_value()
    assert_no_errors(tab)
    assert tab.get_by_text("mean Dice").first.is_visible()

    # a bad upload gives one message, not a traceback
    tab.get_by_text("upload NIfTI files").click()
    settle(tab)
    inputs = tab.locator('[data-testid="stFileUploaderDropzoneInput"]')
    inputs.nth(0).set_input_files({"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image"})
    inputs.nth(1).set_input_files({"name": "notes2.txt", "mimeType": "text/plain", "buffer": b"not an image"})
    tab.get_by_role("button", name="Register the uploaded pair").click()
    settle(tab)
    assert_no_errors(tab, allowed=1)
    assert "is not a NIfTI file" in tab.locator(ERROR).first.inner_text()
    shot(tab, "register-bad-upload")

    open_page(tab, server, "", "cvae-reg")
    assert_no_errors(tab)
    assert tab.locator('[data-testid="stPageLink"]').count() == 6
    shot(tab, "home")

    open_page(tab, server, "latent_walk", "Latent walk")
    assert_no_errors(tab)
    decoded = tab.get_by_text("LV volume, deformed").first
    assert decoded.is_visible()
    before = slider_value(tab, "z1")
    move_slider(tab, "z1", 20)
    assert float(slider_value(tab, "z1")) == pytest.approx(float(before) + 20 * 0.05, abs=1e-6)
    assert_no_errors(tab)
    shot(tab, "latent_walk")

    open_page(tab, server, "transport", "Transport")
    assert_no_errors(tab)
    assert tab.get_by_text("simulated ES").first.is_visible()
    shot(tab, "transport")

    open_page(tab, server, "benchmark", "Benchmark")
    assert_no_errors(tab)
    shot(tab, "benchmark")

    open_page(tab, server, "embedding", "Embedding")
    assert_no_errors(tab)
    shot(tab, "embedding")
    # clicking a point of the scatter opens that subject on the Register page
    tab.locator(".js-plotly-plot .scatterlayer .point").first.click(force=True)
    tab.get_by_role("heading", name="Register").first.wait_for()
    settle(tab)
    assert_no_errors(tab)
    assert tab.url.rstrip("/").endswith("/register")


def test_motion_page_plays_the_cycle_in_a_real_browser(motion_server, page):
    tab = page
    open_page(tab, motion_server, "motion", "Motion")
    assert_no_errors(tab)
    assert tab.locator('[data-testid="stImage"] img').first.is_visible()  # the cine as acquired, a playing GIF
    animation = tab.locator(".js-plotly-plot").filter(has=tab.locator(".updatemenu-button"))
    assert animation.count() == 1
    current = animation.locator(".slider-group > text.slider-label")  # the current frame, above the slider
    assert current.text_content().strip() == "frame 1 ED"
    animation.locator(".updatemenu-button").filter(has_text="play").click()
    tab.wait_for_function("el => !el.textContent.includes('frame 1 ED')", arg=current.element_handle(),
                          timeout=10_000)  # the animation runs
    animation.locator(".updatemenu-button").filter(has_text="pause").click()
    assert tab.get_by_text("LVEF", exact=True).first.is_visible()
    assert tab.get_by_text("Simulate from the ED frame").first.is_visible()  # the motion model is there
    assert_no_errors(tab)
    shot(tab, "motion")
