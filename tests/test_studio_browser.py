"""The studio in headless Chromium, as a new user walks through it: open the page, move the rank slider and see
the count change, make an impossible combination and read the message next to the controls, pick a preset, use
the sample data, train with live curves and stop, read the mistakes and the per-class table, inspect ΔW, classify
an image, download the adapter and the one-page report (opened in Chromium too).

Each step saves a screenshot under the test's output folder (printed at the end; keep it with
`pytest --basetemp=DIR`). Needs Debian's Chromium at /usr/bin/chromium (`.ci/run` installs it) and the
`playwright` pip package; never `playwright install`.
"""

from __future__ import annotations

import os
import re
import time
import zipfile
from pathlib import Path

import pytest

from studio_helpers import studio, tiny_model  # noqa: F401 - fixtures

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "assets" / "samples" / "inspection" / "scratch"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium. Without it the test is skipped on a developer machine, but fails in CI (`CI` or
    `SUPERLORA_REQUIRE_BROWSER` set; `.ci/run` sets the latter after installing Chromium)."""
    missing = None
    if not CHROMIUM.exists():
        missing = "Chromium is not installed at /usr/bin/chromium (apt-get install -y chromium chromium-driver)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "the playwright pip package is missing (pip install -r requirements-dev.txt)"
    if missing:
        if os.environ.get("CI") or os.environ.get("SUPERLORA_REQUIRE_BROWSER"):
            pytest.fail(f"{missing}; CI must run the browser test (.ci/run installs Chromium)")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def count_text(page) -> str:
    return page.locator("#count-panel").inner_text()


def adapter_count(page) -> int:
    match = re.search(r"adapter parameters\s+([\d,]+)", count_text(page))
    assert match, count_text(page)
    return int(match.group(1).replace(",", ""))


def wait_until(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def set_slider(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def check_validation_results(page, app) -> None:
    """The Train tab after a run: the missed-defect / false-alarm line, the per-class table and the mistakes,
    one of which opens with its caption (true and predicted class, confidence, top classes)."""
    from playwright.sync_api import expect

    quality = page.locator("#validation-quality")
    expect(quality).to_contain_text("validation images misclassified", timeout=30_000)
    expect(quality).to_contain_text("Missed defects (defect images predicted 'ok')")
    wrong = int(re.search(r"(\d+) of 64 validation images misclassified", quality.inner_text()).group(1))
    table = page.locator("#class-metrics")
    for name in ("precision", "recall", "F1", "support", "crack", "scratch"):
        expect(table).to_contain_text(name)
    thumbnails = page.locator("#mistakes button.thumbnail-item")
    expect(thumbnails).to_have_count(min(wrong, 100))
    if wrong:
        thumbnails.first.click()
        expect(page.locator("#mistakes")).to_contain_text(re.compile(r"true \w+, predicted \w+ \(\d+ %\) · top: "))


def check_report(page, context, tmp_path: Path, shots: Path) -> None:
    """The Export tab's report: downloaded, then opened offline in Chromium with every section."""
    from playwright.sync_api import expect

    page.locator("#report-button").click()
    link = page.locator("#report-file a").first
    expect(link).to_be_visible(timeout=60_000)
    with page.expect_download() as download_info:
        link.click()
    report = tmp_path / "report.html"
    download_info.value.save_as(report)
    page.screenshot(path=str(shots / "11-report-download.png"), full_page=True)
    viewer = context.new_page()
    viewer.goto(report.as_uri())
    for anchor, title in (("summary", "Summary"), ("data", "Data"), ("model", "Model and adapter"),
                          ("training", "Training settings"), ("curves", "Curves"), ("per-class", "Per-class results"),
                          ("quality", "Missed defects and false alarms"), ("confusion", "Confusion matrix"),
                          ("mistakes", "Mistakes"), ("reproduce", "Reproduce this run")):
        expect(viewer.locator(f"section#{anchor} h2")).to_have_text(title)
    images = viewer.locator("section#mistakes img")
    if images.count():  # the thumbnails are embedded, so they load from the file alone
        assert viewer.evaluate("img => img.naturalWidth", images.first.element_handle()) > 0
    viewer.screenshot(path=str(shots / "12-report.png"), full_page=True)
    viewer.close()


def test_a_new_user_fine_tunes_inspects_predicts_and_downloads(browser, studio, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    app, url = studio
    shots = tmp_path / "screenshots"
    shots.mkdir()
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))

    def shot(name: str) -> None:
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

    # 1. The page opens with the tiny model preselected and a live count.
    connected_before = set(app.sessions.connected())
    page.goto(url)
    expect(page.locator("#count-panel")).to_contain_text("adapter", timeout=30_000)
    expect(page.locator("#layout-plot .js-plotly-plot")).to_be_visible(timeout=30_000)
    before = adapter_count(page)
    # The page holds a heartbeat open, so its session never expires while the tab is open.
    wait_until(lambda: (set(app.sessions.connected()) - connected_before) & set(app.sessions.hashes()))
    shot("01-opened")

    # 2. Moving the rank slider changes the count.
    set_slider(page, "rank", 8)
    wait_until(lambda: adapter_count(page) != before)
    after = adapter_count(page)
    assert after > before
    # The figures follow once the controls settle.
    expect(page.locator("#layout-plot")).to_contain_text(f"{after:,} adapter parameters", timeout=15_000)
    shot("02-rank-8")

    # 3. An impossible combination: the ConfigError message shows next to the controls, no traceback.
    set_slider(page, "groups", 40)
    page.locator("#grouping").get_by_text("layer").click()  # 40 groups of whole weights, but only 4 weights
    error = page.locator("#config-error")
    expect(error).to_contain_text("Groups G", timeout=10_000)
    assert "Traceback" not in page.content()
    shot("03-config-error")
    set_slider(page, "groups", 1)
    expect(error).not_to_contain_text("Groups G", timeout=10_000)

    # 4. A preset sets the controls: LoRA is one rank-8 pair per weight, 4 x 8 x (32 + 32) on the tiny model.
    page.locator("#preset input").click()
    page.get_by_role("option", name=re.compile(r"^lora —")).click()
    expect(page.locator("#groups input[type=number]")).to_have_value("0", timeout=10_000)
    wait_until(lambda: adapter_count(page) == 4 * 8 * (32 + 32))
    expect(error).not_to_contain_text("⚠️")
    shot("04-preset-lora")

    # A mistake (training before loading data) is a message, and the Start button comes back.
    page.get_by_role("tab", name="3 · Train").click()
    page.locator("#start").click()
    expect(page.get_by_text("Load data first: upload images or press 'Use sample data'")).to_be_visible(
        timeout=15_000)
    expect(page.locator("#start")).to_be_enabled(timeout=15_000)
    assert "Traceback" not in page.content()
    shot("04b-error-message")

    # 5. Sample data: class counts and one thumbnail row per class.
    page.get_by_role("tab", name="2 · Data").click()
    page.locator("#use-sample").click()
    expect(page.locator("#data-summary")).to_contain_text("320 images in 4 classes", timeout=30_000)
    expect(page.locator("#class-table")).to_contain_text("scratch")
    shot("05-sample-data")

    # 6. Train: a status line with the time left and live curves; Stop ends the run and keeps its best adapter.
    page.get_by_role("tab", name="3 · Train").click()
    set_slider(page, "steps", 2000)
    set_slider(page, "batch-size", 8)
    page.locator("#start").click()
    status = page.locator("#train-status")
    expect(status).to_contain_text("best validation accuracy so far", timeout=120_000)
    expect(status).to_contain_text("s left")
    expect(page.locator("#start")).to_be_disabled()
    expect(page.locator("#curves .js-plotly-plot")).to_be_visible()
    shot("06-training")
    # A loaded machine (the page redraws the curves twice a second) can make a click wait past playwright's 30 s.
    page.locator("#stop").click(timeout=120_000)
    expect(status).to_contain_text("Stopped", timeout=60_000)
    steps = int(re.search(r"Stopped after (\d+) steps", status.inner_text()).group(1))
    assert 0 < steps < 2000
    expect(page.locator("#confusion .js-plotly-plot")).to_be_visible()
    expect(page.locator("#start")).to_be_enabled()
    shot("07-stopped")
    check_validation_results(page, app)
    shot("07b-mistake")

    # 7c. Leaving the lr to the studio: three short runs first, then the run at the lr they picked.
    set_slider(page, "steps", 8)
    page.locator("#pick-lr input[type=checkbox]").check()
    expect(page.get_by_label("Learning rate (adapter)")).to_be_disabled(timeout=10_000)  # the short runs set it
    page.locator("#start").click()
    expect(status).to_contain_text("Done after 8 steps", timeout=120_000)
    expect(status).to_contain_text("picked by short runs (0.015: loss")
    expect(page.locator("#start")).to_be_enabled()
    page.locator("#pick-lr input[type=checkbox]").uncheck()
    expect(page.get_by_label("Learning rate (adapter)")).to_be_enabled(timeout=10_000)
    shot("07c-picked-lr")

    # 8. Inspect ΔW.
    page.get_by_role("tab", name="4 · Inspect ΔW").click()
    page.locator("#inspect-button").click()
    expect(page.locator("#inspect-note")).to_contain_text("weights were updated", timeout=30_000)
    expect(page.locator("#norms-plot .js-plotly-plot")).to_be_visible()
    shot("08-inspect")

    # 9. Classify an uploaded image.
    page.get_by_role("tab", name="5 · Try it").click()
    image = sorted(SAMPLE_IMAGE.glob("*.jpg"))[0]
    page.locator("#try-image input[type=file]").set_input_files(str(image))
    expect(page.locator("#prediction")).to_contain_text("%", timeout=30_000)
    text = page.locator("#prediction").inner_text()
    assert any(name in text for name in ("crack", "ok", "scratch", "spot")), text
    shot("09-prediction")
    uploaded_src = page.locator("#try-image img").first.get_attribute("src")
    page.locator("#picks button.thumbnail-item").nth(2).click()  # the first 'ok' validation image
    wait_until(lambda: page.locator("#try-image img").first.get_attribute("src") != uploaded_src, timeout_s=30)
    expect(page.locator("#prediction")).to_contain_text("%", timeout=30_000)
    shot("09b-picked")

    # 10. Export and download the adapter.
    page.get_by_role("tab", name="6 · Export").click()
    page.locator("#export-button").click()
    link = page.locator("#downloads a").first
    expect(link).to_be_visible(timeout=60_000)
    with page.expect_download() as download_info:
        link.click()
    target = tmp_path / "adapter.zip"
    download_info.value.save_as(target)
    with zipfile.ZipFile(target) as zf:
        names = zf.namelist()
    assert any(name.endswith("adapter_config.json") for name in names), names
    assert any(name.endswith(".safetensors") for name in names), names
    shot("10-export")
    check_report(page, context, tmp_path, shots)

    assert not errors, errors
    context.close()
    print(f"\nscreenshots: {shots}")
