"""MCP sessions, bounded per principal.

The SDK's session manager keeps up to `max_sessions` stateful sessions for the whole server,
whoever opened them. Here each principal may hold at most `per_principal` of them; one more is
refused with a JSON-RPC error that says why and what to do (429, `budget.refused` with
`limits.limit` `sessions`), and the principal's other sessions, and everyone else's, are untouched.
A session no request has used for `idle_timeout_s` is closed (its id then answers 404).

What one session holds is bounded too: it keeps no event store (nothing is replayed, so nothing is
buffered for a client that went away), its streams have fixed buffers, and at most
`requests_per_session` requests are in flight on it at once (each body below the gateway's body
cap); one more is refused with 429 (`limits.limit` `session-requests`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mcp.server._streamable_http_modern import handle_modern_request
from mcp.server.auth.middleware.bearer_auth import AuthorizationContext
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER, StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp_types import INVALID_REQUEST, ErrorData, JSONRPCError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from gateway.calls.budgets import budget_instruments
from gateway.errors import SessionLimitReached
from gateway.http.response_mode import accepts_both, asks_for_progress, read_body, until_disconnect

__all__ = ["GatewaySessionManager", "SessionTable"]

#: Called with the request's scope, the budget that was spent ("sessions", "session-requests") and its cap.
OnRefused = Callable[[Scope, str, int], None]
_SESSION_HEADER = MCP_SESSION_ID_HEADER.lower().encode("latin-1")
_VERSION_HEADER = MCP_PROTOCOL_VERSION_HEADER.lower().encode("latin-1")


class SessionTable:
    """Open sessions per owner (`tenant/principal`) and requests in flight per session. Pure
    bookkeeping; the session manager calls it on the event loop."""

    def __init__(self, per_owner: int, requests_per_session: int) -> None:
        if per_owner < 1 or requests_per_session < 1:
            raise ValueError("session caps must be at least 1")
        self.per_owner = per_owner
        self.requests_per_session = requests_per_session
        self._owner_of: dict[str, str] = {}
        self._count: dict[str, int] = {}
        self._in_flight: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._owner_of)

    def held_by(self, owner: str) -> int:
        return self._count.get(owner, 0)

    def can_open(self, owner: str) -> bool:
        return self.held_by(owner) < self.per_owner

    def open(self, owner: str, session_id: str) -> bool:
        """Record a new session of `owner`; False (and nothing recorded) at the owner's cap."""
        if session_id in self._owner_of or not self.can_open(owner):
            return False
        self._owner_of[session_id] = owner
        self._count[owner] = self.held_by(owner) + 1
        return True

    def close(self, session_id: str) -> str | None:
        """Forget a session (as often as it is called); its owner the first time, else None."""
        owner = self._owner_of.pop(session_id, None)
        if owner is None:
            return None
        self._in_flight.pop(session_id, None)
        left = self._count[owner] - 1
        if left:
            self._count[owner] = left
        else:
            del self._count[owner]
        return owner

    def enter(self, session_id: str) -> bool | None:
        """One more request on a session: True when counted, False at the session's cap, None
        when the session is unknown (the manager answers that one with 404)."""
        if session_id not in self._owner_of:
            return None
        running = self._in_flight.get(session_id, 0)
        if running >= self.requests_per_session:
            return False
        self._in_flight[session_id] = running + 1
        return True

    def leave(self, session_id: str) -> None:
        running = self._in_flight.get(session_id, 0) - 1
        if running > 0:
            self._in_flight[session_id] = running
        else:
            self._in_flight.pop(session_id, None)


def _refusal(message: str) -> Response:
    body = JSONRPCError(jsonrpc="2.0", id=None, error=ErrorData(code=INVALID_REQUEST, message=message))
    return Response(
        body.model_dump_json(by_alias=True, exclude_unset=True),
        status_code=429,
        media_type="application/json",
    )


class GatewaySessionManager(StreamableHTTPSessionManager):
    """The SDK's session manager with the per-principal bounds of `table` (see the module).

    It hooks the SDK's `_admit_session` (called under its creation lock, so the cap cannot be
    raced past) and `_discard_session` (called however a session ends: DELETE, idle expiry, a
    failed opening request); the SDK offers no public hook for either. tests/e2e/test_budgets.py
    pins the behaviour, so an SDK release that changes them fails there, not in production."""

    def __init__(self, app: Any, *, table: SessionTable, on_refused: OnRefused, **settings: Any) -> None:
        super().__init__(app, **settings)
        self.table = table
        self.on_refused = on_refused
        self._open = budget_instruments().sessions
        # What serves /mcp. The gateway's own body cap is in front (BodyLimitMiddleware), so the
        # SDK's second one, which buffers every body once more, is left out.
        self.asgi_app = self._bounded  # type: ignore[assignment]

    def _admit_session(self, requestor: AuthorizationContext | None) -> StreamableHTTPServerTransport | None:
        # Runs under the manager's session-creation lock: check and record are one step.
        owner = requestor["client_id"] if requestor is not None else ""
        if not self.table.can_open(owner):
            raise SessionLimitReached(f"{owner} holds as many MCP sessions as it may")
        transport = super()._admit_session(requestor)
        if transport is not None and transport.mcp_session_id is not None:
            self.table.open(owner, transport.mcp_session_id)
            self._open.add(1)
        return transport

    async def _discard_session(self, session_id: str, transport: StreamableHTTPServerTransport) -> None:
        if self.table.close(session_id) is not None:
            self._open.add(-1)
        await super()._discard_session(session_id, transport)

    async def _handle_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A stateless-era POST is answered as JSON unless it asks for progress (see
        gateway/http/response_mode.py); handshake-era sessions keep the SDK's own choice."""
        version = next((v for k, v in scope.get("headers", []) if k == _VERSION_HEADER), None)
        if (
            self.json_response
            or version is None
            or version.decode("latin-1") in HANDSHAKE_PROTOCOL_VERSIONS
            or scope.get("method") != "POST"
            or not accepts_both(scope)
        ):
            await super()._handle_request(scope, receive, send)
            return
        body, replay = await read_body(receive)
        as_json = not asks_for_progress(body)

        async def answer(receive: Receive) -> None:
            settings, state = self.security_settings, self._lifespan_state
            await handle_modern_request(self.app, settings, as_json, state, scope, receive, send)

        if as_json:  # the SDK's stream path watches for the client going away; this one must too
            await until_disconnect(answer, body, replay)
        else:
            await answer(replay)

    async def _bounded(self, scope: Scope, receive: Receive, send: Send) -> None:
        header = next((v for k, v in scope.get("headers", []) if k == _SESSION_HEADER), None)
        if header is None:
            try:
                await self._handle_request(scope, receive, send)
            except SessionLimitReached:
                self.on_refused(scope, "sessions", self.table.per_owner)
                idle = f"{self.session_idle_timeout:g} s" if self.session_idle_timeout else "its end"
                message = (
                    f"session-limit: this principal already holds {self.table.per_owner} open MCP sessions, "
                    f"the most it may; end one (HTTP DELETE with its Mcp-Session-Id) or wait until one has "
                    f"been idle for {idle}"
                )
                await _refusal(message)(scope, receive, send)
            return
        session_id = header.decode("latin-1")
        entered = self.table.enter(session_id)
        if entered is False:
            cap = self.table.requests_per_session
            self.on_refused(scope, "session-requests", cap)
            message = (
                f"session-busy: {cap} requests are already in flight on this session; retry when one ends"
            )
            await _refusal(message)(scope, receive, send)
            return
        left = False

        def leave() -> None:
            nonlocal left
            if entered and not left:
                left = True
                self.table.leave(session_id)

        async def send_then_leave(message: Message) -> None:
            # The request stops counting when its response's last byte is handed over, not when the
            # handler returns: a client may send its next request in between.
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                leave()

        try:
            await self._handle_request(scope, receive, send_then_leave)
        finally:
            leave()
