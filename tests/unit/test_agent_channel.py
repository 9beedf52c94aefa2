"""The gateway's end of the agent protocol against a scripted peer: everything the agent sends is
untrusted, so a lying, flooding, silent or garbled agent must cost its sandbox, never the gateway."""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Callable, Iterator

import anyio
import pytest

from gateway.agent.protocol import ERR, EXIT, FAIL, HEADER, HELLO, MAX_PAYLOAD, OUT, PROTOCOL
from gateway.backend.agent_channel import AgentChannel
from gateway.backend.base import ExecOutcome, ExecRequest
from gateway.errors import AgentBroken, AgentCannotStart, AgentFailure
from tests.support import eventually_async

Script = Callable[[socket.socket, dict[str, object]], None]


def _docker_frame(stream: int, payload: bytes) -> bytes:
    """Docker's multiplexed stream header around a payload (what attach delivers)."""
    return struct.pack(">BxxxI", stream, len(payload)) + payload


def _agent_frame(kind: int, call_id: int, payload: bytes) -> bytes:
    return _docker_frame(1, HEADER.pack(kind, call_id, len(payload)) + payload)


def _exit(call_id: int, **body: object) -> bytes:
    return _agent_frame(EXIT, call_id, json.dumps({"exit_code": 0, "deadline_hit": False, **body}).encode())


class FakeAgent:
    """A peer on a socketpair that answers hello and then runs `script` for each request."""

    def __init__(self, script: Script, *, prelude: bytes = b"") -> None:
        self.ours, self.theirs = socket.socketpair()
        self.script = script
        self.prelude = prelude
        self.requests: list[dict[str, object]] = []
        threading.Thread(target=self._serve, daemon=True).start()

    async def connect(self) -> tuple[socket.socket, bytes, object]:
        return self.ours, b"", None

    def _serve(self) -> None:
        buffer = b""
        try:
            while True:
                data = self.theirs.recv(65536)
                if not data:
                    return
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if not line.strip():
                        continue
                    request = json.loads(line)
                    self.requests.append(request)
                    if request["op"] == "hello":
                        answer = f"{request['nonce']} {PROTOCOL}".encode()
                        self.theirs.sendall(self.prelude + _agent_frame(HELLO, 0, answer))
                    elif request["op"] == "run":
                        self.script(self.theirs, request)
        except OSError:
            return


def _request(timeout_s: float = 5, cap: int = 1024) -> ExecRequest:
    return ExecRequest(
        argv=["x"], user="", workdir="/", env=[], timeout_s=timeout_s, max_output_bytes=cap, grace_s=0.2
    )


def _run(channel: AgentChannel, request: ExecRequest) -> ExecOutcome:
    """One call, awaited on an event loop of its own (the channel's reader thread outlives it)."""
    return anyio.run(channel.run, request)


@pytest.fixture
def channel_for() -> Iterator[Callable[..., AgentChannel]]:
    made: list[tuple[AgentChannel, FakeAgent]] = []

    def make(script: Script, **kwargs: bytes) -> AgentChannel:
        agent = FakeAgent(script, **kwargs)
        channel = AgentChannel(agent.connect, container_id="fake")
        made.append((channel, agent))
        return channel

    yield make
    for channel, agent in made:
        channel.close()
        agent.ours.close()
        agent.theirs.close()


def test_output_and_exit_status_come_back(channel_for: Callable[..., AgentChannel]) -> None:
    def script(peer: socket.socket, request: dict[str, object]) -> None:
        call_id = int(str(request["id"]))
        peer.sendall(_agent_frame(OUT, call_id, b"hi\n") + _agent_frame(ERR, call_id, b"oops\n"))
        peer.sendall(_exit(call_id, exit_code=3, stdout_bytes=3, stderr_bytes=5))

    outcome = _run(channel_for(script), _request())
    assert (outcome.exit_code, outcome.stdout, outcome.stderr) == (3, b"hi\n", b"oops\n")
    assert not outcome.truncated and not outcome.sandbox_lost


def test_leftovers_of_an_earlier_connection_before_hello_are_skipped(
    channel_for: Callable[..., AgentChannel],
) -> None:
    def script(peer: socket.socket, request: dict[str, object]) -> None:
        peer.sendall(_exit(int(str(request["id"]))))

    # An agent frame cut short when the earlier connection dropped (attach always starts a new
    # Docker frame, but the agent's own frame may continue from before).
    stale = _docker_frame(1, HEADER.pack(OUT, 7, 100) + b"from before")
    assert _run(channel_for(script, prelude=stale), _request()).exit_code == 0


def test_frames_for_unknown_calls_are_ignored(channel_for: Callable[..., AgentChannel]) -> None:
    def script(peer: socket.socket, request: dict[str, object]) -> None:
        call_id = int(str(request["id"]))
        peer.sendall(_agent_frame(OUT, call_id + 1000, b"not yours") + _agent_frame(OUT, call_id, b"yours"))
        peer.sendall(_exit(call_id))

    assert _run(channel_for(script), _request()).stdout == b"yours"


def test_a_flooding_agent_is_capped_by_the_gateway(channel_for: Callable[..., AgentChannel]) -> None:
    def script(peer: socket.socket, request: dict[str, object]) -> None:
        call_id = int(str(request["id"]))
        for _ in range(64):
            peer.sendall(_agent_frame(OUT, call_id, b"a" * 4096))
        peer.sendall(_exit(call_id, stdout_bytes=-5))  # a lie about the count is not believed

    outcome = _run(channel_for(script), _request(cap=1000))
    assert len(outcome.stdout) == 1000 and outcome.truncated and outcome.stdout_bytes == 64 * 4096


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(HEADER.pack(OUT, 1, MAX_PAYLOAD + 1), id="oversized-frame"),
        pytest.param(HEADER.pack(99, 1, 1) + b"x", id="unknown-kind"),
    ],
)
def test_a_protocol_breach_breaks_the_channel_and_loses_the_call(
    channel_for: Callable[..., AgentChannel], garbage: bytes
) -> None:
    def script(peer: socket.socket, request: dict[str, object]) -> None:
        peer.sendall(_docker_frame(1, garbage))

    channel = channel_for(script)
    outcome = _run(channel, _request())
    assert outcome.sandbox_lost and outcome.exit_code is None
    assert not channel.connected and "broke the protocol" in channel.broken_reason


@pytest.mark.parametrize(
    "body",
    [b"not json", b'{"exit_code": "0"}', b'{"exit_code": 999}', b'{"exit_code": true}', b"[1]"],
)
def test_a_malformed_result_is_refused(channel_for: Callable[..., AgentChannel], body: bytes) -> None:
    def script(peer: socket.socket, request: dict[str, object]) -> None:
        peer.sendall(_agent_frame(EXIT, int(str(request["id"])), body))

    with pytest.raises(AgentBroken, match="malformed result"):
        _run(channel_for(script), _request())


def test_a_silent_agent_meets_the_gateways_deadline(channel_for: Callable[..., AgentChannel]) -> None:
    outcome = _run(channel_for(lambda peer, request: None), _request(timeout_s=0.1))
    assert outcome.deadline_hit and outcome.exit_code is None


def _refusing(error: str, message: str) -> Script:
    def script(peer: socket.socket, request: dict[str, object]) -> None:
        body = json.dumps({"error": error, "message": message})
        peer.sendall(_agent_frame(FAIL, int(str(request["id"])), body.encode()))

    return script


def test_a_refusal_is_a_clear_error(channel_for: Callable[..., AgentChannel]) -> None:
    with pytest.raises(AgentFailure, match="No such file") as info:
        _run(channel_for(_refusing("spawn-failed", "could not start: No such file or directory")), _request())
    assert info.value.code == "sandbox-agent-refused"


def test_a_command_the_sandbox_has_no_resources_to_start_says_the_sandbox_is_exhausted(
    channel_for: Callable[..., AgentChannel],
) -> None:
    """The broker replaces a sandbox on this code (tests/integration/test_execution.py)."""
    script = _refusing("no-resources", "could not start: Resource temporarily unavailable")
    with pytest.raises(AgentCannotStart, match="temporarily unavailable") as info:
        _run(channel_for(script), _request())
    assert info.value.code == "sandbox-exhausted"


def test_an_agent_that_never_answers_hello_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.backend.agent_calls as module

    monkeypatch.setattr(module, "HELLO_TIMEOUT_S", 0.2)
    ours, theirs = socket.socketpair()

    async def connect() -> tuple[socket.socket, bytes, object]:
        return ours, b"", None

    channel = AgentChannel(connect)
    with pytest.raises(AgentBroken, match="did not answer"):
        anyio.run(channel.open)
    theirs.close()
    assert ours.fileno() == -1, "the unanswered connection is closed"


def test_calls_waiting_on_the_agent_hold_no_thread(channel_for: Callable[..., AgentChannel]) -> None:
    """Fifty calls in flight on one channel wait on the event loop, not on a thread each."""
    asked: list[int] = []
    peers: list[socket.socket] = []

    def script(peer: socket.socket, request: dict[str, object]) -> None:
        asked.append(int(str(request["id"])))
        peers[:] = [peer]

    channel = channel_for(script)
    added: list[int] = []

    async def main() -> list[ExecOutcome]:
        await channel.open()
        before = threading.active_count()
        outcomes: list[ExecOutcome] = []

        async def one() -> None:
            outcomes.append(await channel.run(_request()))

        async with anyio.create_task_group() as tasks:
            for _ in range(50):
                tasks.start_soon(one)
            await eventually_async(lambda: len(asked) >= 50, timeout_s=5, interval_s=0.01)
            added.append(threading.active_count() - before)
            peers[0].sendall(b"".join(_exit(call_id) for call_id in asked))
        return outcomes

    outcomes = anyio.run(main)
    assert [o.exit_code for o in outcomes] == [0] * 50
    assert added[0] <= 2, f"{added[0]} threads more while 50 calls wait (at most an idle sender's)"


def test_an_agent_that_stops_reading_breaks_its_own_channel(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request the agent does not take within the send timeout breaks the channel; nothing waits on."""
    import gateway.backend.agent_channel as module

    monkeypatch.setattr(module, "_SEND_TIMEOUT_S", 0.3)
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

    def hello_then_deaf() -> None:
        line = b""
        while b"\n" not in line.lstrip(b"\n"):
            line += theirs.recv(4096)
        request = json.loads(line.strip().split(b"\n")[0])
        theirs.sendall(_agent_frame(HELLO, 0, f"{request['nonce']} {PROTOCOL}".encode()))

    threading.Thread(target=hello_then_deaf, daemon=True).start()

    async def connect() -> tuple[socket.socket, bytes, object]:
        return ours, b"", None

    channel = AgentChannel(connect)
    big = ExecRequest(argv=["x" * 4_000_000], user="", workdir="/", env=[], timeout_s=5, max_output_bytes=10)
    with pytest.raises(AgentBroken, match="stopped taking requests"):
        anyio.run(channel.run, big)
    assert not channel.connected
    theirs.close()
