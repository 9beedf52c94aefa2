"""What each control of the page does, without Gradio: the app wires these to its components.

Every handler takes the person's token from their session state and makes its calls through a
`GatewayClient`; a refusal or failure becomes a plain message, never an exception on the page.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from frontend import format as fmt
from frontend.client import GatewayClient, Problem, normalize_token
from frontend.signin_state import Handoff

__all__ = ["Handlers", "RunUpdate", "SignIn"]

#: The most of a file the viewer shows.
VIEW_BYTES = 256 * 1024
#: How often the page is told how long a running command has taken, when it prints nothing.
TICK_S = 1.0

ClientFactory = Callable[[str, str], GatewayClient]


@dataclass(frozen=True, slots=True)
class SignIn:
    token: str | None
    who: str
    facts: str


@dataclass(frozen=True, slots=True)
class RunUpdate:
    status: str
    output: str
    stderr: str = ""


@dataclass
class Handlers:
    """The console's actions against the gateway at `url`."""

    url: str
    client_factory: ClientFactory = GatewayClient
    downloads: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sgw-ui-")))

    def _client(self, token: str | None) -> GatewayClient:
        if not token:
            raise Problem("unauthorized", "signed-out", "sign in with your gateway token first")
        return self.client_factory(self.url, token)

    async def _call(
        self, token: str | None, tool: str, arguments: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return await self._client(token).call(tool, arguments)

    # Sign-in

    async def sign_in(self, raw: str | None) -> SignIn:
        """Check the token with `sandbox_info`; keep it only if the gateway accepted it."""
        try:
            token = normalize_token(raw)
        except ValueError as exc:
            return SignIn(None, f"**Not signed in**: {exc}.", "")
        try:
            info = await self._call(token, "sandbox_info")
        except Problem as problem:
            if (
                problem.kind in ("unauthorized", "unreachable", "rate-limited")
                or problem.code == "signed-out"
            ):
                return SignIn(None, f"**Not signed in**. {fmt.problem_text(problem)}", "")
            # The gateway knows the token but refuses this tool (an operator-only token, say).
            return SignIn(token, f"Signed in. {fmt.problem_text(problem)}", "")
        return SignIn(token, fmt.signed_in_text(info), fmt.sandbox_facts(info))

    async def sign_in_handoff(self, handoff: Handoff | None) -> SignIn | None:
        """On page load: the token the OAuth callback left for this browser, checked like a pasted
        one, or the reason the sign-in failed; None when the page was loaded without one."""
        if handoff is None:
            return None
        if handoff.error or not handoff.token:
            return SignIn(None, fmt.sign_in_failed(handoff.error or "the issuer gave no token"), "")
        result = await self.sign_in(handoff.token)
        if result.token is None:
            return result
        return SignIn(
            result.token,
            fmt.signed_in_through(result.who, handoff.issuer, handoff.expires_in_s),
            result.facts,
        )

    # Console

    async def run(
        self, token: str | None, language: str, code: str, timeout_s: float | None
    ) -> AsyncIterator[RunUpdate]:
        """Run code; yields the output so far while it runs (from the gateway's progress notes), then
        the result: stdout, stderr, exit code, duration and flags, or the refusal."""
        tool = "execute_python" if language == "python" else "execute_bash"
        key = "code" if tool == "execute_python" else "command"
        if not code.strip():
            yield RunUpdate("Nothing to run.", "")
            return
        try:
            client = self._client(token)
        except Problem as problem:
            yield RunUpdate(fmt.problem_text(problem), "")
            return
        arguments: dict[str, Any] = {key: code}
        if timeout_s:
            arguments["timeout_s"] = float(timeout_s)
        chunks: asyncio.Queue[str] = asyncio.Queue()

        async def on_output(chunk: str) -> None:
            chunks.put_nowait(chunk)

        started = time.monotonic()
        call = asyncio.ensure_future(client.call(tool, arguments, on_output=on_output))
        live = ""
        yield RunUpdate("Running...", "")
        try:
            while not call.done():
                getter = asyncio.ensure_future(chunks.get())
                done, _ = await asyncio.wait(
                    {call, getter}, timeout=TICK_S, return_when=asyncio.FIRST_COMPLETED
                )
                if getter in done:
                    live += getter.result()
                else:
                    getter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await getter
                while not chunks.empty():
                    live += chunks.get_nowait()
                yield RunUpdate(f"Running... {time.monotonic() - started:.0f} s", live)
            result = call.result()
        except Problem as problem:
            yield RunUpdate(fmt.problem_text(problem), live)
            return
        finally:
            if not call.done():  # the page went away: stop waiting for the result
                call.cancel()
        yield RunUpdate(fmt.exec_summary(result), result.get("stdout", ""), result.get("stderr", ""))

    # Workspace

    async def list_files(self, token: str | None, path: str) -> tuple[str, list[str], str]:
        """(table, files for download and view, status)"""
        try:
            listing = await self._call(token, "list_files", {"path": path.strip() or "/workspace"})
        except Problem as problem:
            return "", [], fmt.problem_text(problem)
        return fmt.file_table(listing), fmt.file_choices(listing), ""

    async def upload(self, token: str | None, local: str | None, directory: str) -> tuple[str, str | None]:
        """Write an uploaded file into the workspace directory, under its own name: (status, its path)."""
        if not local:
            return "Choose a file to upload.", None
        source = Path(local)
        target = str(PurePosixPath(directory.strip() or "/workspace") / source.name)
        content = base64.b64encode(source.read_bytes()).decode()
        try:
            written = await self._call(
                token, "write_file", {"path": target, "content": content, "encoding": "base64"}
            )
        except Problem as problem:
            return fmt.problem_text(problem), None
        return f"Uploaded `{written['path']}` ({fmt.nbytes(written['size'])}).", str(written["path"])

    async def download(self, token: str | None, path: str | None) -> tuple[str | None, str]:
        """(a local copy for the browser to download, status)"""
        if not path:
            return None, "Choose a file first."
        try:
            content = await self._call(token, "read_file", {"path": path, "encoding": "base64"})
        except Problem as problem:
            return None, fmt.problem_text(problem)
        folder = Path(tempfile.mkdtemp(dir=self.downloads))
        local = folder / (PurePosixPath(path).name or "download")
        local.write_bytes(base64.b64decode(content["content"]))
        note = " (cut at the gateway's output cap)" if content.get("truncated") else ""
        return str(local), f"`{content['path']}`: {fmt.nbytes(content['size'])}{note}."

    async def view(self, token: str | None, path: str | None) -> tuple[str, str]:
        """(the file's text, status)"""
        if not path:
            return "", "Choose a file first."
        try:
            content = await self._call(token, "read_file", {"path": path, "max_bytes": VIEW_BYTES})
        except Problem as problem:
            return "", fmt.problem_text(problem)
        note = f", showing the first {fmt.nbytes(VIEW_BYTES)}" if content.get("truncated") else ""
        return content["content"], f"`{content['path']}`: {fmt.nbytes(content['size'])}{note}."

    # Sandbox

    async def sandbox(self, token: str | None) -> tuple[str, str, str, str]:
        """(facts, skills, tools, status)"""
        try:
            info = await self._call(token, "sandbox_info")
            skills = await self._call(token, "list_skills")
            tools = await self._call(token, "list_tools")
        except Problem as problem:
            return "", "", "", fmt.problem_text(problem)
        return (
            fmt.sandbox_facts(info),
            fmt.library_table(skills, "skills"),
            fmt.library_table(tools, "tools"),
            "",
        )

    async def reset(self, token: str | None) -> str:
        try:
            result = await self._call(token, "reset_sandbox")
        except Problem as problem:
            return fmt.problem_text(problem)
        if result.get("reset"):
            return "Sandbox reset: its files are gone, and your next call starts a fresh one."
        return "You had no sandbox; your next call starts one."

    # Operator

    async def admin_list(self, token: str | None) -> tuple[str, list[str], str]:
        """(table, principals with a sandbox, status)"""
        try:
            listing = await self._call(token, "admin_list_sandboxes")
        except Problem as problem:
            return "", [], fmt.problem_text(problem)
        return fmt.admin_table(listing), fmt.admin_choices(listing), ""

    async def admin_policy(self, token: str | None, principal: str | None, tool: str | None) -> str:
        """The policy in force, and the Decision for `principal` and `tool` when both are given."""
        who, what = (principal or "").strip(), (tool or "").strip()
        if bool(who) != bool(what):
            return "To explain a decision, give both a principal and a tool."
        arguments = {"principal": who, "tool": what} if who else {}
        try:
            policy = await self._call(token, "admin_policy", arguments)
        except Problem as problem:
            return fmt.problem_text(problem)
        return fmt.policy_view(policy)

    async def admin_remove(self, token: str | None, principal: str | None) -> str:
        if not principal:
            return "Choose a principal first."
        try:
            result = await self._call(token, "admin_remove_sandbox", {"principal": principal})
        except Problem as problem:
            return fmt.problem_text(problem)
        if result.get("reset"):
            return f"Removed the sandbox of **{principal}**."
        return f"**{principal}** had no sandbox any more."
