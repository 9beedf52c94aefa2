"""The sandbox agent's request handling and process handling (gateway/agent/).

Safety first: the agent's `reap` sends SIGKILL to every process its uid may signal (`kill(-1)`);
run as root on a host, that is every process of the machine. So no agent runs here as root, and
none runs in the test process:
- its pure parts (framing, request parsing, limits, capping, the TERM/KILL clock) are called
  directly, with os.kill and os.killpg replaced by recorders wherever a signal could be sent;
- whole agents run as the sandbox image starts them (`python3 -I -S .../agent.py`, from the files
  the image recipe installs), in a child that Popen first drops to a uid of its own, used by nothing
  else on the machine: real, effective and saved uid and gid, no supplementary groups, no
  capabilities, all checked before the agent is even read. Without root to drop from, those tests
  are skipped.
"""

from __future__ import annotations

import json
import os
import select
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.agent import processes, sandbox_agent
from gateway.agent.processes import (
    AFTER_DEADLINE_S,
    OOM_RETRY_EVERY_S,
    OOM_RETRY_S,
    Run,
    exit_code,
    killpg,
    parse_run,
)
from gateway.agent.protocol import (
    ERR,
    EXIT,
    FAIL,
    HEADER,
    HELLO,
    MAX_PAYLOAD,
    OUT,
    PROTOCOL,
    Requests,
    Writer,
)
from tests.support.live_agent import LiveAgent, dead, interpreter, launcher, live

__all__ = ["interpreter", "launcher", "live"]  # module fixtures, used by name


# -- pure parts: framing and requests ------------------------------------------------------------


def _read_frames(fd: int, writer: Writer, count: int) -> list[tuple[int, int, bytes]]:
    """`count` frames from the read end of a pipe, flushing the writer as the pipe drains."""
    data = b""
    frames: list[tuple[int, int, bytes]] = []
    while len(frames) < count:
        writer.flush()
        data += os.read(fd, 1 << 20)
        while len(data) >= HEADER.size:
            kind, request_id, length = HEADER.unpack_from(data)
            if len(data) < HEADER.size + length:
                break
            frames.append((kind, request_id, data[HEADER.size : HEADER.size + length]))
            data = data[HEADER.size + length :]
    assert data == b"" and not writer.pending
    return frames


def test_frames_carry_kind_id_and_at_most_max_payload_each() -> None:
    read_end, write_end = os.pipe()
    try:
        writer = Writer(write_end)
        payload = os.urandom(3 * MAX_PAYLOAD + 100)
        writer.send(OUT, 7, payload)  # more than the pipe holds: the rest waits in the queue
        assert writer.pending, "the writer queues what stdout cannot take, without blocking"
        writer.send(ERR, 2**32 - 1, b"")
        writer.send_json(EXIT, 7, {"exit_code": 0, "deadline_hit": False})
        frames = _read_frames(read_end, writer, 6)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert [(kind, rid, len(body)) for kind, rid, body in frames[:5]] == [
        (OUT, 7, MAX_PAYLOAD),
        (OUT, 7, MAX_PAYLOAD),
        (OUT, 7, MAX_PAYLOAD),
        (OUT, 7, 100),
        (ERR, 2**32 - 1, 0),
    ]
    assert b"".join(body for _, _, body in frames[:4]) == payload
    assert frames[5] == (EXIT, 7, b'{"exit_code":0,"deadline_hit":false}')


def test_a_writer_whose_reader_is_gone_drops_its_queue() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        writer = Writer(write_end)
        writer.send(OUT, 1, b"nobody reads this")
        assert not writer.pending
    finally:
        os.close(write_end)


def test_requests_are_json_objects_one_per_line() -> None:
    requests = Requests()
    assert requests.feed(b'{"op": "hello", "nonce": "a"}\n{"op": "ru') == [{"op": "hello", "nonce": "a"}]
    assert requests.feed(b'n", "id": 1}\n') == [{"op": "run", "id": 1}]
    noise = b'\n  \n[1, 2]\n"text"\n42\nnot json\n\xff\xfe\n{"half": \n{"op": "kill", "id": 2}\n'
    assert requests.feed(noise) == [{"op": "kill", "id": 2}]
    assert requests.feed(b"") == [] and not requests.buffer


def test_an_over_long_request_is_skipped_up_to_its_newline() -> None:
    requests = Requests(limit=100)
    assert requests.feed(b'{"op": "hello", "pad": "' + b"x" * 150) == []
    assert not requests.buffer, "the agent does not keep an over-long line"
    assert requests.feed(b'", "lost": true}\n{"op": "hello", "kept": true}\n') == [
        {"op": "hello", "kept": True}
    ]
    assert requests.feed(b'{"op": "hello", "pad": "' + b"y" * 60 + b'"}\n') != [], "within the limit"


# -- pure parts: run requests, limits, capping, exit codes ---------------------------------------


def test_a_run_request_gives_argv_env_cwd_and_its_clock() -> None:
    before = time.monotonic()
    run, argv, env, cwd = parse_run(
        9,
        {
            "argv": ["python3", 3],
            "env": ["A=1", "B=x=y", "EMPTY=", "BARE"],
            "cwd": "/workspace",
            "deadline_s": 12.5,
            "max_output": 4096,
            "timeout_s": 10,
            "kill_after_s": 2,
        },
    )
    after = time.monotonic()
    assert (argv, cwd) == (["python3", "3"], "/workspace")
    assert env == {"A": "1", "B": "x=y", "EMPTY": "", "BARE": ""}
    assert (run.request_id, run.cap, run.pid, run.status) == (9, 4096, 0, None)
    assert before + 12.5 <= run.deadline <= after + 12.5
    assert run.term_at is not None and run.kill_at is not None
    assert before + 10 <= run.term_at <= after + 10 and run.kill_at == run.term_at + 2


def test_a_run_without_timeout_has_only_its_deadline() -> None:
    run, _, env, cwd = parse_run(1, {"argv": ["true"], "deadline_s": 1, "max_output": 0})
    assert (run.term_at, run.kill_at, env, cwd) == (None, None, {}, "/")
    run, *_ = parse_run(1, {"argv": ["true"], "deadline_s": 1, "max_output": 0, "timeout_s": 3})
    assert run.kill_at == run.term_at, "no kill_after: KILL follows TERM at once"


@pytest.mark.parametrize(
    ("request_body", "error"),
    [
        ({"deadline_s": 1, "max_output": 1}, KeyError),
        ({"argv": [], "deadline_s": 1, "max_output": 1}, ValueError),
        ({"argv": None, "deadline_s": 1, "max_output": 1}, TypeError),
        ({"argv": ["x"], "max_output": 1}, KeyError),
        ({"argv": ["x"], "deadline_s": "soon", "max_output": 1}, ValueError),
        ({"argv": ["x"], "deadline_s": 1, "max_output": None}, TypeError),
        ({"argv": ["x"], "deadline_s": 1, "max_output": 1, "timeout_s": "later"}, ValueError),
        ({"argv": ["x"], "env": 5, "deadline_s": 1, "max_output": 1}, TypeError),
    ],
)
def test_malformed_run_requests_raise_what_the_agent_refuses(
    request_body: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        parse_run(1, request_body)


def test_output_beyond_the_cap_is_counted_not_kept() -> None:
    run = Run(1, deadline=0, cap=10)
    assert run.keep(OUT, b"123456") == b"123456"
    assert run.keep(OUT, b"789abc") == b"789a"
    assert run.keep(OUT, b"more") == b""
    assert run.keep(ERR, b"e" * 20) == b"e" * 10, "each stream has its own cap"
    assert run.totals == {OUT: 16, ERR: 20}
    assert Run(1, deadline=0, cap=0).keep(OUT, b"x") == b""


@pytest.mark.parametrize(
    ("status", "code"),
    [(None, None), (0, 0), (3 << 8, 3), (255 << 8, 255), (signal.SIGKILL, 137), (signal.SIGTERM, 143)],
)
def test_wait_statuses_become_shell_exit_codes(status: int | None, code: int | None) -> None:
    assert exit_code(status) == code


@dataclass
class Signals:
    """What would have been sent, instead of sending it."""

    sent: list[tuple[str, int, int]] = field(default_factory=list)

    def kill(self, pid: int, sig: int) -> None:
        self.sent.append(("kill", pid, sig))

    def killpg(self, pid: int, sig: int) -> None:
        self.sent.append(("killpg", pid, sig))


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Signals:
    signals = Signals()
    monkeypatch.setattr(os, "kill", signals.kill)
    monkeypatch.setattr(os, "killpg", signals.killpg)
    return signals


def test_the_clock_sends_term_at_the_timeout_then_kill_to_the_process_group(recorded: Signals) -> None:
    """`timeout --kill-after=2 10`: TERM to the command's group at 10 s, KILL at 12 s, each once;
    the exit code is then timeout's: 124 after TERM, 137 after KILL."""
    run = Run(1, deadline=100.0, cap=0)
    run.pid, run.term_at, run.kill_at = 4242, 10.0, 12.0
    assert run.tick(4.0) == 6.0 and recorded.sent == []
    assert run.tick(10.0) == 2.0
    assert recorded.sent == [("killpg", 4242, signal.SIGTERM)]
    assert run.tick(11.0) == 1.0 and len(recorded.sent) == 1
    run.status = 0  # it exited (cleanly) after TERM: still a timeout
    assert run.exit_code() == 124
    run.status = None
    assert run.tick(12.5) == 87.5
    assert recorded.sent == [("killpg", 4242, signal.SIGTERM), ("killpg", 4242, signal.SIGKILL)]
    assert run.tick(13.0) == 87.0 and len(recorded.sent) == 2
    run.status = signal.SIGKILL
    assert run.exit_code() == 137 and not run.deadline_hit
    run.pipes = {}
    assert run.finished(13.0)


def test_the_deadline_kills_and_reports_soon_after_even_without_a_status(recorded: Signals) -> None:
    run = Run(1, deadline=5.0, cap=0)
    run.pid, run.pipes = 4242, {99: OUT}
    assert run.tick(1.0) == 4.0
    assert not run.finished(1.0)
    assert run.tick(5.0) == AFTER_DEADLINE_S
    assert recorded.sent == [("killpg", 4242, signal.SIGKILL)] and run.deadline_hit
    assert not run.finished(5.0 + AFTER_DEADLINE_S / 2), "its exit status is awaited a moment"
    assert run.finished(5.0 + AFTER_DEADLINE_S) and run.exit_code() is None
    run.status = signal.SIGKILL
    assert run.finished(5.1) and run.exit_code() == 137


def test_a_run_ends_when_its_pipes_are_closed_and_its_status_is_in(recorded: Signals) -> None:
    run = Run(1, deadline=5.0, cap=0)
    run.pid, run.pipes = 4242, {99: OUT}
    run.status = 0
    assert not run.finished(1.0), "output may still be in its pipes"
    run.pipes = {}
    assert run.finished(1.0) and run.exit_code() == 0 and recorded.sent == []


def test_the_oom_preference_is_retried_until_the_command_has_execd(
    recorded: Signals, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between fork and exec a command's /proc files are root's (it is as non-dumpable as the
    agent): the preference is retried every few milliseconds, for a second at most."""
    answers = [False, False, True]
    tried: list[int] = []

    def prefer(pid: int) -> bool:
        tried.append(pid)
        return answers.pop(0)

    monkeypatch.setattr(processes, "prefer_for_oom_kill", prefer)
    run = Run(1, deadline=100.0, cap=0)
    run.pid, run.oom_until = 4242, 1.0 + OOM_RETRY_S
    assert run.tick(1.0) == pytest.approx(OOM_RETRY_EVERY_S) and run.oom_until
    assert run.tick(1.005) == pytest.approx(OOM_RETRY_EVERY_S)
    assert run.tick(1.01) == pytest.approx(98.99) and run.oom_until == 0.0
    assert tried == [4242] * 3
    assert run.tick(2.0) == 98.0 and len(tried) == 3, "done: not tried again"
    answers[:] = [False]
    run.oom_until = 3.0
    assert run.tick(3.0) == 97.0 and run.oom_until == 0.0, "given up at its time"
    assert recorded.sent == []


def test_process_groups_the_agent_must_never_signal_are_left_alone(recorded: Signals) -> None:
    for pid in (-1, 0, 1):
        killpg(pid)
    killpg(4242, signal.SIGTERM)
    assert recorded.sent == [("killpg", 4242, signal.SIGTERM)]


# -- request handling, signals recorded ----------------------------------------------------------


@pytest.fixture
def quiet_agent(recorded: Signals, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, int]]:
    """An Agent in this process that changes none of its signal dispositions and sends no signal
    (os.kill and os.killpg record), for requests that start no command. Yields it and the read end
    of its output."""
    monkeypatch.setattr(signal, "signal", lambda *_: None)
    monkeypatch.setattr(signal, "set_wakeup_fd", lambda *_, **__: -1)
    read_end, write_end = os.pipe()
    agent = sandbox_agent.Agent(Writer(write_end), stdin=-1)
    try:
        yield agent, read_end
    finally:
        for fd in (read_end, write_end, agent.wake_r, agent.wake_w):
            os.close(fd)


def _frames_in(fd: int) -> list[tuple[int, int, Any]]:
    """The frames waiting in a pipe, JSON payloads decoded."""
    data = b""
    while select.select([fd], [], [], 0)[0]:
        data += os.read(fd, 1 << 20)
    frames = []
    while data:
        kind, request_id, length = HEADER.unpack_from(data)
        body = data[HEADER.size : HEADER.size + length]
        frames.append((kind, request_id, json.loads(body) if kind in (EXIT, FAIL) else body))
        data = data[HEADER.size + length :]
    return frames


def test_reap_kills_every_process_of_the_uid_with_one_kill_of_minus_one(
    quiet_agent: tuple[Any, int], recorded: Signals, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent, out = quiet_agent
    agent.handle({"op": "reap", "id": 5})
    assert recorded.sent == [("kill", -1, signal.SIGKILL)]

    def none_left(pid: int, sig: int) -> None:
        raise ProcessLookupError

    monkeypatch.setattr(os, "kill", none_left)
    agent.handle({"op": "reap", "id": 6})
    assert _frames_in(out) == [
        (EXIT, 5, {"exit_code": 0, "deadline_hit": False}),
        (EXIT, 6, {"exit_code": 1, "deadline_hit": False}),
    ]


def test_kill_signals_the_group_of_a_known_run_only(quiet_agent: tuple[Any, int], recorded: Signals) -> None:
    agent, out = quiet_agent
    run = Run(3, deadline=time.monotonic() + 60, cap=0)
    run.pid = 4242
    agent.runs[3] = run
    agent.handle({"op": "kill", "id": 3})
    agent.handle({"op": "kill", "id": 4})
    assert recorded.sent == [("killpg", 4242, signal.SIGKILL)]
    assert _frames_in(out) == []


def test_requests_are_answered_refused_or_ignored(quiet_agent: tuple[Any, int], recorded: Signals) -> None:
    agent, out = quiet_agent
    for request in (
        {"op": "hello", "nonce": "n" * 100},
        {"op": "launch", "id": 1},
        {"op": "run", "id": 2, "deadline_s": 1, "max_output": 1},
        {"op": "run", "id": 3, "argv": [], "deadline_s": 1, "max_output": 1},
        {"op": "hello", "id": -1},
        {"op": "hello", "id": 2**32},
        {"op": "reap", "id": "7"},
    ):
        agent.handle(request)
    frames = _frames_in(out)
    assert frames[0] == (HELLO, 0, f"{'n' * 64} {PROTOCOL}".encode()), "the nonce is cut at 64"
    assert [(kind, rid, body["error"]) for kind, rid, body in frames[1:]] == [
        (FAIL, 1, "bad-request"),
        (FAIL, 2, "bad-request"),
        (FAIL, 3, "bad-request"),
    ], "requests with an id out of range get no answer at all"
    assert recorded.sent == [] and agent.runs == {}


# -- whole agents, as the image runs them, under a dedicated uid ---------------------------------


def test_the_agent_installed_by_the_recipe_starts_and_answers_hello(live: LiveAgent) -> None:
    assert live.hello("x" * 100) == f"{'x' * 64} {PROTOCOL}".encode()
    assert live.proc.poll() is None


def test_a_commands_output_is_captured_per_stream_with_its_exit_code(live: LiveAgent) -> None:
    ended = live.run(["/bin/sh", "-c", "printf out; printf error >&2; exit 3"])
    assert (ended.kind, ended.out, ended.err) == (EXIT, b"out", b"error")
    assert ended.body == {"exit_code": 3, "deadline_hit": False, "stdout_bytes": 3, "stderr_bytes": 5}


def test_output_beyond_the_cap_is_counted_but_not_sent(live: LiveAgent) -> None:
    script = "head -c 300000 /dev/zero; head -c 7 /dev/zero >&2"
    capped = live.run(["/bin/sh", "-c", script], max_output=1000)
    assert (len(capped.out), len(capped.err)) == (1000, 7)
    assert (capped.body["stdout_bytes"], capped.body["stderr_bytes"]) == (300_000, 7)
    whole = live.run(["/bin/sh", "-c", script], max_output=1 << 20)
    assert whole.out == b"\0" * 300_000
    assert all(len(body) <= MAX_PAYLOAD for _, _, body in whole.frames)


def test_a_command_ended_by_a_signal_reports_128_plus_it(live: LiveAgent) -> None:
    ended = live.run(["/bin/sh", "-c", "kill -USR1 $$"])
    assert ended.body["exit_code"] == 128 + signal.SIGUSR1


@pytest.mark.parametrize("cwd", ["/", "/tmp"], ids=["posix-spawn", "fork"])
def test_a_command_runs_in_a_session_of_its_own_with_default_signals(live: LiveAgent, cwd: str) -> None:
    """Both ways of starting a command (posix_spawn in the agent's own directory, fork elsewhere)
    give it its own session, stdin from /dev/null, exactly the environment asked for, and every
    signal the agent ignores back at its default (not glibc's own 32 and 33, which Python cannot
    set: a parent may have left them ignored); the OOM killer prefers it to the agent."""
    script = (
        'echo "$$ $(cut -d" " -f6 /proc/$$/stat)"; grep SigIgn /proc/$$/status; '
        "readlink /proc/$$/fd/0; pwd; echo $FOO; sleep 0.3; cat /proc/$$/oom_score_adj"
    )
    ended = live.run(["/bin/sh", "-c", script], env=["FOO=bar", "PATH=/usr/bin:/bin"], cwd=cwd)
    lines = ended.out.decode().splitlines()
    pid, session = lines[0].split()
    assert pid == session, "the command leads its own session (and process group)"
    mask = int(lines[1].removeprefix("SigIgn:\t"), 16)
    ignored = {sig for sig in range(1, 65) if mask >> (sig - 1) & 1}
    assert not ignored & set(signal.valid_signals()), f"signals still ignored: {ignored}"
    assert lines[2:] == ["/dev/null", cwd, "bar", "1000"], ended.err


def test_a_timeout_sends_term_then_kill_to_the_whole_process_group(live: LiveAgent) -> None:
    """A shell and a subshell of its group that both survive TERM: both get it at the timeout, and
    KILL `kill_after` later ends them all; timeout's exit code for a KILL (137)."""
    script = (
        "trap 'echo parent-term' TERM; "
        "(trap 'echo child-term' TERM; while :; do sleep 0.05; done) & echo child=$!; "
        "while :; do sleep 0.05; done"
    )
    ended = live.run(["/bin/sh", "-c", script], timeout_s=0.5, kill_after_s=1.0)
    lines = ended.out.decode().splitlines()
    assert {"parent-term", "child-term"} <= set(lines), ended.out
    assert ended.body["exit_code"] == 128 + signal.SIGKILL and not ended.body["deadline_hit"]
    assert 1.4 <= ended.seconds < 10, ended.seconds
    child = int(next(line for line in lines if line.startswith("child=")).partition("=")[2])
    assert dead(child), "KILL reached the subshell too"


def test_a_command_that_ends_on_term_reports_a_timeout(live: LiveAgent) -> None:
    ended = live.run(["sleep", "30"], timeout_s=0.3, kill_after_s=5)
    assert ended.body["exit_code"] == 124 and ended.seconds < 4.5


def test_the_hard_deadline_kills_the_command_and_says_so(live: LiveAgent) -> None:
    ended = live.run(["sleep", "30"], deadline_s=0.5)
    assert ended.body["deadline_hit"] is True and ended.body["exit_code"] == 128 + signal.SIGKILL
    assert ended.seconds < 0.5 + AFTER_DEADLINE_S + 3


def test_kill_ends_a_running_command(live: LiveAgent) -> None:
    live.send({"op": "run", "id": 77, "argv": ["sleep", "30"], "deadline_s": 30, "max_output": 10})
    time.sleep(0.2)
    live.send({"op": "kill", "id": 77})
    kind, request_id, body = live.frame()
    assert (kind, request_id) == (EXIT, 77)
    assert json.loads(body)["exit_code"] == 128 + signal.SIGKILL


def test_a_program_that_is_not_there(live: LiveAgent) -> None:
    """posix_spawn reports it (spawn-failed); a forked child reports it as a shell would (127)."""
    spawned = live.run(["no-such-program-here"], cwd="/")
    assert (spawned.kind, spawned.body["error"]) == (FAIL, "spawn-failed")
    forked = live.run(["no-such-program-here"], cwd="/tmp")
    assert (forked.kind, forked.body["exit_code"]) == (EXIT, 127)
    assert b"cannot run 'no-such-program-here'" in forked.err
    nowhere = live.run(["true"], cwd="/no/such/directory")
    assert nowhere.body["exit_code"] == 127


@pytest.mark.parametrize(("nproc", "nofile"), [(1, 0), (0, 6)], ids=["no-process-slot", "no-descriptor"])
def test_a_command_that_cannot_start_for_want_of_resources_is_reported_as_such(
    interpreter: str, launcher: Path, nproc: int, nofile: int
) -> None:
    """`no-resources` (the gateway's `sandbox-exhausted`: it replaces the sandbox); the agent
    itself keeps serving."""
    agent = LiveAgent(interpreter, launcher, nproc=nproc, nofile=nofile)
    try:
        assert agent.hello() == f"n {PROTOCOL}".encode()
        ended = agent.run(["true"])
        assert (ended.kind, ended.body["error"]) == (FAIL, "no-resources"), ended.body
        assert agent.hello("again") == f"again {PROTOCOL}".encode()
    finally:
        agent.close()


def test_malformed_requests_are_refused_and_the_agent_keeps_serving(live: LiveAgent) -> None:
    assert live.request("launch").body["error"] == "bad-request"
    assert live.request("run", argv=["true"]).body["error"] == "bad-request"
    nul = live.run(["/bin/echo", "a\x00b"], cwd="/")
    assert (nul.kind, nul.body["error"]) == (FAIL, "bad-request")
    live.write(b"garbage\n[1]\n" + b" " * (9 << 20) + b'{"op": "hello", "nonce": "lost"}\n')
    assert live.hello("kept") == f"kept {PROTOCOL}".encode(), "an over-long line is skipped, not run"


def test_reap_kills_what_escaped_its_group_and_spares_the_agent(live: LiveAgent) -> None:
    started = live.run(["/bin/sh", "-c", "setsid sleep 60 >/dev/null 2>&1 & echo $!"])
    stray = int(started.out)
    assert not dead(stray, timeout=0.2), "the stray outlives its call"
    reaped = live.request("reap")
    assert reaped.body == {"exit_code": 0, "deadline_hit": False}
    assert dead(stray)
    assert live.hello("alive") == f"alive {PROTOCOL}".encode()
