"""run_python's long-lived interpreter: one per sandbox, a child of the sandbox agent (standard library only).

The agent starts it (read-only in the image as /opt/sandbox-gateway/sgw_agent/interpreter.py) as
`python3 interpreter.py CWD` with the sandbox's uid, environment and limits; fd 0 /dev/null, fd 1 and
2 pipes the agent reads during a call, fd 3 requests in, fd 4 answers out. A request is a 4-byte
big-endian length and JSON {"id", "code", "caps"}; an answer is its length, the id of the call it
answers (4 bytes) and JSON {"id", "value", "rich": [{"mime", "data"[, "note"]}], "error": {"type",
"message", "traceback"}, "interrupted", "duration_ms"}. Calls run one after another; SIGINT
interrupts the running call only. It runs as the code does: the agent checks each answer's
framing, the gateway its content.
"""

from __future__ import annotations

import ast
import base64
import builtins
import contextlib
import io
import json
import linecache
import os
import signal
import struct
import sys
import time
import traceback
import types
from typing import Any

REQUESTS, ANSWERS = 3, 4
HEADER = struct.Struct(">II")  # an answer's: its length, and the id of the call it answers
MAX_REQUEST = 16 * 1024 * 1024  # the largest request read
#: What the gateway takes of one answer at most (interpreter_results.py): outputs beyond the images,
#: and characters of text outputs together. Nothing beyond is sent.
_MORE_ENTRIES, _TEXT_TOTAL = 32, 1024 * 1024
_HERE = os.path.abspath(__file__)
_OWNER = os.getpid()
_TEXT_REPRS = (
    ("_repr_svg_", "image/svg+xml"), ("_repr_markdown_", "text/markdown"), ("_repr_html_", "text/html")
)  # fmt: skip


class _Cell:
    """What the current call has shown: rich outputs within the caps."""

    def __init__(self, caps: dict[str, int]) -> None:
        self.caps = caps
        self.rich: list[dict[str, Any]] = []
        self.images, self.image_bytes, self.text_left = 0, 0, _TEXT_TOTAL

    def note(self, text: str) -> None:
        self._add({"mime": "text/plain", "data": text[:1000], "note": True}, 1000)

    def _add(self, entry: dict[str, Any], size: int) -> None:
        """Keep an output while the call's entries and text stay within what the gateway takes."""
        if len(self.rich) < self.caps["images"] + _MORE_ENTRIES and size <= self.text_left:
            self.text_left -= size
            self.rich.append(entry)

    def image(self, data: bytes, what: str) -> None:
        if self.images >= self.caps["images"] or self.image_bytes + len(data) > self.caps["image_bytes"]:
            self.note(f"{what} not shown: above this call's image cap")
            return
        self.images += 1
        self.image_bytes += len(data)
        self._add({"mime": "image/png", "data": base64.b64encode(data).decode()}, 0)

    def text(self, mime: str, data: str) -> None:
        limit = self.caps["text"]
        if len(data) > limit:
            data = data[:limit] + f"\n… (cut at {limit} characters)"
        if len(data) > self.text_left:
            self.note(f"a {mime} output not shown: above this call's total for text")
            return
        self._add({"mime": mime, "data": data}, len(data))

    def show(self, value: object) -> None:
        """`value` as the richest representations it offers."""
        kind = type(value)
        if (kind.__module__ or "").startswith("pandas") and kind.__name__ in ("DataFrame", "Series"):
            self._table(value)
            return
        png = getattr(kind, "_repr_png_", None) if self.caps["images"] else None
        if png is not None:
            data = _call(png, value)
            if isinstance(data, str):
                data = data.encode("latin-1", errors="replace")
            if isinstance(data, bytes):
                self.image(data, f"the PNG of a {kind.__name__}")
        for method, mime in _TEXT_REPRS:
            found = getattr(kind, method, None)
            if found is not None:
                data = _call(found, value)
                if isinstance(data, str):
                    self.text(mime, data)
                    return  # the richest text form is enough

    def _table(self, frame: Any) -> None:
        rows, head = self.caps["rows"], frame.head(self.caps["rows"])
        try:
            table = head.to_markdown()
        except ImportError:  # no tabulate: fixed-width text in a code block
            table = "```\n" + head.to_string() + "\n```"
        if len(frame) > rows:
            table += f"\n\n({len(frame)} rows; the first {rows} shown)"
        self.text("text/markdown", table)

    def figures(self) -> None:
        """Every open matplotlib figure as a PNG, then closed (closed ones are not shown twice)."""
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is None:
            return
        for number in plt.get_fignums():
            figure = plt.figure(number)
            try:
                buffer = io.BytesIO()
                figure.savefig(buffer, format="png")  # at its own size and dpi
                self.image(buffer.getvalue(), f"figure {number}")
            except Exception as exc:  # noqa: BLE001 - a figure that cannot render is reported, not fatal
                self.note(f"figure {number} could not be rendered: {exc!r}")
            finally:
                plt.close(figure)


def _call(method: Any, value: object) -> object:
    """`method(value)`, its first item if it is a tuple (data, metadata); None if it fails."""
    try:
        data = method(value)
    except Exception:  # noqa: BLE001 - a broken _repr_ costs that representation only
        return None
    return data[0] if isinstance(data, tuple) and data else data


class _Now:
    """Whether the code is running (SIGINT interrupts it only then) and the call it belongs to."""

    busy = False
    cell: _Cell | None = None


def _on_sigint(_signum: int, _frame: object) -> None:
    if _Now.busy:
        raise KeyboardInterrupt


def display(*values: object) -> None:
    """Show each value in this call's result as run_python shows a final expression."""
    for value in values:
        if _Now.cell is not None and value is not None:
            _Now.cell.show(value)


def _traceback(exc: BaseException) -> str:
    """The traceback of the code's own frames (and the libraries it called), not this file's."""
    summary = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    seen: set[int] = set()
    part: traceback.TracebackException | None = summary
    while part is not None and id(part) not in seen:
        seen.add(id(part))
        part.stack = traceback.StackSummary.from_list(
            [frame for frame in part.stack if os.path.abspath(frame.filename) != _HERE]
        )
        part = part.__cause__ or (None if part.__suppress_context__ else part.__context__)
    return "".join(summary.format())


def _failure(exc: BaseException) -> dict[str, str]:
    """An exception of the code as the answer shows it (its own __str__ may fail: that is said)."""
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001
        message = f"<str() of this {type(exc).__name__} failed>"
    syntax = isinstance(exc, SyntaxError)
    shown = "".join(traceback.format_exception_only(exc)) if syntax else _traceback(exc)
    return {"type": type(exc).__name__[:200], "message": message[:4096], "traceback": shown[-65536:]}


def _execute(namespace: dict[str, Any], name: str, code: str, answer: dict[str, Any], cell: _Cell) -> None:
    """All statements, then the value of a final expression (kept as `_`) and its representations."""
    tree = ast.parse(code, name, "exec")
    last = tree.body[-1] if tree.body else None
    tail = None
    if isinstance(last, ast.Expr):
        tree.body.pop()
        tail = compile(ast.Expression(last.value), name, "eval")
    exec(compile(tree, name, "exec"), namespace)  # noqa: S102 - running the caller's code is the point
    value = eval(tail, namespace) if tail is not None else None  # noqa: S307
    if value is not None:
        namespace["_"] = value
        text, limit = repr(value), cell.caps["value"]
        answer["value"] = text if len(text) <= limit else text[:limit] + f"… (cut at {limit} characters)"
        cell.show(value)


def _run(namespace: dict[str, Any], number: int, code: str, caps: dict[str, int]) -> dict[str, Any]:
    """Run one cell. SIGINT interrupts all of it: the code, its value's repr, its figures."""
    name = f"<cell-{number}>"
    linecache.cache[name] = (len(code), None, code.splitlines(True), name)
    answer: dict[str, Any] = {"value": None, "error": None, "interrupted": False}
    cell = _Now.cell = _Cell(caps)
    started = time.perf_counter()
    _Now.busy = True
    try:
        try:
            _execute(namespace, name, code, answer, cell)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - SystemExit too: the interpreter and its state stay
            answer["error"] = _failure(exc)
        cell.figures()
    except KeyboardInterrupt as exc:
        answer["interrupted"] = True
        answer["error"] = {"type": "KeyboardInterrupt", "message": "", "traceback": _traceback(exc)}
    finally:
        _Now.busy = False
    _Now.cell = None
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    answer["rich"] = cell.rich
    answer["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
    return answer


def _read_exactly(count: int) -> bytes | None:
    data = bytearray()
    while len(data) < count:
        piece = os.read(REQUESTS, count - len(data))  # a signal handler that returns: retried (PEP 475)
        if not piece:
            return None
        data += piece
    return bytes(data)


def _send(answer: dict[str, Any]) -> None:
    text = json.dumps(answer, separators=(",", ":"), default=str, ensure_ascii=False)
    data = text.encode("utf-8", "replace")  # a lone surrogate of the code's becomes "?"
    view = memoryview(HEADER.pack(len(data), answer["id"]) + data)
    while view:
        view = view[os.write(ANSWERS, view) :]


def _caps(asked: dict[str, Any]) -> dict[str, int]:
    """The request's caps (the profile's `interpreter` key); one it lacks allows nothing."""
    return {
        name: max(0, int(asked.get(name, 0))) for name in ("value", "text", "images", "image_bytes", "rows")
    }


def _forked() -> None:
    """The code forked: the copy must never speak for this interpreter."""
    for fd in (REQUESTS, ANSWERS):
        with contextlib.suppress(OSError):
            os.close(fd)


def serve() -> None:
    """Answer requests until fd 3 closes."""
    main = types.ModuleType("__main__")  # a real module: what cells define can be pickled, imported
    main.__dict__.update(__builtins__=builtins, display=display)
    sys.modules["__main__"] = main
    namespace = main.__dict__
    while True:
        head = _read_exactly(4)
        size = struct.unpack(">I", head)[0] if head is not None else 0
        raw = _read_exactly(size) if head is not None and size <= MAX_REQUEST else None
        if raw is None:
            return
        request = json.loads(raw)
        number, code = int(request["id"]), str(request["code"])
        try:
            answer = _run(namespace, number, code, _caps(request.get("caps") or {}))
        except BaseException as exc:  # noqa: BLE001 - an interrupt as the call ended; a failure of ours
            interrupted = isinstance(exc, KeyboardInterrupt)
            kind = "KeyboardInterrupt" if interrupted else "InterpreterError"
            error = {"type": kind, "message": "" if interrupted else f"{type(exc).__name__}", "traceback": ""}
            answer = {"value": None, "rich": [], "error": error, "interrupted": interrupted, "duration_ms": 0}
        if os.getpid() != _OWNER:  # a fork of the code came back up to here: it leaves silently
            os._exit(0)
        answer.update(id=number)
        _send(answer)


def main() -> None:
    if len(sys.argv) > 1:
        os.chdir(sys.argv[1])
    sys.argv = [""]
    sys.path[0] = ""  # as an interactive interpreter: the working directory, not this file's
    os.environ.setdefault("MPLBACKEND", "Agg")  # no display in a sandbox
    os.environ.setdefault("MPLCONFIGDIR", "/tmp/.matplotlib")  # noqa: S108 - keeps /workspace clean
    signal.signal(signal.SIGINT, _on_sigint)
    os.register_at_fork(after_in_child=_forked)
    for fd in (REQUESTS, ANSWERS):
        os.set_inheritable(fd, False)  # subprocesses of the code get neither
    serve()


if __name__ == "__main__":
    main()
