"""Which stateless-era MCP requests are answered as plain JSON: those without a progress token."""

from __future__ import annotations

import json

import anyio
import pytest
from starlette.types import Message

from gateway.http.response_mode import accepts_both, asks_for_progress, read_body


def call(meta: object = None) -> bytes:
    params: dict[str, object] = {"name": "execute_bash", "arguments": {"command": "true"}}
    if meta is not None:
        params["_meta"] = meta
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}).encode()


@pytest.mark.parametrize(
    ("body", "asks"),
    [
        (call(), False),
        (call({}), False),
        (call({"progressToken": "p-1"}), True),
        (call({"progressToken": 7}), True),
        (call({"progressToken": True}), False),  # a bool is no token, as the SDK reads it
        (call({"progressToken": None}), False),
        (call({"progressToken": [1]}), False),
        (call({"progresstoken": "p"}), False),  # the SDK matches the key exactly
        (b"not json", False),
        (b"[1, 2]", False),
        (b'{"params": "x"}', False),
        (b"[" * 100_000, False),
    ],
)
def test_only_a_progress_token_the_sdk_would_honour_asks_for_a_stream(body: bytes, asks: bool) -> None:
    assert asks_for_progress(body) is asks


@pytest.mark.parametrize(
    ("accept", "both"),
    [
        (b"application/json, text/event-stream", True),
        (b"text/event-stream;q=0.9, application/json", True),
        (b"*/*", True),
        (b"application/*, text/*", True),
        (b"application/json", False),
        (b"text/event-stream", False),
        (b"", False),
    ],
)
def test_json_is_chosen_only_for_clients_that_accept_both(accept: bytes, both: bool) -> None:
    assert accepts_both({"headers": [(b"accept", accept)]}) is both


def test_accept_headers_sent_twice_are_read_together() -> None:
    headers = [(b"accept", b"application/json"), (b"accept", b"text/event-stream")]
    assert accepts_both({"headers": headers}) is True


def test_the_body_is_read_whole_and_handed_over_again_then_the_stream_continues() -> None:
    messages: list[Message] = [
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.request", "body": b"cd", "more_body": False},
        {"type": "http.disconnect"},
    ]

    async def receive() -> Message:
        return messages.pop(0)

    async def main() -> None:
        body, replay = await read_body(receive)
        assert body == b"abcd"
        assert await replay() == {"type": "http.request", "body": b"abcd", "more_body": False}
        assert await replay() == {"type": "http.disconnect"}

    anyio.run(main)


def test_a_disconnect_before_the_body_is_passed_on() -> None:
    messages: list[Message] = [{"type": "http.disconnect"}]

    async def receive() -> Message:
        return messages.pop(0)

    async def main() -> None:
        body, replay = await read_body(receive)
        assert body == b""
        assert await replay() == {"type": "http.disconnect"}

    anyio.run(main)
