"""The research dashboard in a real headless Chromium (Debian chromium + chromium-driver)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from services.gateway.privacy import Pseudonymizer
from tests.gateway.conftest import RESEARCHER_PASSWORD, Stack
from tests.harness.browser import chromium
from tests.harness.gateway import PSEUDONYM_KEY

pytestmark = [pytest.mark.integration, pytest.mark.slow]
IMAGES_LOADED = (
    "return Array.from(document.images).length > 0 && "
    "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
)


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    with chromium((1400, 2400), ("--disable-gpu",)) as driver:
        yield driver


def _drawn(png: bytes, box: tuple[int, int, int, int]) -> float:
    """Share of non-white pixels in a box of a screenshot."""
    image = np.asarray(Image.open(io.BytesIO(png)).convert("L").crop(box), dtype=float)
    return float((image < 235).mean())


def _sign_in(browser: webdriver.Chrome, stack: Stack) -> None:
    browser.get(f"{stack.gateway.url}/dashboard/")
    assert "/dashboard/login" in browser.current_url  # not signed in: sent to the sign-in page
    browser.find_element(By.NAME, "username").send_keys("ada")
    browser.find_element(By.NAME, "password").send_keys(RESEARCHER_PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, "counts"))


def test_cohort_page_renders_tables_and_plots(
    browser: webdriver.Chrome, stack: Stack, tmp_path: Path
) -> None:
    _sign_in(browser, stack)
    WebDriverWait(browser, 60).until(lambda d: d.execute_script(IMAGES_LOADED))
    assert "ada · researcher (pseudonymised)" in browser.find_element(By.TAG_NAME, "header").text
    metrics = browser.find_element(By.ID, "metrics").find_elements(By.TAG_NAME, "tr")
    assert len(metrics) >= 5  # header + two units of analysis for each of two quantities
    assert "Foraminal height" in metrics[1].text
    counts = browser.find_element(By.ID, "counts").text
    assert "Cases 3" in counts and "With a usable pre/post pair 2" in counts
    missing = browser.find_element(By.ID, "missing").text
    assert "no pre-operative CT" in missing
    for plan in stack.plans:  # pseudonymised: no MRN, no name anywhere on the page
        assert plan.mrn not in browser.page_source and plan.family not in browser.page_source
    images = browser.find_elements(By.CSS_SELECTOR, ".plots img")
    assert len(images) >= 5
    png = browser.get_screenshot_as_png()
    (tmp_path / "cohort.png").write_bytes(png)
    scale = browser.execute_script("return window.devicePixelRatio")
    plot = images[0]
    browser.execute_script("arguments[0].scrollIntoView()", plot)
    png = browser.get_screenshot_as_png()
    (tmp_path / "cohort-plot.png").write_bytes(png)
    rect = browser.execute_script("return arguments[0].getBoundingClientRect().toJSON()", plot)
    box = tuple(int(v * scale) for v in (rect["left"], rect["top"], rect["right"], rect["bottom"]))
    assert box[2] - box[0] > 200 and box[3] - box[1] > 150
    drawn = _drawn(png, box)  # type: ignore[arg-type]
    assert 0.02 < drawn < 0.9, drawn  # lines, axes and text, not a blank or broken image


def test_case_list_and_case_page_with_key_images(
    browser: webdriver.Chrome, stack: Stack, tmp_path: Path
) -> None:
    browser.get(f"{stack.gateway.url}/dashboard/cases?group=foraminal-stenosis")
    if "/login" in browser.current_url:
        _sign_in(browser, stack)
        browser.get(f"{stack.gateway.url}/dashboard/cases?group=foraminal-stenosis")
    rows = browser.find_element(By.ID, "cases").find_elements(By.TAG_NAME, "tr")
    assert len(rows) == 3  # header + the two foraminal cases
    # Researchers reach a case by its pseudonym, never by the EHR's Procedure id.
    case_id = Pseudonymizer(PSEUDONYM_KEY.encode()).case(stack.cases[stack.plans[0].mrn])
    browser.find_element(By.CSS_SELECTOR, f"a[href='/dashboard/cases/{case_id}']").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, "metrics"))
    WebDriverWait(browser, 60).until(lambda d: d.execute_script(IMAGES_LOADED))
    key_images = browser.find_elements(By.CSS_SELECTOR, ".keyimages img")
    assert len(key_images) >= 4
    metrics = browser.find_element(By.ID, "metrics").text
    assert "foraminal_height" in metrics and "L4-L5" in metrics
    assert "(dates shifted)" in browser.page_source
    (tmp_path / "case.png").write_bytes(browser.get_screenshot_as_png())
    # Signing out ends the session.
    browser.find_element(By.CSS_SELECTOR, "header button[type=submit]").click()
    browser.get(f"{stack.gateway.url}/dashboard/")
    assert "/dashboard/login" in browser.current_url
