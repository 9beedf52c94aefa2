"""The base of every policy model: unknown keys fail the load, and a loaded model is frozen."""

from collections.abc import Mapping
from typing import Any, Self

from pydantic import BaseModel, ConfigDict

__all__ = ["Strict"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy; one with changes does not keep the values cached from the original (a frozen
        model caches what it computes, such as a spec's digest, in private attributes)."""
        copy = super().model_copy(update=update, deep=deep)
        if update and copy.__pydantic_private__:
            copy.__pydantic_private__ = dict.fromkeys(copy.__pydantic_private__)
        return copy
