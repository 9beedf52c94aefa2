"""The web console in headless Chromium (Debian's chromium and chromium-driver, driven by Selenium),
against a real gateway on the real engine: one gateway, one console and one browser per module."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from gateway.auth.tokens import DEFAULT_SCOPES, TokenStore
from tests.e2e.conftest import start_gateway, stop_gateway
from tests.support.gateway_process import Gateway
from tests.support.net import free_port
from tests.support.processes import end, wait_serving

if TYPE_CHECKING:
    from gateway.backend.docker_engine import DockerBackend

__all__ = ["SCREENSHOTS", "Console", "Page", "browser", "running_console"]

#: Where the run leaves its screenshots (the README shows them).
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
CHROMIUM = os.environ.get("SGW_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("SGW_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")


@dataclass
class Console:
    """A running console (`url`) for `gateway`, and its log."""

    url: str
    gateway: Gateway
    log: Path
    process: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def ui_gateway(tmp_path_factory: pytest.TempPathFactory, backend: DockerBackend) -> Iterator[Gateway]:
    """A gateway for alice and bob (default scopes) and ops (profile tenant-admin, also sandbox:admin),
    all of one tenant."""
    workdir = tmp_path_factory.mktemp("ui-gateway")
    ops = TokenStore(workdir / "tokens.jsonl").create(
        "ops", "tenant-admin", "default", scopes=(*DEFAULT_SCOPES, "sandbox:admin")
    )
    running = start_gateway(workdir)
    running.tokens["ops"] = ops
    yield running
    stop_gateway(running)
    assert backend.list({"sandbox-gateway.gateway": running.gateway_id}) == []


@contextlib.contextmanager
def running_console(
    gateway: Gateway, workdir: Path, *args: str, port: int | None = None, env: dict[str, str] | None = None
) -> Iterator[Console]:
    """`python -m frontend` for `gateway` on `port` (a free loopback port by default), with `args`;
    stopped on exit."""
    port = port or free_port()
    log = workdir / "console.log"
    env = {
        **os.environ,
        "MCP_SERVER_URL": gateway.url,
        "GRADIO_TEMP_DIR": str(workdir / "gradio"),
        **(env or {}),
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "frontend", "--port", str(port), *args], stdout=out, stderr=out, env=env
        )
    url = f"http://127.0.0.1:{port}"

    try:
        wait_serving(process, url, log, "the console", timeout_s=60)
        yield Console(url, gateway, log, process)
    finally:
        end(process, grace_s=20)


@pytest.fixture(scope="module")
def console(ui_gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """The console for the module's gateway."""
    with running_console(ui_gateway, tmp_path_factory.mktemp("ui")) as running:
        yield running
    assert all(token not in running.log.read_text() for token in ui_gateway.tokens.values()), (
        "tokens are never logged"
    )


def until(
    driver: webdriver.Chrome, condition: Callable[[webdriver.Chrome], object], timeout_s: float
) -> object:
    """Wait for `condition` as WebDriverWait does, asking again when an element it reads is not
    there yet or was replaced in the meantime: Gradio renders a tab's components after the tab is
    chosen and re-renders them while an update lands, later the busier the machine."""
    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, timeout_s, ignored_exceptions=ignored).until(condition)


class Page:
    """The browser on the console, with the few moves the tests make."""

    def __init__(self, driver: webdriver.Chrome, timeout_s: float = 30) -> None:
        self.driver = driver
        self.timeout_s = timeout_s

    def el(self, elem_id: str) -> WebElement:
        """The element, once it is on the page (up to the page's timeout)."""
        found = until(self.driver, lambda d: d.find_element(By.ID, elem_id), self.timeout_s)
        assert isinstance(found, WebElement)
        return found

    def text(self, elem_id: str) -> str:
        """The element's visible text without the progress timer Gradio shows in it while it is
        being updated ("0.2s"), its runs of white space made one space."""

        def read(_: webdriver.Chrome) -> str:
            element = self.el(elem_id)
            shown = str(element.text)
            for tracker in element.find_elements(By.CSS_SELECTOR, "[data-testid='status-tracker']"):
                timer = str(tracker.text)
                shown = shown.replace(timer, "", 1) if timer else shown
            return " " + shown  # never empty, so the wait takes it

        return " ".join(str(until(self.driver, read, self.timeout_s)).split())

    def inner(self, elem_id: str, css: str) -> WebElement:
        """The first element matching `css` inside the element, once it is rendered."""
        found = until(
            self.driver, lambda _: self.el(elem_id).find_element(By.CSS_SELECTOR, css), self.timeout_s
        )
        assert isinstance(found, WebElement)
        return found

    def box(self, elem_id: str) -> WebElement:
        """The textarea or input inside a Gradio textbox."""
        return self.inner(elem_id, "textarea, input")

    def field(self, elem_id: str) -> str:
        """The value of the textarea or input inside a Gradio textbox."""
        value = until(self.driver, lambda _: [self.box(elem_id).get_attribute("value") or ""], self.timeout_s)
        assert isinstance(value, list)
        return str(value[0])

    def fill(self, elem_id: str, value: str) -> None:
        box = self.box(elem_id)
        box.clear()
        box.send_keys(value)

    def settled(self) -> None:
        """Wait (up to the page's timeout) until no full-page Gradio progress overlay covers the
        page, as a person waits before clicking; a busy machine makes the console's updates slow.
        The click after it fails as it would have when the overlay stays."""
        overlay = "[data-testid='status-tracker'].full"
        with contextlib.suppress(TimeoutException):
            until(
                self.driver,
                lambda d: not any(e.is_displayed() for e in d.find_elements(By.CSS_SELECTOR, overlay)),
                self.timeout_s,
            )

    def click(self, elem_id: str) -> None:
        self.press(f"[id='{elem_id}']")

    def press(self, css: str) -> None:
        """Click the first element matching `css`, once the page is settled and it is there."""
        self.settled()

        def clicked(d: webdriver.Chrome) -> bool:
            d.find_element(By.CSS_SELECTOR, css).click()
            return True

        until(self.driver, clicked, self.timeout_s)

    def tab(self, label: str) -> None:
        self.settled()

        def chosen(d: webdriver.Chrome) -> bool:
            buttons = d.find_elements(By.CSS_SELECTOR, "button[role='tab']")
            next(b for b in buttons if b.text.strip() == label).click()
            return True

        until(self.driver, chosen, self.timeout_s)

    def wait_text(self, elem_id: str, needle: str, timeout_s: float | None = None) -> str:
        """The element's text once it contains `needle`."""
        return self._wait(self.text, elem_id, needle, timeout_s)

    def wait_field(self, elem_id: str, needle: str, timeout_s: float | None = None) -> str:
        """The form field's value once it contains `needle`."""
        return self._wait(self.field, elem_id, needle, timeout_s)

    def _wait(self, read: Callable[[str], str], elem_id: str, needle: str, timeout_s: float | None) -> str:
        try:
            until(self.driver, lambda _: needle in read(elem_id), timeout_s or self.timeout_s)
        except TimeoutException:
            raise AssertionError(f"#{elem_id} never showed {needle!r}: it shows {read(elem_id)!r}") from None
        return read(elem_id)

    def sign_in(self, token: str, who: str) -> None:
        self.fill("token-input", token)
        self.click("sign-in")
        self.wait_text("signed-in-as", f"Signed in as {who}")

    def run(self, language: str, code: str, prints: str) -> str:
        """Run code that `prints` something from the console tab; the result line once this run's is
        there (the last run's stays on the page until then)."""
        self.tab("Console")
        self.press(f"#language input[value='{language}']")
        self.fill("code-input", code)
        self.click("run-button")
        self.wait_field("run-output", prints)
        return self.wait_text("run-status", "exit code")

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / name
        height = self.driver.execute_script("return document.body.scrollHeight")
        self.driver.set_window_size(1280, max(900, min(int(height) + 40, 2400)))
        self.driver.save_screenshot(str(path))
        return path

    def requested_urls(self) -> list[str]:
        """Every URL the page has asked for since the last call (Chromium's network log)."""

        urls = []
        for entry in self.driver.get_log("performance"):  # type: ignore[no-untyped-call]
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent":
                urls.append(str(message["params"]["request"]["url"]))
        return urls


@contextlib.contextmanager
def browser(url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    """A new headless Chromium (a profile of its own: no cookies) on `url`; fails (never skips) when
    the browser is missing."""
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.fail(
            f"{CHROMIUM} or {CHROMEDRIVER} missing: `make test-tools` installs chromium and chromium-driver"
        )
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,900", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-default-apps", "--disable-sync"):  # fmt: skip
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium')}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    downloads = tmp_path_factory.mktemp("downloads")
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads)})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(url)
        the_page = Page(driver)
        try:
            WebDriverWait(driver, 120).until(lambda d: d.find_elements(By.ID, "sign-in"))
        except TimeoutException:
            shown = driver.find_element(By.TAG_NAME, "body").text[:500]
            raise AssertionError(f"the console never showed its page at {url}: it shows {shown!r}") from None
        yield the_page
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def page(console: Console, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    """The module's browser on the console."""
    with browser(console.url, tmp_path_factory) as the_page:
        yield the_page
