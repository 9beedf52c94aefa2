"""Bearer authentication: who the caller is, put in the ASGI scope for what runs behind it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from starlette.authentication import AuthCredentials
from starlette.types import ASGIApp, Receive, Scope, Send

from audit import AuditLog, AuditWriteError
from gateway.auth.tokens import SCOPES
from gateway.auth.verifier import GatewayTokenVerifier
from gateway.http.middleware.responses import send_json
from gateway.stages import timed
from policy import Principal

__all__ = ["PRINCIPAL_SCOPE_KEY", "BearerAuthMiddleware", "scope_principal"]

#: Where the authenticated Principal is put in the ASGI scope.
PRINCIPAL_SCOPE_KEY = "sandbox_gateway.principal"
#: The request path is the client's to choose: an audit line keeps this much of it.
_MAX_PATH_IN_AUDIT = 256


def scope_principal(scope: Mapping[str, Any]) -> Principal | None:
    """The principal `BearerAuthMiddleware` authenticated for this request, if any."""
    principal = scope.get(PRINCIPAL_SCOPE_KEY)
    return principal if isinstance(principal, Principal) else None


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
                with timed("auth"):
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
            await send_json(
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
            await send_json(
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
