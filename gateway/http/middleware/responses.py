"""The JSON error responses the middleware sends itself, without calling the app."""

from __future__ import annotations

import json

from starlette.types import Send

__all__ = ["send_json", "send_too_many"]


async def send_json(
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


async def send_too_many(send: Send, retry_after: float, what: str) -> None:
    """429 with Retry-After (whole seconds)."""
    await send_json(
        send,
        429,
        {"error": "rate_limited", "error_description": f"{what}; retry after {retry_after:.0f} s"},
        [(b"retry-after", str(int(retry_after)).encode())],
    )
