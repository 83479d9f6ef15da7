"""A real browser for the tests: Debian's headless Chromium through chromedriver (selenium), and what a person does with it."""

from __future__ import annotations

from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from .service import REPO

ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--ignore-certificate-errors", "--window-size=1100,900",
)


def start_chromium(profile: Path):
    """Debian's headless Chromium through chromedriver, with its profile in `profile`; quit() ends both."""
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(20)
    return driver


def wait_for(driver, locator, timeout: float = 10.0):
    return WebDriverWait(driver, timeout).until(expected_conditions.presence_of_element_located(locator))


def set_field(driver, name: str, value: str) -> None:
    field = driver.find_element(By.NAME, name)
    field.clear()
    field.send_keys(value)


def _replaced(element):
    """Condition: `element`'s page has been replaced by a new one."""

    def check(_driver) -> bool:
        try:
            element.is_enabled()
            return False
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:  # chromedriver, mid-navigation, says so in other words
            if "does not belong to the document" in str(exc):
                return True
            raise

    return check


def click_and_wait_for_new_page(driver, button) -> None:
    old_page = driver.find_element(By.TAG_NAME, "html")
    button.click()
    WebDriverWait(driver, 10).until(_replaced(old_page))


def submit_section(driver, section: str) -> None:
    click_and_wait_for_new_page(driver, driver.find_element(By.CSS_SELECTOR, f"section#{section} button[type=submit]"))


def submit_login(driver) -> None:
    click_and_wait_for_new_page(driver, driver.find_element(By.CSS_SELECTOR, "form button[type=submit]"))


def screenshot(driver, path: Path, width: int, height: int | None = None) -> None:
    """The page at `width` CSS pixels: the first `height` pixels, or all of it."""
    driver.set_window_size(width, height or 900)
    if height is None:
        full = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(width, min(int(full) + 120, 12000))
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
