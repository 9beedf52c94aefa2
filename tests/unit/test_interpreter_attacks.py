"""Attacks on run_python's interpreter under a whole sandbox agent (tests/support/live_agent.py, a uid of
its own, no Docker): the agent must keep serving its other calls, keep its memory bounded and end
every call in time, whatever the code does; and the interpreter should keep the state wherever the
code itself stops when interrupted.

No seccomp and no PID-1 protection here: the code could signal the agent directly, so nothing below
does (tests/e2e/test_run_python_attacks.py checks that inside a real sandbox).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from gateway.agent.protocol import ERR, EXIT, FAIL, OUT, RESULT
from tests.support.live_agent import LiveAgent, interpreter, launcher, live
from tests.unit.test_interpreter_host import CAPS, py

__all__ = ["interpreter", "launcher", "live"]  # module fixtures, used by name

#: The `py` fields of a call that is not awaited by `py()` (sent, then read with `until_ended`).
BASE: dict[str, Any] = {"env": ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"], "cwd": "/", "max_output": 1 << 20}
BASE["caps"] = CAPS
#: A thread that writes answers for no call (id 0) to fd 4 without end, `size` bytes each.
FLOOD_ANSWERS = (
    "import os, struct, threading, time\n"
    "def flood(size):\n"
    "    time.sleep(0.3)  # after this call's answer\n"
    "    while True: os.write(4, struct.pack('>II', size, 0) + b'x' * size)\n"
)


def rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def until_ended(agent: LiveAgent, ids: set[int], timeout: float) -> dict[int, tuple[int, bytes, float]]:
    """Frames until every request in `ids` ended: its last frame kind, payload and arrival time."""
    ended: dict[int, tuple[int, bytes, float]] = {}
    parts: dict[int, bytes] = {}
    deadline = time.monotonic() + timeout
    while set(ended) != ids:
        kind, request_id, payload = agent.frame(max(0.1, deadline - time.monotonic()))
        if request_id in ids and kind in (EXIT, FAIL, RESULT):
            ended[request_id] = (kind, parts.pop(request_id, b"") + payload, time.monotonic())
        elif request_id in ids and kind not in (OUT, ERR):
            parts[request_id] = parts.get(request_id, b"") + payload
    return ended


def test_the_agent_runs_a_command_while_the_interpreter_floods_every_pipe(live: LiveAgent) -> None:
    code = FLOOD_ANSWERS + (
        "def spam(fd):\n    while True: os.write(fd, b'y' * 65536)\n"
        "for target, args in ((flood, (65536,)), (spam, (1,)), (spam, (2,))):\n"
        "    threading.Thread(target=target, args=args, daemon=True).start()\n"
        "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass"
    )
    started = time.monotonic()
    live.send(
        {"op": "py", "id": 500, "code": code, "timeout_s": 3, "kill_after_s": 1, "deadline_s": 8, **BASE}
    )
    time.sleep(0.5)
    live.send({"op": "run", "id": 501, "argv": ["echo", "served"], "deadline_s": 20, **BASE})
    ended = until_ended(live, {500, 501}, timeout=60)
    assert ended[501][0] == EXIT and ended[501][2] - started < 3, "the command was not kept waiting"
    assert ended[500][0] == RESULT and ended[500][2] - started < 3 + 1 + 5 + 5
    assert json.loads(ended[500][1].partition(b"\n")[0])["ended"]["reason"] == "killed-after-timeout"
    assert live.run(["echo", "after"]).out == b"after\n"


def test_the_agents_memory_stays_bounded_while_answers_for_no_call_pour_in(live: LiveAgent) -> None:
    assert py(live, "1").kind == RESULT
    before = rss_kb(live.proc.pid)
    code = FLOOD_ANSWERS + "threading.Thread(target=flood, args=(20 * 2**20,), daemon=True).start()"
    assert py(live, code).kind == RESULT
    peak = before
    for _ in range(30):  # 3 s of 20 MiB answers for no call, between calls
        peak = max(peak, rss_kb(live.proc.pid))
        time.sleep(0.1)
    assert live.run(["echo", "served"]).out == b"served\n"
    assert peak - before < 128 * 1024, f"the agent grew by {(peak - before) // 1024} MiB"


def test_a_fork_without_pythons_at_fork_hooks_cannot_hold_the_calls_after_it(live: LiveAgent) -> None:
    """libc's fork() skips os.register_at_fork: the child keeps fds 3 and 4. This one stops its parent
    (so that it alone reads) and steals every request: the call ends in time all the same, and the
    next one is served by a fresh interpreter."""
    code = (
        "import ctypes, os, signal, time\nif ctypes.CDLL(None).fork() == 0:\n    time.sleep(0.5)\n"
        "    os.kill(os.getppid(), signal.SIGSTOP)\n    while True: os.read(3, 1 << 20)\n'parent'"
    )
    assert py(live, code).answer is not None
    time.sleep(1.5)  # the child has stopped its parent
    stolen = py(live, "1", timeout_s=1)
    assert stolen.kind == RESULT and stolen.seconds < 1 + 1 + 5 + 5
    assert stolen.answer is None and stolen.body["ended"]["reason"] == "killed-after-timeout"
    assert live.run(["echo", "served"]).out == b"served\n"
    after = py(live, "2")
    assert after.answer is not None and after.answer["value"] == "2" and after.body["new"] is True


def test_a_forged_early_answer_leaves_the_code_running_but_the_next_call_still_ends(live: LiveAgent) -> None:
    code = (
        "import json, os, signal, struct, sys\n"
        "me = int(sys._getframe().f_code.co_filename[len('<cell-'):-1])\n"
        "data = json.dumps({'id': me, 'value': 'forged'}).encode()\n"
        "os.write(4, struct.pack('>II', len(data), me) + data)\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass"
    )
    forged = py(live, code)
    assert forged.answer is not None and forged.answer["value"] == "forged"
    blocked = py(live, "1", timeout_s=1)
    assert blocked.seconds < 1 + 1 + 5 + 5 and blocked.body["ended"]["reason"] == "killed-after-timeout"
    assert py(live, "2").body["new"] is True


def test_a_grandchild_writing_after_the_interpreter_died_costs_the_agent_nothing(live: LiveAgent) -> None:
    code = (
        "import os\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    while True: os.write(1, b'z' * 65536)\n"
        "os._exit(0)"
    )
    assert py(live, code).body["ended"]["reason"] == "died"
    before = rss_kb(live.proc.pid)
    time.sleep(1)
    after = py(live, "'fresh'")
    assert after.answer is not None and after.answer["value"] == "'fresh'" and after.body["new"] is True
    assert live.run(["echo", "served"]).out == b"served\n"
    assert rss_kb(live.proc.pid) - before < 32 * 1024


def test_an_exception_whose_str_fails_is_reported_and_the_state_kept(live: LiveAgent) -> None:
    """The interpreter's docstring: any exception, SystemExit too, leaves the interpreter and its state."""
    py(live, "kept = 1")
    ended = py(
        live, "class Odd(Exception):\n    def __str__(self):\n        raise RuntimeError('no')\nraise Odd()"
    )
    assert "ended" not in ended.body, ended.body
    assert ended.answer is not None and ended.answer["error"]["type"] == "Odd"
    assert py(live, "kept").body["new"] is False


def test_a_final_value_whose_repr_does_not_end_is_interrupted_not_killed(live: LiveAgent) -> None:
    """The timeout's interrupt should reach code of the cell's own that runs after its last line:
    repr() and the _repr_*_ methods of its value (and display's, and figures')."""
    py(live, "kept = 1")
    ended = py(live, "class Slow:\n    def __repr__(self):\n        while True: pass\nSlow()", timeout_s=1)
    assert ended.body["interrupted"] is True and "ended" not in ended.body, ended.body
    assert py(live, "kept").body["new"] is False


def test_a_long_exception_chain_is_reported_in_time_and_the_state_kept(live: LiveAgent) -> None:
    """_traceback walks the chain with `part not in seen` over a list (TracebackException.__eq__
    compares whole __dict__s): quadratic, and outside the code, so beyond the interrupt's reach."""
    code = (
        "error = ValueError(0)\n"
        "for n in range(1, 6000):\n"
        "    try:\n        try:\n            raise error\n"
        "        except ValueError:\n            raise ValueError(n)\n"
        "    except ValueError as exc:\n        error = exc\n"
        "raise error"
    )
    py(live, "kept = 1")
    ended = py(live, code, timeout_s=5)
    assert "ended" not in ended.body, ended.body
    assert ended.answer is not None and ended.answer["error"]["type"] == "ValueError"
    assert py(live, "kept").body["new"] is False
