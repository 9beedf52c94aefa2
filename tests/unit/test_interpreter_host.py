"""run_python's interpreter under a whole sandbox agent (tests/support/live_agent.py): state kept
between calls, output per call, timeouts that interrupt and then kill, deaths reported with the call
they happen in and again with the next, the idle limit, and an interpreter that lies or floods."""

from __future__ import annotations

import json
import time
from typing import Any

from gateway.agent.protocol import FAIL, RESULT, RESULT_PART
from policy.interpreter_model import InterpreterLimits
from tests.support.live_agent import Ended, LiveAgent, dead, interpreter, launcher, live

__all__ = ["interpreter", "launcher", "live"]  # module fixtures, used by name

#: The shipped profiles' caps, as the gateway sends them.
CAPS = InterpreterLimits().caps()


def py(agent: LiveAgent, code: str, *, timeout_s: float = 10, **fields: Any) -> Ended:
    body: dict[str, Any] = {
        "code": code,
        "env": ["PATH=/usr/bin:/bin", "LANG=C.UTF-8", "PYTHONUNBUFFERED=1"],
        "cwd": "/",
        "timeout_s": timeout_s,
        "kill_after_s": 1,
        "deadline_s": timeout_s + 5,
        "max_output": 1 << 20,
        "caps": CAPS,
        **fields,
    }
    return agent.request("py", timeout=timeout_s + 10, **body)


def test_state_lives_from_one_call_to_the_next(live: LiveAgent) -> None:
    first = py(live, "x = 41\nimport os\npid = os.getpid()\npid")
    assert first.kind == RESULT and first.body["new"] is True and "previous" in first.body
    assert first.body["previous"] is None, "nothing was lost before the first interpreter"
    second = py(live, "x += 1\n(x, os.getpid() == pid)")
    assert second.body["new"] is False and second.answer is not None
    assert second.answer["value"] == "(42, True)" and second.answer["error"] is None


def test_output_of_python_c_and_subprocesses_is_the_calls_in_order(live: LiveAgent) -> None:
    ended = py(
        live,
        "import os, subprocess, sys\nprint('a')\nos.write(1, b'b\\n')\n"
        "subprocess.run(['echo', 'c'])\nprint('e', file=sys.stderr)",
    )
    assert ended.out == b"a\nb\nc\n" and ended.err == b"e\n"
    assert (ended.body["stdout_bytes"], ended.body["stderr_bytes"]) == (6, 2)


def test_output_beyond_the_cap_is_counted_not_sent(live: LiveAgent) -> None:
    ended = py(live, "print('x' * 5000)", max_output=1000)
    assert len(ended.out) == 1000 and ended.body["stdout_bytes"] == 5001


def test_a_traceback_shows_the_cells_frames_only(live: LiveAgent) -> None:
    ended = py(live, "def f(a):\n    return a / 0\nf(1)")
    assert ended.answer is not None
    error = ended.answer["error"]
    assert error["type"] == "ZeroDivisionError"
    assert 'File "<cell-' in error["traceback"] and "return a / 0" in error["traceback"]
    assert "interpreter.py" not in error["traceback"]


def test_a_timeout_interrupts_the_code_and_the_state_survives(live: LiveAgent) -> None:
    py(live, "n = 0")
    ended = py(live, "while True:\n    n += 1", timeout_s=0.5)
    assert ended.body["interrupted"] is True and "ended" not in ended.body
    assert ended.answer is not None and ended.answer["error"]["type"] == "KeyboardInterrupt"
    after = py(live, "n > 0")
    assert after.body["new"] is False and after.answer is not None and after.answer["value"] == "True"


def test_code_that_swallows_the_interrupt_is_killed_and_the_next_call_says_so(live: LiveAgent) -> None:
    py(live, "kept = 1")
    code = "while True:\n    try:\n        while True:\n            pass\n"
    code += "    except KeyboardInterrupt:\n        pass"
    ended = py(live, "x = 0\n" + code, timeout_s=0.5)
    assert ended.body["interrupted"] is True and ended.answer is None
    killed = {"reason": "killed-after-timeout", "exit_code": 137, "signal": 9, "oom": False}
    assert ended.body["ended"] == killed
    after = py(live, "'kept' in globals()")
    assert after.body["new"] is True
    assert after.body["previous"] == killed
    assert after.answer is not None and after.answer["value"] == "False"
    again = py(live, "1")
    assert again.body["new"] is False and "previous" not in again.body


def test_an_interpreter_that_exits_is_reported_with_its_status(live: LiveAgent) -> None:
    ended = py(live, "import os\nos._exit(7)")
    assert ended.body["ended"] == {"reason": "died", "exit_code": 7, "signal": None, "oom": False}
    assert ended.answer is None
    after = py(live, "2")
    assert after.body["previous"] == {"reason": "died", "exit_code": 7, "signal": None, "oom": False}


def test_a_kill_the_agent_did_not_send_is_told_apart_from_an_exit_status(live: LiveAgent) -> None:
    killed = py(live, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    exited = py(live, "import os\nos._exit(137)")
    assert killed.body["ended"] == {"reason": "died", "exit_code": 137, "signal": 9, "oom": False}
    assert exited.body["ended"] == {"reason": "died", "exit_code": 137, "signal": None, "oom": False}


def test_the_memory_reported_is_the_kernels_count_not_the_interpreters_word(live: LiveAgent) -> None:
    small = py(live, "1")
    big = py(live, "keep = bytearray(64 * 2**20)\nfor i in range(0, len(keep), 4096):\n    keep[i] = 1")
    assert 0 < small.body["rss_kb"] < big.body["rss_kb"] and big.body["rss_kb"] >= 64 * 1024


def test_sys_exit_is_an_exception_not_an_end(live: LiveAgent) -> None:
    ended = py(live, "import sys\nsys.exit(3)")
    assert ended.answer is not None and ended.answer["error"]["type"] == "SystemExit"
    assert py(live, "1").body["new"] is False


def test_the_interpreter_is_ended_after_its_idle_limit(live: LiveAgent) -> None:
    first = py(live, "import os\nos.getpid()", idle_s=0.3)
    assert first.answer is not None
    pid = int(first.answer["value"])
    assert dead(pid, timeout=10), "the idle interpreter was ended"
    after = py(live, "1")
    assert after.body["new"] is True and after.body["previous"]["reason"] == "idle"


def test_reap_ends_the_interpreter_too_and_the_next_call_says_so(live: LiveAgent) -> None:
    first = py(live, "import os\nos.getpid()")
    assert first.answer is not None
    live.request("reap", timeout=5)
    assert dead(int(first.answer["value"]))
    after = py(live, "1")
    assert after.body["new"] is True and after.body["previous"]["reason"] == "reaped"


def test_a_second_call_while_one_runs_is_refused(live: LiveAgent) -> None:
    live.send(
        {
            "op": "py",
            "id": 900,
            "code": "import time\ntime.sleep(1)",
            "env": [],
            "cwd": "/",
            "timeout_s": 5,
            "deadline_s": 10,
            "max_output": 100,
        }
    )
    refused = py(live, "1")
    assert refused.kind == FAIL and refused.body["error"] == "busy"
    kind, request_id, _ = live.frame()
    assert (kind, request_id) == (RESULT, 900)


def test_kill_interrupts_the_call_then_ends_it(live: LiveAgent) -> None:
    live.send(
        {
            "op": "py",
            "id": 901,
            "code": "import time\ntime.sleep(30)",
            "env": [],
            "cwd": "/",
            "timeout_s": 30,
            "kill_after_s": 1,
            "deadline_s": 40,
            "max_output": 100,
        }
    )
    time.sleep(0.3)
    started = time.monotonic()
    live.send({"op": "kill", "id": 901})
    kind, request_id, payload = live.frame()
    summary, _, answer = payload.partition(b"\n")
    assert (kind, request_id) == (RESULT, 901) and json.loads(summary)["interrupted"] is True
    assert json.loads(answer)["error"]["type"] == "KeyboardInterrupt" and time.monotonic() - started < 5


def test_a_fork_of_the_code_never_answers_for_the_interpreter(live: LiveAgent) -> None:
    ended = py(live, "import os\npid = os.fork()\nif pid == 0:\n    print('child')\npid > 0")
    assert ended.answer is not None and ended.answer["value"] == "True"
    after = py(live, "2")
    assert after.body["new"] is False and after.answer is not None and after.answer["value"] == "2"
    assert after.answer["id"] == after.frames[-1][1], "the answer is this call's, not the fork's"


def test_an_answer_beyond_the_protocols_limit_ends_the_interpreter(live: LiveAgent) -> None:
    ended = py(
        live, "import os, struct\nos.write(4, struct.pack('>II', 2**31, 0))\nimport time\ntime.sleep(5)"
    )
    assert ended.body["ended"]["reason"] == "broke-the-protocol" and ended.answer is None


def test_a_long_answer_comes_in_parts(live: LiveAgent) -> None:
    ended = py(live, "'y' * 200000", caps={**CAPS, "value": 300000})
    assert ended.answer is not None and len(ended.answer["value"]) == 200002
    assert any(kind == RESULT_PART for kind, _, _ in ended.frames)


def test_a_malformed_request_is_refused(live: LiveAgent) -> None:
    refused = live.request("py", code="1")
    assert refused.kind == FAIL and refused.body["error"] == "bad-request"
    assert py(live, "1").kind == RESULT


def test_a_request_with_a_bad_field_is_refused_whole_and_never_runs(live: LiveAgent) -> None:
    refused = py(live, "open('/tmp/ran', 'w').write('yes')", idle_s="soon")
    assert refused.kind == FAIL and refused.body["error"] == "bad-request"
    after = py(live, "import os\nos.path.exists('/tmp/ran')")
    assert after.kind == RESULT and after.answer is not None and after.answer["value"] == "False"


def test_what_a_cell_defines_can_be_pickled_as_in_a_script(live: LiveAgent) -> None:
    py(
        live,
        "class Point:\n    def __init__(self, x):\n        self.x = x\ndef double(p):\n    return p.x * 2",
    )
    ended = py(live, "import pickle\nsaved = pickle.dumps(Point(21))\ndouble(pickle.loads(saved))")
    assert ended.answer is not None and ended.answer["value"] == "42", ended.answer
