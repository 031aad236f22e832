"""A real headless Chromium (Debian chromium + chromium-driver) driven by Selenium."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from tests.conftest import _require


@contextmanager
def chromium(
    window: tuple[int, int],
    arguments: Sequence[str] = (),
    capabilities: dict[str, Any] | None = None,
) -> Iterator[webdriver.Chrome]:
    """A headless Chromium with ``window`` size and extra command-line ``arguments``."""
    binary = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    _require(binary is not None and driver_path is not None, "chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = str(binary)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        f"--window-size={window[0]},{window[1]}",
        *arguments,
    ):
        options.add_argument(argument)
    for name, value in (capabilities or {}).items():
        options.set_capability(name, value)
    driver = webdriver.Chrome(service=Service(str(driver_path)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
