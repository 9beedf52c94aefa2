"""The workspace file tools (write_file, read_file, list_files): each one a call of the file
helper in the principal's sandbox, on the same path, policy and budgets as code."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import anyio

from gateway.calls.files import WORKSPACE, file_argv, parse_file_result
from gateway.calls.inputs import check_path, decode_content
from gateway.calls.path import CallPath
from gateway.calls.results import FileContent, FileEntry, FileList, FileWritten
from gateway.errors import GatewayError, InvalidArgument
from policy import Action, Allowed, Principal

__all__ = ["FileCalls"]

#: File-tool codes that are a refusal (the call was not allowed to touch that path), not a failure.
_REFUSED_FILE_CODES = frozenset({"path-outside-workspace"})


class FileCalls(CallPath):
    """The file tools, on top of the call path."""

    async def _file_call(
        self,
        principal: Principal,
        tool: str,
        action: Action,
        path: str,
        argv_for: Callable[[Allowed], list[str]],
    ) -> dict[str, Any]:
        """Run one file operation; every end is a `file.finish` (a refused path with its code)."""
        decision = self._decide(principal, action)
        try:
            outcome = await self._in_tenant_budget(principal, decision, argv_for(decision))
            answer = parse_file_result(outcome.exit_code, outcome.stdout, outcome.stderr)
        except anyio.get_cancelled_exc_class():
            self.audit.emit("file.finish", outcome="error", error="cancelled", tool=tool, path=path)
            raise
        except GatewayError as exc:
            status = "rejected" if exc.code in _REFUSED_FILE_CODES else "error"
            self.audit.emit(
                "file.finish",
                outcome=status,
                error=exc.code,
                tool=tool,
                input_bytes=action.input_bytes,
                path=path,
            )
            raise
        self.audit.emit(
            "file.finish",
            outcome="ok",
            tool=tool,
            input_bytes=action.input_bytes,
            path=str(answer.get("path", "")),
            duration_ms=round(outcome.duration_ms, 2),
        )
        return answer

    async def write_file(
        self,
        principal: Principal,
        path: object,
        content: object,
        encoding: object = "utf-8",
        *,
        source_ip: str | None = None,
    ) -> FileWritten:
        """Write (create or replace) a file under /workspace."""
        async with self._request(principal, "write_file", source_ip):
            where = check_path(path)
            data = decode_content(content, encoding)
            answer = await self._file_call(
                principal,
                "write_file",
                Action("write_file", input_bytes=len(data)),
                where,
                lambda _: file_argv("write", where, data=data),
            )
            return FileWritten(path=str(answer["path"]), size=int(answer["size"]))

    async def read_file(
        self,
        principal: Principal,
        path: object,
        encoding: object = "utf-8",
        max_bytes: object = None,
        *,
        source_ip: str | None = None,
    ) -> FileContent:
        """Read a file under /workspace, up to `max_bytes` and the profile's output cap."""
        async with self._request(principal, "read_file", source_ip):
            where = check_path(path)
            if encoding not in ("utf-8", "base64"):
                raise InvalidArgument("encoding must be 'utf-8' or 'base64'")
            if max_bytes is not None and (not isinstance(max_bytes, int) or max_bytes < 0):
                raise InvalidArgument("max_bytes must be a non-negative integer")
            wanted = max_bytes

            def read_argv(decision: Allowed) -> list[str]:
                # base64 output must fit the profile's output cap, with room for the JSON around it
                limit = decision.limits.max_output_bytes
                ceiling = max(0, (limit - 4096) * 3 // 4)
                cap = ceiling if wanted is None else min(ceiling, wanted)
                return file_argv("read", where, cap=cap)

            answer = await self._file_call(principal, "read_file", Action("read_file"), where, read_argv)
            raw = base64.b64decode(str(answer["data"]))
            text = (
                raw.decode("utf-8", errors="replace")
                if encoding == "utf-8"
                else base64.b64encode(raw).decode()
            )
            return FileContent(
                path=str(answer["path"]),
                content=text,
                encoding=str(encoding),
                size=int(answer["size"]),
                truncated=bool(answer["truncated"]),
            )

    async def list_files(
        self, principal: Principal, path: object = WORKSPACE, *, source_ip: str | None = None
    ) -> FileList:
        """The entries of a directory under /workspace."""
        async with self._request(principal, "list_files", source_ip):
            where = check_path(path)
            answer = await self._file_call(
                principal,
                "list_files",
                Action("list_files"),
                where,
                lambda _: file_argv("list", where),
            )
            return FileList(path=str(answer["path"]), entries=[FileEntry(**e) for e in answer["entries"]])
