"""The chat page in a real browser: Playwright (sync API) driving Debian's chromium (/usr/bin/chromium;
Playwright's own browser download is not used). It opens `/`, attaches an image, asks with Enter, sees
the answer stream in, continues the conversation, and stops a generation.

The server runs the scripted engine of tests/serve_helpers.py (the page is under test, not the model).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from PIL import Image

from owl3.serving.app import create_app
from owl3.serving.chat import ServeConfig
from tests.serve_helpers import FakeEngine, ServerThread

CHROMIUM = os.environ.get("OWL3_CHROMIUM", "/usr/bin/chromium")
SCREENSHOT = Path(os.environ.get("OWL3_PAGE_SCREENSHOT", "/tmp/owl3-chat-page.png"))

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def served(demo_pipe):
    engine = FakeEngine(demo_pipe.tokenizer, demo_pipe.processor.stop_token_ids)
    engine.step_delay = 0.01  # a visible stream: one token every 10 ms
    app = create_app(demo_pipe, engine, ServeConfig(model_name="owl3-page-test"))
    with ServerThread(app) as server:
        server.engine = engine
        yield server


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    with sync_api.sync_playwright() as p:  # one per process: the sync API runs its own event loop
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def _open(browser, url):
    page = browser.new_page(viewport={"width": 900, "height": 700})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")
    page.errors = errors
    return page


@pytest.fixture(scope="module")
def page(served, browser):
    page = _open(browser, served.url)
    yield page
    page.close()


def test_attach_an_image_ask_and_watch_the_answer_stream_in(page, tmp_path):
    sync_api.expect(page.locator("#model")).to_contain_text("owl3-page-test")
    image = tmp_path / "red.png"
    Image.new("RGB", (64, 48), (210, 40, 40)).save(image)
    page.set_input_files("#file", str(image))
    sync_api.expect(page.locator("#attachments img")).to_have_count(1)

    page.fill("#prompt", "What colour is it?")
    page.press("#prompt", "Enter")
    answer = page.locator(".msg.assistant .text").last
    # streaming: the answer is seen part-way (the stop button is up), then whole
    sync_api.expect(page.locator("#send")).to_have_text("Stop")
    sync_api.expect(answer).to_have_text(re.compile(r"^You said: What colour is it\? \(\d+ views\)$"))
    sync_api.expect(page.locator("#send")).to_have_text("Send")
    assert page.locator(".msg.user .media img").count() == 1
    assert page.locator("#attachments img").count() == 0  # sent with the message
    page.screenshot(path=str(SCREENSHOT))
    assert not page.errors


def test_shift_enter_is_a_new_line_and_the_conversation_goes_on(page):
    page.fill("#prompt", "first line")
    page.press("#prompt", "Shift+Enter")
    page.keyboard.type("second <b>line</b>")
    assert page.input_value("#prompt") == "first line\nsecond <b>line</b>"
    page.press("#prompt", "Enter")
    answer = page.locator(".msg.assistant .text").nth(1)
    # the model's text is text: the tags the model repeats are shown, not parsed; the first turn's image
    # is sent again with the conversation
    expected = re.compile(r"^You said: first line\nsecond <b>line</b> \(\d+ views\)$")
    sync_api.expect(answer).to_have_text(expected)
    assert page.locator(".msg.assistant b").count() == 0
    assert page.locator(".msg.user").count() == 2


def test_stop_ends_a_generation(page, served):
    page.fill("#prompt", "tell a LONG story")
    page.press("#prompt", "Enter")
    answer = page.locator(".msg.assistant .text").last
    sync_api.expect(answer).to_contain_text("la la la")
    page.click("#send")  # the Stop button
    sync_api.expect(page.locator("#send")).to_have_text("Send")
    sync_api.expect(page.locator(".msg.assistant .meta").last).to_contain_text("stopped")
    deadline = time.monotonic() + 10
    while not served.engine.aborted and time.monotonic() < deadline:
        time.sleep(0.02)
    assert served.engine.aborted, "the server did not abort the stopped request"
    page.screenshot(path=str(SCREENSHOT.with_name(SCREENSHOT.stem + "-stopped.png")))
    assert not page.errors


@pytest.fixture(scope="module")
def kb_page(demo_pipe, tmp_path_factory, browser):
    """The page against a server started with a knowledge base (the scripted engine answers; retrieval and
    the citations' shares are the real ones, on the demo model)."""
    pytest.importorskip("lancedb")
    from owl3 import cli
    from owl3.kb import open_kb
    from tests.test_kb import _write_items

    tmp = tmp_path_factory.mktemp("kbpage")
    assert cli.main(["kb", "build", str(_write_items(tmp / "items")), "-o", str(tmp / "shapes")]) == 0
    engine = FakeEngine(demo_pipe.tokenizer, demo_pipe.processor.stop_token_ids)
    app = create_app(demo_pipe, engine, ServeConfig(model_name="owl3-kb-page", kb=open_kb(tmp / "shapes")))
    with ServerThread(app) as server:
        page = _open(browser, server.url)
        yield page
        page.close()


def test_a_server_with_a_knowledge_base_answers_with_sources(kb_page, tmp_path):
    from tests.test_kb import _query

    page = kb_page
    sync_api.expect(page.locator("#model")).to_contain_text("knowledge base shapes (9 items)")
    page.evaluate("document.getElementById('settings').open = true")
    sync_api.expect(page.locator("#use-kb")).to_be_checked()
    page.fill("#top-k", "2")
    query = tmp_path / "star.png"
    _query("star", "yellow", 2).save(query)
    page.set_input_files("#file", str(query))
    page.fill("#prompt", "What colour is the star?")
    page.press("#prompt", "Enter")
    sources = page.locator(".msg.assistant .sources li")
    sync_api.expect(sources).to_have_count(2)
    first = sources.first.inner_text()
    assert first.startswith("star · score ") and "share " in first and "a big yellow star" in first
    # unticked: a plain answer, no sources
    page.uncheck("#use-kb")
    page.fill("#prompt", "And now?")
    page.press("#prompt", "Enter")
    sync_api.expect(page.locator(".msg.assistant .meta")).to_have_count(2)
    assert page.locator(".msg.assistant").nth(1).locator(".sources li").count() == 0
    page.screenshot(path=str(SCREENSHOT.with_name(SCREENSHOT.stem + "-sources.png")))
    assert not page.errors


def test_image_shares_when_asked(kb_page, tmp_path):
    from tests.test_kb import _query

    page = kb_page
    page.click("#new-chat")
    page.evaluate("document.getElementById('settings').open = true")
    page.uncheck("#use-kb")
    page.select_option("#attribution", "gradient")
    paths = []
    for i, (shape, colour) in enumerate((("star", "yellow"), ("circle", "red"))):
        paths.append(str(tmp_path / f"{shape}.png"))
        _query(shape, colour, i).save(paths[-1])
    page.set_input_files("#file", paths)
    page.fill("#prompt", "Which one is red?")
    page.press("#prompt", "Enter")
    rows = page.locator(".msg.assistant .shares li")
    sync_api.expect(rows).to_have_count(2)
    assert rows.nth(0).inner_text().startswith("image 1 ") and "%" in rows.nth(1).inner_text()
    sync_api.expect(page.locator(".msg.assistant summary").last).to_have_text("gradient shares")
    page.screenshot(path=str(SCREENSHOT.with_name(SCREENSHOT.stem + "-shares.png")))
    page.select_option("#attribution", "")
    assert not page.errors


def test_a_server_without_a_knowledge_base_shows_no_such_setting(page):
    assert page.locator("#kb-row").is_hidden() and page.locator("#top-k-row").is_hidden()
