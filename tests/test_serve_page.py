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
def page(served):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 900, "height": 700})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(served.url + "/")
        page.errors = errors
        yield page
        browser.close()


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
