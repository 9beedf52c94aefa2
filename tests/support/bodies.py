"""Editing a request body the way a test of a boundary does: one field changed, or removed."""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["REMOVE", "edited"]

#: As `value`: remove the field instead.
REMOVE: Any = KeyError


def edited(body: dict[str, Any], path: str, value: Any = REMOVE, *, sep: str = "/") -> dict[str, Any]:
    """A deep copy of `body` with the field at `path` (keys joined by `sep`) set to `value`."""
    changed = copy.deepcopy(body)
    *parents, last = path.split(sep)
    node = changed
    for key in parents:
        node = node[key]
    if value is REMOVE:
        del node[last]
    else:
        node[last] = value
    return changed
