"""The web page in a real browser: headless Chromium (Debian package `chromium`) driven by
Playwright. Opens the page, submits the preloaded example pair, waits for the overlay and
checks it is shown with the score the API returns; moves the threshold slider and checks the
decision badge follows it; uploads a non-image and checks the error is shown.

Skipped only when /usr/bin/chromium (or $METAUAS_CHROMIUM) is absent. Set
METAUAS_SCREENSHOT=path to also save a screenshot of the page (docs/web_screenshot.png).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

CHROMIUM = os.environ.get("METAUAS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]

if not Path(CHROMIUM).is_file():
    pytest.skip(f"Chromium not installed at {CHROMIUM} (apt-get install chromium chromium-driver)",
                allow_module_level=True)

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # Chromium is here, so the test must run: say what is missing
    pytest.fail("the browser test needs the Python package 'playwright' (pip install playwright; "
                "it drives the system Chromium, no browser download)", pytrace=False)

from test_web import LiveServer  # noqa: E402  (same live-server helper as the API tests)

from metauas.inference.segmenter import Segmenter  # noqa: E402
from metauas.models import MetaUAS, ModelConfig, load_model  # noqa: E402
from metauas.web.app import SegmentService, WebConfig, create_app, find_examples_dir  # noqa: E402


@pytest.fixture(scope="module")
def served():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    model_path = os.environ.get("METAUAS_SCREENSHOT_MODEL")
    if model_path:  # a trained model for a README screenshot
        model, name = load_model(model_path), Path(model_path).stem
    else:
        torch.manual_seed(0)
        model, name = MetaUAS(ModelConfig(encoder="efficientnet-lite0", image_size=64)).eval(), "tiny-test"
    service = SegmentService(Segmenter(model), name, backend="torch", config=WebConfig())
    with LiveServer(create_app(service)) as url:
        yield url, service
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        yield context.new_page()
        context.close()
        browser.close()


def test_example_pair_segments_in_the_browser(served, page):
    url, service = served
    assert find_examples_dir() is not None
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.goto(url + "/")
    page.wait_for_selector("#prompt-thumbs img", timeout=30_000)  # example pair preloaded
    page.wait_for_selector("#query-thumbs img", timeout=30_000)
    assert "model" in page.inner_text("#model-info")
    with page.expect_response(lambda r: r.url.endswith("/api/segment")) as reply:
        page.click("#segment-button")
    api = reply.value.json()
    assert reply.value.status == 200
    overlay = page.wait_for_selector("#results .card img.overlay", timeout=60_000)
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=overlay, timeout=30_000)
    assert overlay.is_visible()
    box = overlay.bounding_box()
    assert box is not None and box["width"] > 100 and box["height"] > 100
    assert page.evaluate("img => [img.naturalWidth, img.naturalHeight]", overlay) == [512, 512]
    score_text = page.inner_text("#results .card .score")
    match = re.search(r"score (\d\.\d{3})", score_text)
    assert match, score_text
    score = api["results"][0]["score"]
    assert float(match.group(1)) == pytest.approx(score, abs=5e-4)

    # the slider decides: below the score -> anomalous, above -> normal (no new request)
    calls = service.calls
    slider = page.locator("#threshold")
    for value, expected in ((max(0.0, score - 0.05), "anomalous"), (min(1.0, score + 0.05), "normal")):
        slider.evaluate("(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", value)
        assert page.inner_text("#results .card .badge") == expected
    assert service.calls == calls
    assert not console_errors, console_errors

    shot = os.environ.get("METAUAS_SCREENSHOT")
    if shot:
        slider.evaluate("(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }",
                        api["threshold"] if api["threshold"] is not None else 0.5)
        page.screenshot(path=shot, full_page=True)


def test_zip_download_from_the_page(served, page):
    url, _ = served
    if not page.url.startswith(url):
        page.goto(url + "/")
        page.wait_for_selector("#query-thumbs img", timeout=30_000)
        page.click("#segment-button")
        page.wait_for_selector("#results .card img.overlay", timeout=60_000)
    with page.expect_download(timeout=60_000) as download:
        page.click("#download-button")
    assert download.value.suggested_filename == "metauas_results.zip"
    import zipfile

    with zipfile.ZipFile(download.value.path()) as zf:
        assert {"results.json", "results.csv", "query_map.png", "query_overlay.png"} <= set(zf.namelist())


def test_non_image_upload_shows_the_error(served, page, tmp_path):
    url, _ = served
    page.goto(url + "/")
    page.wait_for_selector("#query-thumbs img", timeout=30_000)
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    page.set_input_files("#query-input", str(bad))
    page.click("#segment-button")
    page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    assert "not a supported image" in page.inner_text("#error")
