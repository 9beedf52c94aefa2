"""The guards in front of /mcp, exercised in-process: 401 without a valid token, 413 above the cap."""

from collections.abc import Iterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from audit import AuditLog, MemorySink
from gateway.auth.tokens import TokenStore
from gateway.auth.verifier import GatewayTokenVerifier
from gateway.http.middleware.authentication import PRINCIPAL_SCOPE_KEY, BearerAuthMiddleware
from gateway.http.middleware.body_limit import BodyLimitMiddleware
from gateway.http.middleware.secure_headers import SecureHeadersMiddleware
from tests.support import audit_events


def make_client(tmp_path: Path) -> tuple[TestClient, str, MemorySink]:
    tokens = TokenStore(tmp_path / "tokens")
    token = tokens.create("alice")
    sink = MemorySink()

    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        principal = request.scope.get(PRINCIPAL_SCOPE_KEY)
        return JSONResponse({"principal": principal.id if principal else None, "size": len(body)})

    app = Starlette(
        routes=[Route("/mcp", echo, methods=["POST"]), Route("/health", echo, methods=["GET"])],
        middleware=[
            Middleware(SecureHeadersMiddleware),
            Middleware(BodyLimitMiddleware, max_bytes=1024),
            Middleware(BearerAuthMiddleware, verifier=GatewayTokenVerifier(tokens), audit=AuditLog([sink])),
        ],
    )
    return TestClient(app), token, sink


def test_valid_token_puts_the_principal_in_scope(tmp_path: Path) -> None:
    client, token, _ = make_client(tmp_path)
    response = client.post("/mcp", headers={"Authorization": f"Bearer {token}"}, content=b"{}")
    assert response.status_code == 200
    assert response.json()["principal"] == "alice"


def test_missing_malformed_and_wrong_tokens_get_401_and_an_audit_event(tmp_path: Path) -> None:
    client, token, sink = make_client(tmp_path)
    cases = [
        {},
        {"Authorization": token},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer sgw_wrong"},
    ]
    for headers in cases:
        response = client.post("/mcp", headers=headers, content=b"{}")
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
    reasons = [e["detail"]["reason"] for e in audit_events(sink)]
    # The first of each reason from a source; the repeats are counted (tests/unit/test_audit_repeats.py).
    assert reasons == ["missing", "malformed", "unknown-token"]
    assert token not in "".join(sink.lines)


def test_unprotected_routes_need_no_token(tmp_path: Path) -> None:
    client, _, _ = make_client(tmp_path)
    assert client.get("/health").status_code == 200


def test_oversized_body_gets_413_announced_or_streamed(tmp_path: Path) -> None:
    client, token, _ = make_client(tmp_path)
    auth = {"Authorization": f"Bearer {token}"}
    assert client.post("/mcp", headers=auth, content=b"x" * 2048).status_code == 413

    def chunks() -> Iterator[bytes]:
        yield b"x" * 1000
        yield b"x" * 1000

    assert client.post("/mcp", headers=auth, content=chunks()).status_code == 413


def test_secure_headers_are_set(tmp_path: Path) -> None:
    client, _, _ = make_client(tmp_path)
    headers = client.get("/health").headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "no-store"
