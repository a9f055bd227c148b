"""The playground page (`GET /`) in a real headless Chromium, against a real server.

Needs Debian's chromium (`apt-get install chromium`; `.ci/run` installs it). Without it these
tests are skipped, with the reason printed.
"""

from __future__ import annotations

import shutil
import time

import pytest

from tests.server import ServerThread, free_port, tiny_checkpoints

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason="no chromium (apt-get install chromium)"
)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"],
        )  # fmt: skip
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(browser, tmp_path_factory):
    from service.api.settings import Settings

    settings = Settings(
        models=tiny_checkpoints(tmp_path_factory.mktemp("models")), port=free_port(),
        max_new_tokens=32, kv_cache_mb=16, block_size=4,
    )  # fmt: skip
    with ServerThread(settings) as server:
        page = browser.new_page()
        page.goto(server.url)
        page.wait_for_function("document.querySelectorAll('#model option').length > 0")
        yield page
        page.close()


def run(page, model: str, text: str, *, stream: bool = False, beam: int = 1) -> None:
    for selector in ("#error", "#output", "#timings", "#alignment"):
        page.eval_on_selector(selector, "e => e.replaceChildren()")
    page.select_option("#model", model)
    page.fill("#text", text)
    page.fill("#beam", str(beam))
    page.set_checked("#stream", stream)
    page.click("#go")
    page.wait_for_function(
        "document.querySelector('#timings').children.length > 0"
        " || document.querySelector('#error').textContent !== ''"
    )
    assert page.inner_text("#error") == ""


def test_translation_shows_text_timings_and_the_alignment_heat_map(page):
    run(page, "tiny-mt", "Open the file", beam=2)
    timings = page.inner_text("#timings")
    assert all(name in timings for name in ("queue", "prefill", "decode", "total"))
    # One heat-map row per generated token, one column per source token (+ the row labels).
    rows = page.locator("table.alignment tbody tr")
    assert rows.count() > 0
    source_columns = page.locator("table.alignment thead th").count() - 1
    assert source_columns >= 3  # "Open the file" and its EOS, at least
    assert page.locator("table.alignment tbody tr:first-child td").count() == source_columns


def test_streamed_translation_equals_the_whole_one(page):
    run(page, "tiny-mt", "Save the document as PDF", beam=1)
    whole = page.inner_text("#output")
    run(page, "tiny-mt", "Save the document as PDF", stream=True)
    assert page.inner_text("#output") == whole
    assert page.locator("table.alignment tbody tr").count() > 0


def test_a_text_of_two_lines_shows_its_translation_on_two_lines(page):
    run(page, "tiny-mt", "Open the file\n\nSave the document as PDF", beam=1)
    first, blank, second = page.inner_text("#output").split("\n")
    assert first and not blank and second
    run(page, "tiny-mt", "Open the file\n\nSave the document as PDF", stream=True)
    assert page.inner_text("#output") == f"{first}\n\n{second}"


def test_generation_model_streams_completions(page):
    run(page, "tiny-lm", "Open the", stream=True)
    assert page.inner_text("#output") != ""


def test_generation_model_whole_completion_shows_the_server_timing(page):
    run(page, "tiny-lm", "Open the")
    assert page.inner_text("#output").startswith("Open the")
    timings = page.inner_text("#timings")
    assert all(name in timings for name in ("queue", "prefill", "decode", "total"))


def test_docs_and_redoc_render_with_no_internet(page):
    """Swagger UI and ReDoc load their scripts from this server: every request to another host
    is blocked, as it would fail in a cluster without internet, and both still render the API."""
    base = page.url.rstrip("/")
    docs = page.context.browser.new_page()
    outside: list[str] = []

    def block(route):
        outside.append(route.request.url)
        route.abort()

    docs.route(lambda url: not url.startswith(base), block)
    try:
        docs.goto(f"{base}/docs")
        docs.wait_for_selector(".opblock", timeout=30_000)  # one per operation
        assert docs.locator(".opblock").count() >= 10
        assert "/v1/translate" in docs.inner_text("body")
        assert outside == [], "Swagger UI should need nothing from outside"
        docs.goto(f"{base}/redoc")  # (its footer's logo comes from its CDN: blocked, harmless)
        docs.wait_for_selector("[data-section-id^='operation/']", timeout=30_000)
    finally:
        docs.close()


def test_the_page_asks_for_the_api_key_and_a_new_run_cancels_the_old_one(browser, tmp_path):
    """With `--api-key` the page loads, asks for the key and sends it. A Run while a stream is
    still going aborts it: the server counts it cancelled, and only the new text is shown."""
    import httpx

    from service.api.settings import Settings

    settings = Settings(
        models=tiny_checkpoints(tmp_path), port=free_port(), max_new_tokens=64,
        kv_cache_mb=16, block_size=4, api_key="s3cret",
    )  # fmt: skip
    with ServerThread(settings) as server:
        engine = server.engine("tiny-mt")
        eos, decode = engine.model_config.eos_token_id, engine.runner.decode

        def slow_and_no_eos(requests):  # 64 steps of >= 20 ms: time to start another run
            time.sleep(0.02)
            logits = [t.clone() for t in decode(requests)]
            for t in logits:
                t[:, eos] = float("-inf")
            return logits

        engine.runner.decode = slow_and_no_eos
        page = browser.new_page()
        page.goto(server.url)
        page.wait_for_selector("#keylabel:not([hidden])")
        assert "API key" in page.inner_text("#error")
        page.fill("#key", "s3cret")
        page.dispatch_event("#key", "change")
        page.wait_for_function("document.querySelectorAll('#model option').length > 0")
        page.select_option("#model", "tiny-mt")
        page.set_checked("#stream", True)
        page.fill("#text", "Open the file")
        page.click("#go")
        page.wait_for_function("document.querySelector('#output').textContent !== ''")
        page.fill("#text", "Save")
        page.click("#go")
        page.wait_for_function("document.querySelector('#timings').children.length > 0")
        shown = page.inner_text("#output")
        page.close()
        key = {"Authorization": "Bearer s3cret"}
        alone = httpx.post(
            f"{server.url}/v1/translate", json={"text": "Save", "beam_size": 1}, headers=key
        ).json()["translations"][0]["text"]
        metrics = httpx.get(f"{server.url}/metrics").text
    assert shown == alone
    assert (
        'attnserve_request_finished_total{finish_reason="cancelled",model="tiny-mt"} 1.0' in metrics
    )


def test_an_error_that_is_not_json_shows_its_status_and_text(page):
    page.route(
        "**/v1/translate",
        lambda route: route.fulfill(status=502, body="<html>Bad Gateway</html>"),
    )
    try:
        page.select_option("#model", "tiny-mt")
        page.set_checked("#stream", False)
        page.fill("#text", "Open")
        page.click("#go")
        page.wait_for_function("document.querySelector('#error').textContent !== ''")
        assert page.inner_text("#error") == "502: <html>Bad Gateway</html>"
    finally:
        page.unroute("**/v1/translate")
