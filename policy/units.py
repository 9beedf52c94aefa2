"""Human-friendly values in policy files: sizes (`64m`, `1g`, `512k` or a plain number of bytes)
and octal file modes (`"0755"`)."""

import re
from typing import Annotated

from pydantic import BeforeValidator, Field

__all__ = ["Mode", "Size", "parse_size"]

_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_SIZE = re.compile(r"^\s*(\d+)\s*([bkmg]?)i?b?\s*$", re.IGNORECASE)


def parse_size(value: object) -> int:
    """Return `value` in bytes; raise ValueError for anything that is not a size."""
    if isinstance(value, bool):
        raise ValueError("a size must be a number of bytes or a string like '64m'")  # noqa: TRY004 - pydantic needs ValueError
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            return int(match.group(1)) * _UNITS[match.group(2).lower()]
    raise ValueError(f"not a size: {value!r} (use bytes or a string like '64m', '1g')")


def _octal(value: object) -> object:
    if isinstance(value, str):
        try:
            return int(value.removeprefix("0o"), 8)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an octal file mode like '0755'") from exc
    return value


Size = Annotated[int, BeforeValidator(parse_size)]
Mode = Annotated[int, BeforeValidator(_octal), Field(ge=0, le=0o7777)]
