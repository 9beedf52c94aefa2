"""Where the upstreams file's secrets come from: an environment variable or a file, read on the
gateway only. A `Secret` never shows its value in a repr, a log line or an error message."""

from __future__ import annotations

import os
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["HEADER_NAME", "Secret", "SecretSource", "SecretUnavailable", "looks_secret"]

#: An HTTP field name (RFC 9110 token).
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")
#: Header names whose values are credentials: they must come from an env var or a file.
_SECRET_HEADER = re.compile(r"auth|cookie|token|secret|key|passw|credential|session|signature", re.I)
_MAX_SECRET_BYTES = 64 * 1024


class SecretUnavailable(ValueError):
    """A secret's variable or file is missing, empty or unusable; the message names where it was
    looked for, never its value."""


class Secret:
    """A resolved secret: `reveal()` gives it to the one place that sends it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


def looks_secret(header: str) -> bool:
    """Whether a header's name says it carries a credential (Authorization, X-Api-Key, Cookie...)."""
    return bool(_SECRET_HEADER.search(header))


class SecretSource(BaseModel):
    """`{env: NAME}`, `{file: /path}` or, for values that are no secret, `{value: "..."}`; with an
    optional `prefix` put before it (`"Bearer "`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
    file: str | None = Field(default=None, min_length=1, max_length=4096)
    value: str | None = Field(default=None, repr=False)
    prefix: str = Field(default="", max_length=64)

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretSource:
        given = [key for key in ("env", "file", "value") if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of env, file or value")
        if self.file is not None and not Path(self.file).is_absolute():
            raise ValueError("file must be an absolute path")
        return self

    @property
    def is_literal(self) -> bool:
        return self.value is not None

    def where(self) -> str:
        """Where the value comes from, for messages (never the value)."""
        if self.env is not None:
            return f"env var {self.env}"
        return f"file {self.file}" if self.file is not None else "literal value"

    def read(self) -> Secret:
        """The prefix and the value, read now; SecretUnavailable when missing, empty or unfit for
        an HTTP header or environment (control characters)."""
        if self.env is not None:
            raw = os.environ.get(self.env, "")
        elif self.file is not None:
            raw = _read_file(Path(self.file))
        else:
            raw = self.value or ""
        if not raw:
            raise SecretUnavailable(f"{self.where()} is not set or empty")
        value = self.prefix + raw
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise SecretUnavailable(f"{self.where()} holds a control character or a line break")
        return Secret(value)


def _read_file(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise SecretUnavailable(
            f"file {path} cannot be read ({exc.strerror or type(exc).__name__})"
        ) from None
    if len(data) > _MAX_SECRET_BYTES:
        raise SecretUnavailable(f"file {path} is larger than {_MAX_SECRET_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretUnavailable(f"file {path} is not UTF-8 text") from None
    # A secrets file usually ends with a line break; only that is dropped.
    return text.removesuffix("\n").removesuffix("\r")
