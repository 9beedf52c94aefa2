"""A person and an operator use the web console in a real browser, against a real gateway and engine.

The tests share one browser, so they run in order: alice signs in, runs code, uploads a file, meets a
refusal and resets; then bob makes a sandbox and ops (an operator) removes it.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

from selenium.webdriver.common.by import By

from tests.browser.conftest import SCREENSHOTS, Console, Page, until

STREAMING = "import time\nfor i in range(4):\n    print('line', i, flush=True)\n    time.sleep(1)\n"


def _shown(page: Page, elem_id: str) -> bool:
    """Whether the element is on the page and visible (Gradio leaves hidden rows out of the page)."""
    return any(e.is_displayed() for e in page.driver.find_elements(By.ID, elem_id))


def _choose(page: Page, elem_id: str, value: str) -> None:
    """Pick `value` in a Gradio dropdown."""
    page.inner(elem_id, "input").click()
    option = f"#{elem_id} li[role='option'][aria-label='{value}']"
    page.press(option)


def test_the_page_asks_nothing_of_the_internet(page: Page, console: Console) -> None:
    local = {urlsplit(console.url).netloc}
    outside = [
        url
        for url in page.requested_urls()
        if urlsplit(url).scheme in ("http", "https", "ws", "wss") and urlsplit(url).netloc not in local
    ]
    assert outside == [], "every asset comes from the console itself"
    assert page.text("signed-in-as") == "Not signed in."


def test_a_wrong_token_is_rejected_plainly(page: Page) -> None:
    page.fill("token-input", "sgw_" + "x" * 43)
    page.click("sign-in")
    shown = page.wait_text("signed-in-as", "token-rejected")
    assert "Not signed in" in shown and "401" in shown
    assert page.field("token-input") == "", "the token box is cleared at once"


def test_output_arrives_while_the_command_runs(page: Page, console: Console) -> None:
    page.sign_in(console.gateway.tokens["alice"], "alice")
    assert page.field("token-input") == ""
    page.tab("Console")
    page.press("#language input[value='python']")
    page.fill("code-input", STREAMING)
    page.click("run-button")
    first_line_at = finished_at = None
    start = time.monotonic()
    while time.monotonic() - start < 30 and finished_at is None:
        now = time.monotonic() - start
        if first_line_at is None and "line 0" in page.field("run-output"):
            first_line_at = now
        if "exit code" in page.text("run-status"):
            finished_at = now
        time.sleep(0.1)
    assert first_line_at is not None and finished_at is not None, page.text("run-status")
    assert finished_at - first_line_at >= 1.5, (
        f"first line at {first_line_at:.1f} s, end at {finished_at:.1f} s"
    )
    assert page.field("run-output") == "line 0\nline 1\nline 2\nline 3\n"
    assert page.text("run-status").startswith("exit code 0")
    page.screenshot("console.png")


def test_an_uploaded_file_can_be_read_back(page: Page, tmp_path: Path) -> None:
    local = tmp_path / "notes.txt"
    local.write_text("uploaded through the console\n")
    page.tab("Workspace")
    page.inner("upload-file", "input[type='file']").send_keys(str(local))
    page.wait_text("files-status", "Uploaded /workspace/notes.txt")
    assert "notes.txt" in page.wait_text("files-table", "notes.txt")
    page.click("file-view-button")
    page.wait_field("file-view", "uploaded through the console")
    assert page.run("bash", "cat /workspace/notes.txt", "uploaded").startswith("exit code 0")
    assert page.field("run-output") == "uploaded through the console\n"


def test_a_refused_call_shows_the_gateways_code(page: Page) -> None:
    page.tab("Workspace")
    page.fill("files-path", "/etc")
    page.click("files-refresh")
    assert "only paths under /workspace" in page.wait_text("files-status", "path-outside-workspace")
    page.fill("files-path", "/workspace")
    page.tab("Operator")
    page.click("admin-refresh")
    page.wait_text("admin-status", "insufficient-scope")


def test_sandbox_facts_and_reset(page: Page) -> None:
    page.tab("Sandbox")
    page.click("info-refresh")
    facts = page.wait_text("sandbox-info", "Time left before idle expiry")
    assert "Profile" in facts and "Request rate" in facts
    assert "skills" in page.text("skills-table")
    page.click("reset-button")
    page.wait_text("sandbox-status", "Sandbox reset")
    assert page.run("bash", "ls /workspace; echo listed", "listed").startswith("exit code 0")
    assert "notes.txt" not in page.field("run-output"), "a reset sandbox starts empty"


def test_an_operator_sees_and_removes_another_principals_sandbox(page: Page, console: Console) -> None:
    page.click("sign-out")
    page.wait_text("signed-in-as", "Signed out")
    page.sign_in(console.gateway.tokens["bob"], "bob")
    assert page.run("bash", "echo bob was here", "bob was here").startswith("exit code 0")
    page.click("sign-out")
    page.sign_in(console.gateway.tokens["ops"], "ops")
    page.tab("Operator")
    page.fill("explain-principal", "bob")
    _choose(page, "explain-tool", "execute_bash")
    page.click("policy-show")
    policy = page.wait_text("operator-policy", "Explain: bob")
    assert "tenant-admin" in policy and "allowed" in policy, policy
    page.click("admin-refresh")
    page.wait_text("admin-table", "bob")
    _choose(page, "admin-select", "bob")
    page.click("admin-remove")
    until(page.driver, lambda _: _shown(page, "admin-confirm-row"), 10)
    assert "Remove the sandbox of bob" in page.text("admin-confirm-text")
    page.screenshot("operator.png")
    page.click("admin-confirm")
    page.wait_text("admin-status", "Removed the sandbox of bob")
    until(page.driver, lambda _: "bob" not in page.text("admin-table"), 10)
    assert not _shown(page, "admin-confirm-row"), "the confirmation step is gone"
    assert (SCREENSHOTS / "console.png").stat().st_size > 0
