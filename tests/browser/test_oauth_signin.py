"""Sign-in through the gateway's OAuth issuer, in a real browser: a real authorization server
(node-oidc-provider: PKCE, resource indicators, JWT access tokens), a gateway that accepts its JWTs,
and the console as the issuer's client.

The issuer (localhost) and the console (127.0.0.1) are different sites, as in a deployment, so the
console's SameSite=Lax cookies are tested as they are used. The tests share one browser and run in
order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser.conftest import Console, Page, browser, running_console
from tests.e2e.conftest import start_gateway, stop_gateway
from tests.support import audit_events
from tests.support.gateway_process import Gateway
from tests.support.net import free_port
from tests.support.oauth_issuer import Issuer, running_issuer

if TYPE_CHECKING:
    from gateway.backend.docker_engine import DockerBackend

AUDIENCE = "urn:sandbox-gateway:console-test"
CLIENT_ID = "sgw-console"


@pytest.fixture(scope="module")
def oauth_setup(
    tmp_path_factory: pytest.TempPathFactory, backend: DockerBackend
) -> Iterator[tuple[Gateway, Issuer, int]]:
    """The issuer, a gateway trusting it, and the port the console will take (the issuer knows the
    console's callback URL as a registered client)."""
    work = tmp_path_factory.mktemp("oauth")
    issuer_port, console_port = free_port(), free_port()
    issuer_url = f"http://localhost:{issuer_port}"
    gateway = start_gateway(
        work, "--oauth-issuer", issuer_url, "--oauth-audience", AUDIENCE, "--oauth-jwks", f"{issuer_url}/jwks"
    )
    try:
        with running_issuer(
            issuer_port,
            resource=gateway.url,
            audience=AUDIENCE,
            client_id=CLIENT_ID,
            redirect_uri=f"http://127.0.0.1:{console_port}/oauth/callback",
            log=work / "issuer.log",
        ) as issuer:
            yield gateway, issuer, console_port
    finally:
        stop_gateway(gateway)
    assert backend.list({"sandbox-gateway.gateway": gateway.gateway_id}) == []


@pytest.fixture(scope="module")
def ui_gateway(oauth_setup: tuple[Gateway, Issuer, int]) -> Gateway:
    return oauth_setup[0]


@pytest.fixture(scope="module")
def issuer(oauth_setup: tuple[Gateway, Issuer, int]) -> Issuer:
    return oauth_setup[1]


@pytest.fixture(scope="module")
def console(
    oauth_setup: tuple[Gateway, Issuer, int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Console]:
    gateway, _, port = oauth_setup
    workdir = tmp_path_factory.mktemp("oauth-ui")
    with running_console(gateway, workdir, "--oauth-client-id", CLIENT_ID, port=port) as running:
        yield running
    assert "eyJ" not in running.log.read_text(), "no JWT in the console's log"


def _at_issuer(page: Page, issuer: Issuer) -> None:
    try:
        WebDriverWait(page.driver, 30).until(lambda d: d.current_url.startswith(issuer.url))
    except TimeoutException:
        shown = page.driver.find_element(By.TAG_NAME, "body").text[:500]
        raise AssertionError(f"not at the issuer: at {page.driver.current_url}, showing {shown!r}") from None


def _log_in_at_issuer(page: Page, issuer: Issuer, login: str) -> None:
    """The issuer's login page, then its consent page."""
    _at_issuer(page, issuer)
    WebDriverWait(page.driver, 30).until(lambda d: d.find_elements(By.NAME, "login"))
    page.driver.find_element(By.NAME, "login").send_keys(login)
    page.driver.find_element(By.NAME, "password").send_keys("any password")
    page.driver.find_element(By.CSS_SELECTOR, "button[type='submit']").click()
    consent = "//button[normalize-space()='Continue']"
    WebDriverWait(page.driver, 30).until(lambda d: d.find_elements(By.XPATH, consent))
    page.driver.find_element(By.XPATH, consent).click()


def _forget_the_issuer_session(page: Page, issuer: Issuer, console: Console) -> None:
    page.driver.get(f"{issuer.url}/.well-known/openid-configuration")
    page.driver.delete_all_cookies()
    page.driver.get(console.url)
    WebDriverWait(page.driver, 60).until(lambda d: d.find_elements(By.ID, "oauth-sign-in"))


def test_a_person_signs_in_through_the_issuer_and_runs_code(
    page: Page, issuer: Issuer, console: Console
) -> None:
    page.click("oauth-sign-in")
    _log_in_at_issuer(page, issuer, "carol")
    shown = page.wait_text("signed-in-as", "Signed in as carol")
    assert "tenant acme" in shown and "profile default" in shown and f"through {issuer.url}" in shown
    assert page.run("bash", "echo $((6 * 7))", "42").startswith("exit code 0")
    started = audit_events(console.gateway.audit_log, "exec.start")
    assert [e["actor"]["principal"] for e in started] == ["carol"] and started[0]["actor"][
        "auth_method"
    ] == "jwt"

    urls = page.requested_urls()
    assert any("/oauth/callback?" in url for url in urls), "the issuer sent the browser back"
    assert not [url for url in urls if "eyJ" in url or "access_token" in url], "no token in any URL"
    for cookie in page.driver.get_cookies():
        assert "eyJ" not in cookie["value"], f"no token in the cookie {cookie['name']}"
        if cookie["name"].startswith("sgw_"):
            assert cookie["httpOnly"] and cookie["sameSite"] == "Lax", cookie
    stored = page.driver.execute_script(
        "return JSON.stringify(Object.assign({}, window.localStorage, window.sessionStorage))"
    )
    assert "eyJ" not in stored, "the page keeps no token in the browser's storage"


def test_a_reload_forgets_the_token(page: Page, issuer: Issuer, console: Console) -> None:
    page.driver.get(console.url)
    WebDriverWait(page.driver, 60).until(lambda d: d.find_elements(By.ID, "oauth-sign-in"))
    assert page.wait_text("signed-in-as", "Not signed in") == "Not signed in.", "the hand-off is used once"
    assert "eyJ" not in page.driver.execute_script("return document.documentElement.outerHTML")


def test_a_forged_callback_signs_nobody_in(page: Page, console: Console) -> None:
    page.driver.get(f"{console.url}/oauth/callback?state=forged&code=stolen")
    shown = page.wait_text("signed-in-as", "Not signed in")
    assert "unknown, expired or was started in another browser" in shown


def test_a_sign_in_started_in_another_browser_is_refused(
    page: Page, console: Console, issuer: Issuer
) -> None:
    """Login CSRF: an attacker starts a flow and sends the victim the callback; the victim's browser
    lacks the flow's binding cookie."""
    started = httpx.get(f"{console.url}/oauth/login", follow_redirects=False)
    assert started.status_code == 302 and started.headers["location"].startswith(issuer.url)
    query = parse_qs(urlsplit(started.headers["location"]).query)
    assert query["code_challenge_method"] == ["S256"] and query["resource"] == [console.gateway.url]
    assert query["client_id"] == [CLIENT_ID] and "code_verifier" not in query
    page.driver.get(f"{console.url}/oauth/callback?state={query['state'][0]}&code=attackers-code")
    shown = page.wait_text("signed-in-as", "Not signed in")
    assert "started in another browser" in shown


def test_cancelling_at_the_issuer_is_shown_plainly(page: Page, issuer: Issuer, console: Console) -> None:
    _forget_the_issuer_session(page, issuer, console)
    page.click("oauth-sign-in")
    _at_issuer(page, issuer)
    WebDriverWait(page.driver, 30).until(lambda d: d.find_elements(By.LINK_TEXT, "[ Cancel ]"))
    page.driver.find_element(By.LINK_TEXT, "[ Cancel ]").click()
    shown = page.wait_text("signed-in-as", "Not signed in")
    assert "the issuer did not sign you in" in shown and "aborted" in shown, shown


def test_an_operator_signs_in_through_the_issuer_and_sees_the_tenants_sandboxes(
    issuer: Issuer, console: Console, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """In a browser of their own (no session at the issuer yet)."""
    with browser(console.url, tmp_path_factory) as operator:
        operator.el("oauth-sign-in").click()
        _log_in_at_issuer(operator, issuer, "ops-1")
        operator.wait_text("signed-in-as", "Signed in as ops-1")
        operator.tab("Operator")
        operator.click("admin-refresh")
        table = operator.wait_text("admin-table", "carol")
        assert "default" in table
        operator.screenshot("oauth-operator.png")
