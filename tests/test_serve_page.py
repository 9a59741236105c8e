"""The page at ``/`` in a real headless Chromium: paste a text, score it, read the shaded segments back.

Needs Debian's ``chromium`` and ``chromium-driver`` (and selenium, in the test extra). Without them the
test is skipped, saying why, unless ``AUTEXT_JAX_REQUIRE_BROWSER=1`` makes a missing browser a failure.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from tests.helpers.serve import (  # noqa: E402
    calibrated_copy,
    get_json,
    post_json,
    running_service,
    serving_app,
)

# Emoji outside the BMP (two UTF-16 units each in JavaScript, one code point in Python's offsets).
PARAGRAPH = (
    "The committee 🏛️ met on Tuesday to review the annual budget 📊. Several members 🙋 asked for more "
    "time to read the report before the vote. The chair agreed 👍 to postpone the decision until the next "
    "meeting. "
    "Meanwhile, the staff 🧑‍💼 will prepare a summary of the main points and circulate it to everyone. "
)


def browser_or_skip():
    """Headless Chromium via chromedriver, or a skip (a failure under AUTEXT_JAX_REQUIRE_BROWSER=1)."""
    required = os.environ.get("AUTEXT_JAX_REQUIRE_BROWSER") == "1"
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (pip)")
    if missing:
        reason = (
            f"no browser for the page test: {', '.join(missing)} missing "
            "(apt-get install chromium chromium-driver; pip install selenium)"
        )
        if required:
            pytest.fail(reason + "; AUTEXT_JAX_REQUIRE_BROWSER=1 requires it")
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1100,900", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


@pytest.fixture(scope="module")
def browser():
    driver = browser_or_skip()
    try:
        yield driver
    finally:
        driver.quit()


def score_in_page(
    driver,
    base: str,
    text: str,
    operating_point: str | None = None,
    timeout: float = 60.0,
    reload: bool = True,
) -> None:
    """Open the page, type ``text``, pick the operating point, press Score, wait until the result is drawn."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    if reload:
        driver.get(base + "/")
        body = driver.find_element(By.TAG_NAME, "body")
        WebDriverWait(driver, timeout).until(lambda d: body.get_attribute("data-ready"))
    box = driver.find_element(By.ID, "text")
    box.clear()
    driver.execute_script("arguments[0].value = arguments[1];", box, text)  # faster than send_keys
    if operating_point is not None:
        Select(driver.find_element(By.ID, "op")).select_by_value(operating_point)
    driver.find_element(By.ID, "score").click()  # the page sets data-state "scoring" at once
    WebDriverWait(driver, timeout).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("scored", "error")
    )


def test_page_scores_a_text_with_emoji_and_shades_its_sentences(browser, tiny_model_dir, tmp_path):
    from selenium.webdriver.common.by import By

    text = PARAGRAPH * 3
    model = calibrated_copy(tiny_model_dir, tmp_path / "model")
    with running_service(model) as (base, _):
        info = get_json(base + "/v1/info")[1]
        point = sorted(info["operating_points"])[0]
        score_in_page(browser, base, text, operating_point=point)
        assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "scored", (
            browser.find_element(By.ID, "error").text
        )
        spans = browser.find_elements(By.CSS_SELECTOR, "#shaded .seg")
        request = {"text": text, "segments": "sentence", "operating_point": point}
        expected = post_json(base + "/v1/score", request)[1]["records"][0]
        threshold = info["operating_points"][point]
    assert len(spans) == len(expected["segments"]) >= 2
    for span, segment in zip(spans, expected["segments"], strict=True):
        assert float(span.get_attribute("data-bot-prob")) == pytest.approx(segment["bot_prob"], abs=1e-6)
        assert span.text.strip() == text[segment["start"] : segment["end"]].strip()
        assert span.value_of_css_property("background-color") not in ("", "rgba(0, 0, 0, 0)")
    # The spans and the text between them give back the whole text.
    assert browser.find_element(By.ID, "shaded").get_attribute("textContent") == text
    shown = browser.find_element(By.ID, "bot-prob").text
    assert shown == f"{100 * expected['bot_prob']:.1f}%"
    verdict = browser.find_element(By.ID, "verdict").text
    assert verdict == ("generated" if expected["is_bot"] else "human")
    decided_by = browser.find_element(By.ID, "decided-by").text
    assert f"operating point {point}" in decided_by and f"{100 * threshold:.1f}%" in decided_by


class StubDetector:
    """Records the page must show: code-point offsets after emoji, a truncated document, a segment scored
    on its start only, and the obfuscation flag (with its count) a detector sets for evasion attempts."""

    threshold = 0.5
    operating_points: dict[str, float] = {}
    min_tokens = 20

    def score_records(self, texts, segments=None, operating_point=None):
        out = []
        for text in texts:
            cuts = [0] + [m.end() for m in re.finditer(r"[.!?]\s+", text)] + [len(text)]
            spans = [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]
            out.append({
                "bot_prob": 0.9, "english_prob": 0.99, "is_bot": True, "n_chunks": 1, "n_tokens": 512,
                "truncated": True, "short": False, "obfuscated": True, "n_changed": 3,
                "segments": [
                    {"start": a, "end": b, "bot_prob": (k + 1) / (len(spans) + 1), "truncated": k == 1}
                    for k, (a, b) in enumerate(spans)
                ],
            })
        return out


@pytest.fixture(scope="module")
def stub_service():
    from autext_jax.serve.app import ServeLimits, create_app

    with serving_app(create_app(StubDetector(), limits=ServeLimits(max_chars=2000))) as base:
        yield base


def test_page_shows_truncation_partial_segments_and_obfuscation(browser, stub_service):
    from selenium.webdriver.common.by import By

    text = PARAGRAPH * 2
    score_in_page(browser, stub_service, text)
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "scored"
    record = StubDetector().score_records([text])[0]
    spans = browser.find_elements(By.CSS_SELECTOR, "#shaded .seg")
    assert len(spans) == len(record["segments"]) == 8
    for span, segment in zip(spans, record["segments"], strict=True):
        assert span.get_attribute("textContent") == text[segment["start"] : segment["end"]]
        assert ("partial" in span.get_attribute("class")) == segment["truncated"]
    assert "only its start" in spans[1].get_attribute("title")
    truncated = browser.find_element(By.ID, "truncated")
    assert truncated.is_displayed() and "first 512 tokens" in truncated.text
    obfuscated = browser.find_element(By.ID, "obfuscated")
    assert obfuscated.is_displayed() and "(3 characters)" in obfuscated.text


def test_page_clears_the_result_after_an_error_or_an_empty_text_and_hides_the_legend_before(
    browser, stub_service
):
    from selenium.webdriver.common.by import By

    browser.get(stub_service + "/")
    legend = browser.find_element(By.ID, "legend")
    assert not legend.is_displayed()  # no score yet
    shown = ("summary", "legend", "truncated", "obfuscated")
    for bad_text, says in [("   ", "Paste a text first"), ("x" * 2001, "limit is 2000")]:
        score_in_page(browser, stub_service, PARAGRAPH, reload=False)
        assert all(browser.find_element(By.ID, name).is_displayed() for name in shown)
        score_in_page(browser, stub_service, bad_text, reload=False)
        assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "error"
        assert says in browser.find_element(By.ID, "error").text
        assert not any(browser.find_element(By.ID, name).is_displayed() for name in shown)
        assert browser.find_elements(By.CSS_SELECTOR, "#shaded .seg") == []


def test_page_asks_for_the_api_key_once_and_keeps_it_for_the_tab(browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from autext_jax.serve.app import ServeOptions, create_app

    app = create_app(StubDetector(), options=ServeOptions(api_keys=("page-key",)))
    with serving_app(app) as base:
        browser.get(base + "/")
        body = browser.find_element(By.TAG_NAME, "body")
        WebDriverWait(browser, 30).until(lambda d: body.get_attribute("data-key") == "needed")
        form = browser.find_element(By.ID, "key-form")
        assert form.is_displayed()
        browser.find_element(By.ID, "api-key").send_keys("page-key")
        browser.find_element(By.ID, "use-key").click()
        WebDriverWait(browser, 30).until(lambda d: body.get_attribute("data-key") == "given")
        assert not form.is_displayed()
        score_in_page(browser, base, PARAGRAPH, reload=False)
        assert body.get_attribute("data-state") == "scored", browser.find_element(By.ID, "error").text
        # A reload in the same tab: not asked again.
        score_in_page(browser, base, PARAGRAPH)
        body = browser.find_element(By.TAG_NAME, "body")
        assert body.get_attribute("data-state") == "scored"
        assert body.get_attribute("data-key") is None
        assert not browser.find_element(By.ID, "key-form").is_displayed()
        assert browser.execute_script("return sessionStorage.getItem('autext_jax_api_key')") == "page-key"
        assert browser.execute_script("return localStorage.length") == 0  # not kept beyond the tab
        browser.execute_script("sessionStorage.clear()")


@pytest.mark.parametrize("required", ["", "1"])
def test_a_missing_browser_skips_or_fails_as_asked(monkeypatch, required):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("AUTEXT_JAX_REQUIRE_BROWSER", required)
    outcome = pytest.fail.Exception if required else pytest.skip.Exception
    with pytest.raises(outcome, match="chromium, chromedriver missing"):
        browser_or_skip()
