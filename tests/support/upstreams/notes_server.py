"""A notes service over streamable HTTP, for the upstream-client tests.

/mcp requires a bearer token: `NOTES_TOKEN` from its environment, or one it issued itself at /token
(an OAuth 2 client credentials grant for `NOTES_CLIENT_ID` / `NOTES_CLIENT_SECRET`, basic or post,
tokens living `NOTES_TOKEN_TTL` seconds). For the tests: POST /admin/revoke forgets the issued
tokens, GET /admin/stats counts the token requests.

Run it as `python notes_server.py --port PORT` (secrets come from the environment, never argv).
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import time
from typing import Any

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

NOTES = {
    "n1": ("Groceries", "milk, eggs, bread"),
    "n2": ("Meeting notes", "discuss the gateway's code mode"),
    "n3": ("Gateway ideas", "upstream tools in the sandbox"),
}
#: Shaped like an AWS access key id, so that a policy can be tested on what a tool returns.
FAKE_AWS_KEY = "AKIA" + "ABCDEFGHIJKLMNOP"


class NoteRef(BaseModel):
    id: str
    title: str


class Note(BaseModel):
    id: str
    title: str
    body: str


class Tokens:
    """The bearer tokens /mcp accepts: the static one, and those /token issued (until they expire)."""

    def __init__(self, static: str, ttl_s: float) -> None:
        self.static, self.ttl_s = static, ttl_s
        self.issued: dict[str, float] = {}
        self.requests = 0

    def accepts(self, token: str) -> bool:
        if secrets.compare_digest(token, self.static):
            return True
        expires = self.issued.get(token)
        return expires is not None and time.monotonic() < expires

    def issue(self) -> str:
        token = secrets.token_urlsafe(24)
        self.issued[token] = time.monotonic() + self.ttl_s
        return token


def _client_of(request: Request, form: dict[str, str]) -> tuple[str, str]:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("basic "):
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return user, password
    return form.get("client_id", ""), form.get("client_secret", "")


def token_routes(tokens: Tokens) -> list[Route]:
    client_id = os.environ.get("NOTES_CLIENT_ID", "")
    client_secret = os.environ.get("NOTES_CLIENT_SECRET", "")

    async def token(request: Request) -> Response:
        tokens.requests += 1
        form = {key: str(value) for key, value in (await request.form()).items()}
        given_id, given_secret = _client_of(request, form)
        if form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        if not client_secret or (given_id, given_secret) != (client_id, client_secret):
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        body = {"access_token": tokens.issue(), "token_type": "Bearer", "expires_in": tokens.ttl_s}
        return JSONResponse(body)

    async def revoke(request: Request) -> Response:
        tokens.issued.clear()
        return JSONResponse({"revoked": True})

    async def stats(request: Request) -> Response:
        return JSONResponse({"token_requests": tokens.requests})

    return [
        Route("/token", token, methods=["POST"]),
        Route("/admin/revoke", revoke, methods=["POST"]),
        Route("/admin/stats", stats, methods=["GET"]),
    ]


def build_server() -> MCPServer[Any]:
    mcp: MCPServer[Any] = MCPServer("notes", version="1.0")

    @mcp.tool()
    def search_notes(query: str, limit: int = 5) -> list[NoteRef]:
        """Search notes by words in their title or body.

        Matching is case-insensitive; at most `limit` notes come back.
        """
        words = query.lower().split()
        found = [
            NoteRef(id=key, title=title)
            for key, (title, body) in NOTES.items()
            if all(word in f"{title} {body}".lower() for word in words)
        ]
        return found[:limit]

    @mcp.tool()
    def read_note(id: str) -> Note:
        """Read one note: its title and body."""
        if id not in NOTES:
            raise ToolError(f"no note {id!r}")
        title, body = NOTES[id]
        return Note(id=id, title=title, body=body)

    @mcp.tool()
    async def slow(seconds: float) -> str:
        """Sleep, then say how long (for timeouts)."""
        await anyio.sleep(seconds)
        return f"slept {seconds}"

    @mcp.tool()
    def leak_secret() -> str:
        """Return text with something shaped like an AWS access key in it."""
        return f"the deploy key is {FAKE_AWS_KEY}, keep it safe"

    @mcp.tool()
    def fail() -> str:
        """Always fail, as a tool error result."""
        raise ToolError("this tool always fails")

    @mcp.tool()
    async def add_tool(name: str, ctx: Context) -> str:
        """Add a tool that echoes its input, and tell listeners the tool list changed."""

        def echo(text: str) -> str:
            return text

        mcp.add_tool(echo, name=name, description=f"Echo, added at run time as {name}.")
        await ctx.notify_tools_changed()
        return f"added {name}"

    return mcp


class BearerOnly:
    """Refuses (401) every request to /mcp without `Authorization: Bearer <accepted token>`."""

    def __init__(self, app: ASGIApp, tokens: Tokens) -> None:
        self.app, self.tokens = app, tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/mcp"):
            headers = dict(scope["headers"])
            given = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not self.tokens.accepts(token):
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")
                ]})  # fmt: skip
                await send({"type": "http.response.body", "body": b'{"error": "invalid_token"}'})
                return
        await self.app(scope, receive, send)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    tokens = Tokens(os.environ["NOTES_TOKEN"], float(os.environ.get("NOTES_TOKEN_TTL", "3600")))
    app = build_server().streamable_http_app()
    app.router.routes.extend(token_routes(tokens))
    uvicorn.run(
        BearerOnly(app, tokens),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        timeout_graceful_shutdown=1,
    )


if __name__ == "__main__":
    main()
