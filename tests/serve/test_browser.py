"""The chat page at `/` in a real browser: Debian's chromium, driven by selenium.

The page talks to the live test server (`served_in_thread`,
tests/serve/conftest.py: the tiny model behind a blocklist filter and an API
key, its steps paced as a bigger model's). The tests watch what a
person would see: the answer growing while it streams (a MutationObserver
records the answer's length at each DOM update), the filter's refusal as a
notice, what the page sends (fetch is wrapped to record request bodies), the
stop button, the Korean IME guard and a narrow window. The screenshot for the
README is taken here: docs/images/serve-chat.png.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
SCREENSHOT = IMAGES / "serve-chat.png"  # 1280 x 900
PHONE_SCREENSHOT = IMAGES / "serve-chat-phone.png"  # 390 x 844
MAX_TOKENS = 24
WAIT_S = 30

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
    reason=f"no {CHROMIUM} or {CHROMEDRIVER}: install Debian's chromium and chromium-driver "
    "(`make browser` does, as root)",
)

# Records each POST body the page sends (window.__sent) and, per DOM update
# batch, the length of the newest answer started after this ran (window.__lengths).
WATCH_JS = """
if (!window.__sent) {
  window.__sent = [];
  const realFetch = window.fetch;
  window.fetch = (url, options) => {
    if (options && options.body) window.__sent.push(JSON.parse(options.body));
    return realFetch(url, options);
  };
}
if (window.__observer) window.__observer.disconnect();
window.__lengths = [];
const answersBefore = document.querySelectorAll("#log .assistant").length;
window.__observer = new MutationObserver(() => {
  const answers = document.querySelectorAll("#log .assistant .text");
  if (answers.length > answersBefore) window.__lengths.push(answers[answers.length - 1].textContent.length);
});
window.__observer.observe(document.getElementById("log"), {childList: true, subtree: true, characterData: true});
"""

# The next chat request gets this SSE answer instead of the server's: `chunks` (chat
# chunks), then [DONE] unless `hang` (then it ends only when the page aborts it).
FAKE_ANSWER_JS = """
const [chunks, hang] = arguments;
const wrapped = window.fetch;
window.fetch = (url, options) => {
  if (!String(url).includes("chat/completions")) return wrapped(url, options);
  window.fetch = wrapped;
  window.__sent.push(JSON.parse(options.body));
  const encode = (text) => new TextEncoder().encode(text);
  const body = new ReadableStream({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(encode(`data: ${JSON.stringify(chunk)}\\n\\n`));
      if (!hang) { controller.enqueue(encode("data: [DONE]\\n\\n")); controller.close(); }
      options.signal.addEventListener("abort", () => controller.error(new DOMException("stopped", "AbortError")));
    },
  });
  return Promise.resolve(new Response(body, {status: 200, headers: {"Content-Type": "text/event-stream"}}));
};
"""

ENTER_JS = """
const [input, composing, keyCode] = arguments;
input.dispatchEvent(new KeyboardEvent("keydown", {
  key: "Enter", code: "Enter", keyCode, isComposing: composing, bubbles: true, cancelable: true,
}));
"""


@pytest.fixture(scope="module")
def served(served_in_thread):
    """The test server, its engine's steps paced at 20 ms, a 7B model's pace on a GPU: the
    tiny model's sub-millisecond steps outrun the page, whose answer would arrive whole
    (a stream that falls behind gets what piled up as one event), never seen growing."""
    decoder = served_in_thread.app.state.server.engine.decoder
    step = decoder.step

    def paced(tokens):
        time.sleep(0.02)
        return step(tokens)

    decoder.step = paced
    yield served_in_thread
    del decoder.step


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        "--window-size=1280,900",
    ):
        options.add_argument(arg)
    # The driver's path given: selenium does not run Selenium Manager (no downloads).
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    yield driver
    driver.quit()


def wait(driver, condition, message: str):
    return WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(condition, message=message)


@pytest.fixture(scope="module")
def page(browser, served):
    """The page with the API key entered, greedy sampling and short answers."""
    browser.get(served.base_url + "/")
    settings = browser.find_element(By.ID, "settings")
    if served.api_key:
        # Without the key the page cannot list the model: it says so and opens Settings.
        status = browser.find_element(By.ID, "status")
        wait(browser, lambda d: "API key" in status.text, "no notice asking for the API key")
        assert settings.get_attribute("open") is not None
        browser.find_element(By.ID, "api-key").send_keys(served.api_key, Keys.TAB)
        # The key is kept in localStorage: a reload still lists the model.
        model = browser.find_element(By.ID, "model")
        wait(browser, lambda d: model.text == served.model_id, "model id not shown")
        browser.refresh()
    model = browser.find_element(By.ID, "model")
    wait(browser, lambda d: model.text == served.model_id, "model id not shown after reload")
    if browser.find_element(By.ID, "settings").get_attribute("open") is None:
        browser.find_element(By.CSS_SELECTOR, "#settings summary").click()
    for field, value in (("temperature", "0"), ("max-tokens", str(MAX_TOKENS))):
        box = browser.find_element(By.ID, field)
        box.clear()
        box.send_keys(value, Keys.TAB)
    browser.find_element(By.CSS_SELECTOR, "#settings summary").click()  # fold it again
    return browser


def new_chat(driver) -> None:
    driver.find_element(By.ID, "new-chat").click()
    driver.execute_script(WATCH_JS)


def type_and_send(driver, text: str) -> None:
    box = driver.find_element(By.ID, "input")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def finished_answers(driver) -> list[str]:
    """The answers' texts once no answer is streaming any more."""
    wait(
        driver,
        lambda d: (
            not d.find_elements(By.CSS_SELECTOR, '#log .assistant[aria-busy="true"]')
            and d.find_element(By.ID, "send").is_enabled()
        ),
        "an answer did not finish",
    )
    return driver.execute_script(
        "return [...document.querySelectorAll('#log .assistant .text')].map(e => e.textContent)"
    )


@contextlib.contextmanager
def phone(driver, width: int = 390, height: int = 844):
    """A phone-sized viewport (a headless window cannot be made that narrow)."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": True},
    )
    try:
        yield
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def chunk(content: str | None = None, finish: str | None = None) -> dict:
    delta = {"role": "assistant", "content": ""} if content is None else {"content": content}
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def js_length(driver, text: str) -> int:
    """The length the page's JavaScript sees (UTF-16 units, as the observer records)."""
    return driver.execute_script("return arguments[0].length", text)


def test_korean_message_streams_token_by_token(page, served):
    new_chat(page)
    type_and_send(page, "안녕하세요, 자기소개를 해 주세요.")
    wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#log .assistant"), "no answer bubble")
    (answer,) = finished_answers(page)
    assert answer.strip(), "the answer is empty"

    lengths = page.execute_script("return window.__lengths")
    partial = sorted({n for n in lengths if 0 < n < js_length(page, answer)})
    assert len(partial) > 1, f"the answer did not grow while streaming: lengths {lengths}"

    (sent,) = page.execute_script("return window.__sent")
    assert sent["messages"] == [{"role": "user", "content": "안녕하세요, 자기소개를 해 주세요."}]
    assert sent["model"] == served.model_id
    assert sent["stream"] is True
    assert (sent["temperature"], sent["max_tokens"]) == (0, MAX_TOKENS)
    user = page.find_element(By.CSS_SELECTOR, "#log .user .text").text
    assert user == "안녕하세요, 자기소개를 해 주세요."


def test_filtered_message_is_refused_politely(page, served):
    new_chat(page)
    type_and_send(page, f"{served.blocked_word} 에 대해 알려줘")
    notice = wait(
        page,
        lambda d: d.find_elements(By.CSS_SELECTOR, "#log .notice"),
        "no notice for the refused message",
    )[0]
    assert "rephrase" in notice.text
    assert "error" not in notice.get_attribute("class").split()  # a notice, not a failure
    assert "blocklist" in notice.text  # the server's reason, without the term
    assert served.blocked_word not in notice.text
    assert page.find_elements(By.CSS_SELECTOR, "#log .assistant") == []
    assert "refused" in page.find_element(By.CSS_SELECTOR, "#log .user").get_attribute("class")
    assert page.find_element(By.ID, "send").is_enabled()


def test_history_and_korean_ime_guard(page, served):
    new_chat(page)
    type_and_send(page, "서울은 어떤 도시인가요?")
    (first,) = finished_answers(page)
    type_and_send(page, f"{served.blocked_word}!")
    wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#log .notice"), "not refused")

    box = page.find_element(By.ID, "input")
    box.send_keys("부산은요")
    sent_before = len(page.execute_script("return window.__sent"))
    # Enter while the IME composes a syllable (isComposing; older browsers: keyCode 229).
    page.execute_script(ENTER_JS, box, True, 13)
    page.execute_script(ENTER_JS, box, False, 229)
    assert box.get_attribute("value") == "부산은요"
    assert len(page.execute_script("return window.__sent")) == sent_before
    # The same event once composition has ended does send.
    page.execute_script(ENTER_JS, box, False, 13)
    answers = finished_answers(page)
    assert len(answers) == 2
    assert box.get_attribute("value") == ""

    last = page.execute_script("return window.__sent")[-1]
    assert last["messages"] == [
        {"role": "user", "content": "서울은 어떤 도시인가요?"},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "부산은요"},
    ]
    page.execute_script("document.activeElement.blur()")  # no blinking caret in the picture
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.write_bytes(page.get_screenshot_as_png())
    with phone(page):
        PHONE_SCREENSHOT.write_bytes(page.get_screenshot_as_png())


def test_stop_button_ends_the_stream(page):
    new_chat(page)
    # Press Stop from the observer at the first piece of the answer, so the
    # stream is certainly still running when it is pressed.
    page.execute_script("""
      const observer = new MutationObserver(() => {
        const text = document.querySelector("#log .assistant .text");
        if (text && text.textContent) {
          observer.disconnect();
          window.__atStop = text.textContent.length;
          document.getElementById("stop").click();
        }
      });
      observer.observe(document.getElementById("log"), {childList: true, subtree: true});
    """)
    assert not page.find_element(By.ID, "stop").is_enabled()
    type_and_send(page, "긴 이야기를 들려주세요")
    (answer,) = finished_answers(page)
    item = page.find_element(By.CSS_SELECTOR, "#log .assistant")
    assert item.get_attribute("data-state") == "stopped"
    assert "(stopped)" in item.text
    assert js_length(page, answer) == page.execute_script("return window.__atStop")
    assert not page.find_element(By.ID, "stop").is_enabled()

    # The server keeps serving and the stopped answer is part of the history.
    type_and_send(page, "계속")
    assert len(finished_answers(page)) == 2
    assert page.execute_script("return window.__sent")[-1]["messages"][1] == {
        "role": "assistant",
        "content": answer,
    }


def test_labels_and_narrow_window(page):
    unlabelled = page.execute_script(
        "return [...document.querySelectorAll('input, textarea')]"
        ".filter(e => !e.labels.length).map(e => e.id)"
    )
    assert unlabelled == []
    assert page.find_element(By.ID, "log").get_attribute("aria-live") == "polite"

    with phone(page, 360, 740):
        width, scroll_width = page.execute_script(
            "const root = document.documentElement; return [root.clientWidth, root.scrollWidth]"
        )
        assert width == 360
        assert scroll_width <= width, f"the page is {scroll_width}px wide in a 360px window"
        for control in ("input", "send", "stop"):
            box = page.find_element(By.ID, control).rect
            assert box["x"] >= 0 and box["x"] + box["width"] <= width, control


def test_korean_page_one_scrollbar_and_the_cut_note_in_view(page):
    assert page.execute_script("return document.documentElement.lang") == "ko"
    icon = page.execute_async_script(
        "const done = arguments[0];"
        "fetch(document.querySelector('link[rel=icon]').href).then(r => done(r.status));"
    )
    assert icon == 200
    assert (
        page.execute_async_script("fetch('favicon.ico').then(r => arguments[0](r.status))") == 200
    )
    new_chat(page)
    lines = "\n".join(
        f"{n}번째 줄입니다. 한국어 문장은 어절 단위로 줄을 바꿉니다." for n in range(12)
    )
    for turn in range(4):
        page.execute_script(FAKE_ANSWER_JS, [chunk(), chunk(lines), chunk(None, "length")], False)
        type_and_send(page, f"질문 {turn}")
        finished_answers(page)
    layout = page.execute_script("""
      const root = document.documentElement, main = document.querySelector("main");
      const note = [...document.querySelectorAll("#log .note")].pop().getBoundingClientRect();
      const view = main.getBoundingClientRect();
      const text = document.querySelector("#log .assistant");
      return {rootScroll: root.scrollHeight - root.clientHeight,
              bodyScroll: document.body.scrollHeight - document.body.clientHeight,
              mainScroll: main.scrollHeight - main.clientHeight,
              noteTop: note.top, noteBottom: note.bottom, viewTop: view.top, viewBottom: view.bottom,
              wordBreak: getComputedStyle(text).wordBreak, lang: text.closest("[lang]").lang};
    """)
    assert layout["mainScroll"] > 0, "the conversation does not overflow: nothing tested"
    assert layout["rootScroll"] <= 0 and layout["bodyScroll"] <= 0, f"two scrollbars: {layout}"
    assert (
        layout["viewTop"] <= layout["noteTop"] and layout["noteBottom"] <= layout["viewBottom"] + 1
    )
    assert layout["wordBreak"] == "keep-all" and layout["lang"] == "ko"
    with phone(page):
        page.find_element(By.CSS_SELECTOR, "#settings summary").click()
        try:
            height = page.execute_script("return document.querySelector('main').clientHeight")
            assert height >= 844 * 0.3, f"open settings leave the conversation {height}px"
        finally:
            page.find_element(By.CSS_SELECTOR, "#settings summary").click()


def test_empty_and_stopped_before_text_answers_leave_no_empty_turn(page):
    new_chat(page)
    page.execute_script(FAKE_ANSWER_JS, [chunk(), chunk(None, "stop")], False)
    type_and_send(page, "빈 대답")
    finished_answers(page)
    empty = page.find_element(By.CSS_SELECTOR, "#log .assistant")
    assert "empty" in empty.get_attribute("class") and "empty answer" in empty.text

    page.execute_script(FAKE_ANSWER_JS, [chunk()], True)  # the answer never begins
    type_and_send(page, "멈출 질문")
    wait(page, lambda d: d.find_element(By.ID, "stop").is_enabled(), "not streaming")
    page.find_element(By.ID, "stop").click()
    finished_answers(page)
    assert "not kept" in page.find_elements(By.CSS_SELECTOR, "#log .user")[-1].text

    type_and_send(page, "다음 질문")
    finished_answers(page)
    messages = page.execute_script("return window.__sent")[-1]["messages"]
    assert messages == [{"role": "user", "content": "다음 질문"}], messages
