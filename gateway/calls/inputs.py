"""Checks of tool arguments the schema cannot express; a bad one is refused with `invalid-argument`."""

from __future__ import annotations

import base64
import binascii
import re

from gateway.errors import InvalidArgument
from policy.model import TOOL_NAMES

__all__ = ["check_code", "check_explain_target", "check_path", "decode_content"]

#: Principal names as credentials spell them (see gateway.auth.tokens.PRINCIPAL_ID).
_PRINCIPAL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")


def check_path(path: object) -> str:
    if not isinstance(path, str):
        raise InvalidArgument(f"path must be a string, not {type(path).__name__}")
    if "\x00" in path:
        raise InvalidArgument("path contains a NUL byte")
    if len(path) > 4096:
        raise InvalidArgument("path is longer than 4096 characters")
    return path


def decode_content(content: object, encoding: object) -> bytes:
    if not isinstance(content, str):
        raise InvalidArgument(f"content must be a string, not {type(content).__name__}")
    if encoding == "utf-8":
        return content.encode()
    if encoding == "base64":
        try:
            return base64.b64decode(content, validate=True)
        except binascii.Error as exc:
            raise InvalidArgument("content is not valid base64") from exc
    raise InvalidArgument("encoding must be 'utf-8' or 'base64'")


def check_code(code: object, name: str) -> str:
    if not isinstance(code, str):
        raise InvalidArgument(f"{name} must be a string, not {type(code).__name__}")
    if not code.strip():
        raise InvalidArgument(f"{name} is empty")
    if "\x00" in code:
        raise InvalidArgument(f"{name} contains a NUL byte")
    return code


def check_explain_target(principal: object, tool: object) -> tuple[str, str] | None:
    """`admin_policy`'s optional pair: both given (a principal name and a known tool) or neither."""
    if principal is None and tool is None:
        return None
    if principal is None or tool is None:
        raise InvalidArgument("give both principal and tool to have a Decision explained, or neither")
    if not isinstance(principal, str) or not _PRINCIPAL.match(principal):
        raise InvalidArgument("principal must be 1-128 of A-Z a-z 0-9 . _ @ - (starting alphanumeric)")
    if not isinstance(tool, str) or tool not in TOOL_NAMES:
        raise InvalidArgument(f"tool must be one of {sorted(TOOL_NAMES)}")
    return principal, tool
