"""The console's MCP client: one person's calls to the gateway, with their bearer token, and the ways
a call can fail mapped to a `Problem` a person can act on.

Each call opens its own MCP session over streamable HTTP and closes it afterwards, so nothing is kept
between page events but the token (in the person's Gradio session state).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

__all__ = [
    "GatewayClient",
    "OutputStream",
    "Problem",
    "normalize_token",
    "problem_from_exception",
    "problem_from_tool_error",
]

#: progress(bytes of output so far, latest output)
OnOutput = Callable[[str], Awaitable[None]]

_TOOL_ERROR_PREFIX = re.compile(r"^Error executing tool [\w.-]+: ")
_CODE = re.compile(r"^([a-z][a-z0-9-]*[a-z0-9]): ?(.*)$", re.DOTALL)
_BEARER = re.compile(r"^bearer(\s+|$)", re.IGNORECASE)
_RETRY_IN = re.compile(r"retry in (\d+(?:\.\d+)?) ?s\b")
#: Longest token accepted from the sign-in box (gateway tokens and JWTs are far shorter).
MAX_TOKEN_CHARS = 8192


class Problem(Exception):
    """Why a call did not give a result: `kind` is what the person can do about it, `code` the
    gateway's stable refusal code (or the console's own for transport failures)."""

    #: unreachable | unauthorized | rate-limited | refused | failed
    kind: str
    code: str
    message: str
    retry_after_s: float | None

    def __init__(self, kind: str, code: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.kind, self.code, self.message, self.retry_after_s = kind, code, message, retry_after_s


def normalize_token(raw: str | None) -> str:
    """The token from the sign-in box, without surrounding blanks or a pasted `Bearer ` prefix;
    ValueError when it is empty or cannot be a header value."""
    token = _BEARER.sub("", (raw or "").strip(), count=1)
    if not token:
        raise ValueError("enter your gateway token")
    if len(token) > MAX_TOKEN_CHARS or any(c.isspace() or not c.isprintable() for c in token):
        raise ValueError("that does not look like a token (it has spaces or control characters)")
    return token


def problem_from_tool_error(text: str) -> Problem:
    """A tool error's text (`code: message`, as the gateway words refusals) as a Problem."""
    text = _TOOL_ERROR_PREFIX.sub("", text.strip(), count=1)
    match = _CODE.match(text)
    code, message = (match.group(1), match.group(2)) if match else ("tool-error", text)
    if code == "rate-limited":
        retry = _RETRY_IN.search(message)
        return Problem("rate-limited", code, message, float(retry.group(1)) if retry else None)
    return Problem("refused", code, message)


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


@dataclass
class _Responses:
    """The last error status the gateway answered with (the MCP client reports only a JSON-RPC error)."""

    status: int | None = None
    retry_after_s: float | None = None

    async def hook(self, response: httpx2.Response) -> None:
        if response.status_code >= 400:
            self.status = response.status_code
            retry = response.headers.get("retry-after")
            try:
                self.retry_after_s = float(retry) if retry is not None else None
            except ValueError:
                self.retry_after_s = None


def problem_from_exception(  # noqa: PLR0911 - one return per kind of failure
    exc: BaseException, status: int | None = None, retry_after_s: float | None = None
) -> Problem:
    """A failed connection or session as a Problem; `status` is the gateway's last HTTP error status."""
    if status == 401:
        return Problem(
            "unauthorized",
            "token-rejected",
            "the gateway rejected this token (401): it is wrong, expired "
            "or revoked. Sign in again with a valid one.",
        )
    if status == 403:
        return Problem("unauthorized", "forbidden", "the gateway refused this token (403)")
    if status == 429:
        when = f"; retry in {retry_after_s:.0f} s" if retry_after_s is not None else "; retry shortly"
        return Problem(
            "rate-limited",
            "rate-limited",
            f"the gateway is limiting your requests (429){when}",
            retry_after_s,
        )
    for leaf in _leaves(exc):
        if isinstance(leaf, httpx2.ConnectError | httpx2.ConnectTimeout):
            return Problem(
                "unreachable",
                "gateway-unreachable",
                "the gateway does not answer at its configured address; try again in a moment",
            )
        if isinstance(leaf, httpx2.TimeoutException):
            return Problem("unreachable", "gateway-timeout", "the gateway did not answer in time")
        if isinstance(leaf, httpx2.TransportError):
            return Problem(
                "unreachable",
                "gateway-unreachable",
                f"the connection to the gateway failed ({type(leaf).__name__})",
            )
        if isinstance(leaf, MCPError):
            if status is not None:
                return Problem("failed", f"http-{status}", f"the gateway answered {status}: {leaf}")
            return Problem("failed", "mcp-error", str(leaf))
    if status is not None:
        return Problem("failed", f"http-{status}", f"the gateway answered {status}")
    return Problem("failed", "client-error", f"the call failed ({type(exc).__name__})")


@dataclass
class OutputStream:
    """Turns the gateway's progress notes (bytes of output so far, the latest output's tail) into the
    new text since the previous note, so the page can append it."""

    seen: int = 0
    text: str = ""
    _parts: list[str] = field(default_factory=list)

    def feed(self, progress: float, message: str | None) -> str:
        total = int(progress)
        new = total - self.seen
        if new <= 0 or not message:
            return ""
        tail = message.encode()
        if new > len(tail):
            chunk = f"[... {new - len(tail)} bytes not shown ...]\n{message}"
        else:
            chunk = tail[len(tail) - new :].decode(errors="replace")
        self.seen = total
        self.text += chunk
        return chunk


class GatewayClient:
    """One person's calls to the gateway at `url` with `token`. The token is never part of its repr."""

    def __init__(self, url: str, token: str, *, timeout_s: float = 30.0) -> None:
        self.url = url
        self._token = normalize_token(token)
        self._timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"GatewayClient({self.url!r}, token=<hidden>)"

    async def call(
        self, tool: str, arguments: dict[str, Any] | None = None, on_output: OnOutput | None = None
    ) -> dict[str, Any]:
        """The tool's structured result; a Problem when it is refused or cannot be reached."""
        seen = _Responses()
        http = httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {self._token}"},
            timeout=httpx2.Timeout(self._timeout_s, read=900.0),
            event_hooks={"response": [seen.hook]},
            # The token goes to the configured gateway only, never to a proxy named by the environment.
            trust_env=False,
        )
        stream = OutputStream()

        async def relay(progress: float, total: float | None, message: str | None) -> None:
            chunk = stream.feed(progress, message)
            if chunk and on_output is not None:
                await on_output(chunk)

        try:
            async with http, Client(streamable_http_client(self.url, http_client=http)) as client:
                result = await client.call_tool(
                    tool, arguments or {}, progress_callback=relay if on_output else None
                )
        except Exception as exc:  # noqa: BLE001 - every failure becomes a Problem the page can show
            raise problem_from_exception(exc, seen.status, seen.retry_after_s) from None
        if result.is_error:
            text = " ".join(getattr(part, "text", "") for part in result.content).strip()
            raise problem_from_tool_error(text or "the gateway refused the call")
        if result.structured_content is None:
            raise Problem("failed", "no-result", f"{tool} returned no structured result")
        return dict(result.structured_content)
