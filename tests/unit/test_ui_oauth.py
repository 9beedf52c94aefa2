"""The console's OAuth sign-in, its pure parts: the authorization request, the flow's browser
binding and one-time use, the hand-off's expiry and bound, and the client configuration."""

from __future__ import annotations

import base64
import hashlib
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from frontend.config import OAuthOptions, oauth_client
from frontend.oauth import Endpoints, OAuthClient, SignInError, authorization_url, https_or_loopback
from frontend.signin_state import Flows, Handoff, Handoffs, new_flow

ENDPOINTS = Endpoints(
    issuer="https://id.example.com",
    authorization_endpoint="https://id.example.com/authorize?tenant=acme",
    token_endpoint="https://id.example.com/token",
    resource="https://gateway.example.com/mcp",
    scopes=("sandbox:exec", "sandbox:files"),
)
CLIENT = OAuthClient("console", "https://console.example.com/oauth/callback")


def test_the_authorization_request_asks_for_a_code_with_pkce_for_the_gateway() -> None:
    state, _, pkce, flow = new_flow(ENDPOINTS)
    url = authorization_url(ENDPOINTS, CLIENT, state, pkce)
    assert url.startswith("https://id.example.com/authorize?tenant=acme&")
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert query == {
        "tenant": "acme",
        "response_type": "code",
        "client_id": "console",
        "redirect_uri": "https://console.example.com/oauth/callback",
        "state": state,
        "code_challenge": pkce.code_challenge,
        "code_challenge_method": "S256",
        "resource": "https://gateway.example.com/mcp",
        "scope": "sandbox:exec sandbox:files",
    }
    challenge = base64.urlsafe_b64encode(hashlib.sha256(flow.verifier.encode()).digest()).rstrip(b"=")
    assert challenge.decode() == pkce.code_challenge, "S256 of the verifier the flow keeps"
    assert flow.verifier not in url


def test_a_flow_is_taken_once_and_only_with_its_browsers_binding() -> None:
    flows = Flows(600)
    state, binding, _, flow = new_flow(ENDPOINTS)
    flows.put(state, flow)
    assert flows.take_bound(state, "another-browser") is None
    assert flows.take_bound(state, binding) is None, "a failed attempt used the flow up"
    state, binding, _, flow = new_flow(ENDPOINTS)
    flows.put(state, flow)
    assert flows.take_bound(state, None) is None
    state, binding, _, flow = new_flow(ENDPOINTS)
    flows.put(state, flow)
    assert flows.take_bound(state, binding) is flow
    assert flows.take_bound(state, binding) is None, "a callback cannot be replayed"


def test_states_and_bindings_are_unguessable_and_distinct() -> None:
    made = [new_flow(ENDPOINTS) for _ in range(50)]
    values = {s for s, _, _, _ in made} | {b for _, b, _, _ in made}
    assert len(values) == 100 and all(len(v) >= 43 for v in values)


def test_hand_offs_expire_and_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    handoffs = Handoffs(120, limit=3)
    keys = [handoffs.leave(Handoff(token=f"t{i}", issuer="i")) for i in range(5)]
    assert len(handoffs) == 3, "the oldest make room"
    assert handoffs.claim(keys[0]) is None and handoffs.claim(keys[4]) == Handoff(token="t4", issuer="i")
    assert handoffs.claim(keys[4]) is None, "claimed once"
    assert handoffs.claim(None) is None and handoffs.claim("") is None
    later = time.monotonic() + 121
    monkeypatch.setattr(time, "monotonic", lambda: later)
    assert handoffs.claim(keys[3]) is None, "expired"


def test_a_handoff_never_shows_its_token() -> None:
    assert "secret-jwt" not in repr(Handoff(token="secret-jwt", issuer="i"))
    assert "s3cret" not in repr(OAuthClient("c", "https://c/oauth/callback", client_secret="s3cret"))


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://id.example.com", True),
        ("http://127.0.0.1:9000", True),
        ("http://localhost:9000", True),
        ("http://[::1]:9000", True),
        ("http://id.example.com", False),
        ("http://127.0.0.1.example.com", False),
        ("ftp://id.example.com", False),
    ],
)
def test_codes_and_tokens_travel_over_https_or_stay_on_the_machine(url: str, ok: bool) -> None:
    if ok:
        assert https_or_loopback(url, "issuer") == url
    else:
        with pytest.raises(SignInError, match="neither https nor on this machine"):
            https_or_loopback(url, "issuer")


def test_without_a_client_id_only_pasted_tokens_are_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SGW_UI_OAUTH_CLIENT_ID", raising=False)
    assert oauth_client(OAuthOptions(), "127.0.0.1", 7860) is None


def test_the_client_registration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SGW_UI_PUBLIC_URL", "SGW_UI_OAUTH_SCOPES", "SGW_UI_OAUTH_ISSUER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SGW_UI_OAUTH_CLIENT_ID", "console")
    local = oauth_client(OAuthOptions(), "127.0.0.1", 7860)
    assert local == OAuthClient("console", "http://127.0.0.1:7860/oauth/callback")
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    public = oauth_client(
        OAuthOptions(public_url="https://console.example.com/", client_secret_file=str(secret), scopes="a b"),
        "0.0.0.0",  # noqa: S104
        7860,
    )
    assert public == OAuthClient(
        "console", "https://console.example.com/oauth/callback", "s3cret", None, ("a", "b")
    )


@pytest.mark.parametrize(
    ("options", "host", "message"),
    [
        (OAuthOptions(), "0.0.0.0", "set SGW_UI_PUBLIC_URL"),  # noqa: S104
        (
            OAuthOptions(public_url="http://console.example.com"),
            "127.0.0.1",
            "neither https nor on this machine",
        ),
        (OAuthOptions(public_url="https://console.example.com/ui"), "127.0.0.1", "the console's origin"),
        (
            OAuthOptions(client_secret_file="/nonexistent/secret"),
            "127.0.0.1",
            "cannot read the OAuth client secret",
        ),
    ],
)
def test_a_registration_that_cannot_work_is_refused_at_start(
    options: OAuthOptions, host: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SGW_UI_OAUTH_CLIENT_ID", "console")
    monkeypatch.delenv("SGW_UI_PUBLIC_URL", raising=False)
    with pytest.raises(ValueError, match=message):
        oauth_client(options, host, 7860)
