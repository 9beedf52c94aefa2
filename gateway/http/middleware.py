"""Pure ASGI middleware in front of the MCP endpoint: body cap, bearer authentication, headers."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from starlette.authentication import AuthCredentials
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from audit import AuditLog, AuditWriteError
from gateway.auth.tokens import SCOPES
from gateway.auth.verifier import GatewayTokenVerifier

__all__ = ["PRINCIPAL_SCOPE_KEY", "BearerAuthMiddleware", "BodyLimitMiddleware", "SecureHeadersMiddleware"]

#: Where the authenticated Principal is put in the ASGI scope.
PRINCIPAL_SCOPE_KEY = "sandbox_gateway.principal"
#: The request path is the client's to choose: an audit line keeps this much of it.
_MAX_PATH_IN_AUDIT = 256


async def _json_response(
    send: Send, status: int, body: dict[str, str], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class BodyLimitMiddleware:
    """413 for a request body above `max_bytes`, whether announced by Content-Length or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await _json_response(
                    send,
                    413,
                    {"error": "request_too_large", "error_description": f"body above {self.max_bytes} bytes"},
                )
                return
        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not response_started:
                await _json_response(
                    send,
                    413,
                    {"error": "request_too_large", "error_description": f"body above {self.max_bytes} bytes"},
                )


class _TooLarge(Exception):
    pass


class BearerAuthMiddleware:
    """401 unless `Authorization: Bearer <token>` verifies; 403 when it carries no gateway scope.

    Each refusal is an `auth.failed` event, folded per client address and window so that a flood
    of bad tokens costs the log a line per reason and a summary, not a line per request.

    The principal goes in the scope for the tools, and the SDK's AuthenticatedUser in `scope["user"]`
    so that an MCP session can only be used with the credential that opened it.

    A refused request is charged to its client address (`charge_address`); one that authenticates
    is not: from here on it counts against its principal and tenant.
    """

    def __init__(
        self,
        app: ASGIApp,
        verifier: GatewayTokenVerifier,
        audit: AuditLog,
        *,
        protected_prefix: str = "/mcp",
        resource_metadata_url: str | None = None,
        charge_address: Callable[[str], None] | None = None,
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.audit = audit
        self.charge_address = charge_address
        self.protected_prefix = protected_prefix
        self._challenge = 'Bearer realm="sandbox-gateway"'
        if resource_metadata_url:
            self._challenge += f', resource_metadata="{resource_metadata_url}"'

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.protected_prefix):
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        reason, principal, access = "missing", None, None
        if header is not None:
            scheme, _, token = header.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                reason = "malformed"
            else:
                principal, access, reason = self.verifier.authenticate(token.strip())
        client = scope.get("client")
        source = {"source_ip": client[0] if client else "unknown"}
        path = scope["path"][:_MAX_PATH_IN_AUDIT]
        if (
            principal is None or access is None or not principal.scopes & set(SCOPES)
        ) and self.charge_address:
            self.charge_address(source["source_ip"])
        if principal is None or access is None:
            with contextlib.suppress(AuditWriteError):  # the request is refused either way
                self.audit.emit_repeated("auth.failed", source, by="reason", reason=reason, path=path)
            await _json_response(
                send,
                401,
                {"error": "invalid_token", "error_description": "a valid bearer token is required"},
                [(b"www-authenticate", f'{self._challenge}, error="invalid_token"'.encode())],
            )
            return
        if not principal.scopes & set(SCOPES):
            with contextlib.suppress(AuditWriteError):
                self.audit.emit_repeated(
                    "auth.failed",
                    source,
                    by="reason",
                    reason="no-scope",
                    principal=principal.id,
                    tenant=principal.tenant,
                    path=path,
                )
            await _json_response(
                send,
                403,
                {"error": "insufficient_scope", "error_description": "the token carries no sandbox scope"},
                [
                    (
                        b"www-authenticate",
                        f'{self._challenge}, error="insufficient_scope", scope="sandbox:exec"'.encode(),
                    )
                ],
            )
            return
        scope[PRINCIPAL_SCOPE_KEY] = principal
        scope["user"] = AuthenticatedUser(access)
        scope["auth"] = AuthCredentials(sorted(principal.scopes))
        await self.app(scope, receive, send)


class SecureHeadersMiddleware:
    """Headers every response carries: no sniffing, no framing, no caching, no referrer."""

    _HEADERS = (
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"cache-control", b"no-store"),
        (b"referrer-policy", b"no-referrer"),
        (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    )

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in self._HEADERS if k not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)
