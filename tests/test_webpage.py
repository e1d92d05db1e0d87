"""The web page at `/`, driven by headless Chromium through Playwright (Python).

A real uvicorn server on 127.0.0.1 (in a thread of this process) serves a two-field task with an API
key. The test fills one textarea per field, classifies, and checks the probability bar, its
threshold marker, the label and the streamed explanation against the API's own answer; it also
checks Ctrl+Enter, the API-key and empty-input errors, and that the page loads nothing from outside
and raises no console error (a Content-Security-Policy violation would show there).

Chromium comes from Debian's package at /usr/bin/chromium; `scripts/ensure_chromium.sh` installs it
when missing. The test is skipped only when it cannot be installed.
"""

from __future__ import annotations

import httpx
import pytest

from helpers import ThreadServer

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
KEY = "page-test-key"
CLAIM = "Drug X lowers HbA1c in adults with type 2 diabetes."
ABSTRACT = "In 412 adults, HbA1c fell by 1.2% with drug X versus 0.1% with placebo (p < 0.001)."


@pytest.fixture(scope="module")
def server(pair_model):
    from clsgen.inference import Predictor
    from clsgen.server import create_app

    model = pair_model.eval()
    predictor = Predictor(model, max_new_tokens=32, stop_token_ids=[])
    app = create_app(predictor, api_key=KEY, model_name="tiny-pair", threads=1)
    with ThreadServer(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def test_classify_from_the_page(server, browser, tmp_path):
    from playwright.sync_api import expect

    expected = httpx.post(server.base + "/v1/classify", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                          json={"fields": {"claim": CLAIM, "article_abstract": ABSTRACT}}).json()
    assert expected["explanation"], expected

    page = browser.new_page(viewport={"width": 1000, "height": 1000})
    problems, outside = [], []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(server.base) else None)
    page.goto(server.base + "/")

    # one labelled textarea per task field, and the API-key field this server needs
    claim, abstract, key = page.get_by_label("Claim"), page.get_by_label("Abstract"), page.get_by_label("API key")
    assert page.locator("textarea").count() == 2
    assert key.is_visible()
    assert page.locator("#model-name").inner_text() == "tiny-pair"

    page.get_by_role("button", name="Classify").click()
    assert "Paste a text" in page.locator("#error").inner_text()

    claim.fill(CLAIM)
    abstract.fill(ABSTRACT)
    key.fill("wrong-key")
    page.get_by_role("button", name="Classify").click()
    expect(page.locator("#error")).to_contain_text("401", timeout=20_000)

    key.fill(KEY)
    # record what the page showed each time the explanation changed, to see it stream
    page.evaluate("""() => {
        window.__seen = [];
        new MutationObserver(() => window.__seen.push(document.getElementById('probability').textContent))
            .observe(document.getElementById('explanation'), {childList: true, characterData: true, subtree: true});
    }""")
    abstract.press("Control+Enter")  # the keyboard shortcut submits
    expect(page.locator("#verdict")).not_to_be_empty(timeout=30_000)  # filled by the `done` event

    assert page.locator("#error").is_hidden()
    p = expected["probability"]
    assert page.locator("#probability").inner_text() == f"{p:.3f}"
    assert page.locator("#label").inner_text() == expected["label_name"]
    bar_width = page.locator("#bar").evaluate("e => e.style.width")
    assert bar_width.endswith("%") and float(bar_width[:-1]) == pytest.approx(p * 100, abs=0.051)
    assert page.locator("#bar").bounding_box()["width"] > 0
    assert page.locator("#threshold-marker").evaluate("e => e.style.left") == "50%"
    assert page.locator("#threshold-label").inner_text() == "threshold 0.50"
    assert page.locator("#meter").get_attribute("aria-valuenow") == f"{p:.3f}"
    assert page.locator("#explanation").inner_text().strip() == expected["explanation"].strip()
    assert page.get_by_role("button", name="Classify").is_enabled()

    seen = page.evaluate("window.__seen")
    assert len(seen) > 3, seen  # the explanation arrived in pieces ...
    assert seen[0] == f"{p:.3f}"  # ... after the probability was already shown

    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    problems = [m for m in problems if "status of 401" not in m]  # the wrong key, above
    assert not problems, problems
    assert not outside, outside
    page.close()


def test_probability_only_and_focus_styles(server, browser):
    from playwright.sync_api import expect

    page = browser.new_page()
    page.goto(server.base + "/")
    page.get_by_label("API key").fill(KEY)
    page.get_by_label("Claim").fill(CLAIM)
    page.get_by_label("Abstract").fill(ABSTRACT)
    page.get_by_label("Explain").uncheck()
    page.get_by_role("button", name="Classify").click()
    expect(page.locator("#meta")).to_contain_text("model tiny-pair", timeout=30_000)
    assert page.locator("#explanation").inner_text() == "Not requested."
    assert float(page.locator("#probability").inner_text()) == pytest.approx(
        float(page.locator("#meter").get_attribute("aria-valuenow")))
    # keyboard focus is visible on the button
    page.get_by_label("Explain").focus()
    page.keyboard.press("Tab")
    outline = page.evaluate("() => [document.activeElement.id, getComputedStyle(document.activeElement).outlineStyle]")
    assert outline == ["classify", "solid"]
    page.close()
