"""A profile's `interpreter` key: how run_python's long-lived interpreter is bounded.

The interpreter lives in the principal's sandbox, under its limits (memory, pids, seccomp, network),
and each call is bounded like any execution (`exec.*` timeouts and output caps). These add what only
a kept interpreter has: how long it may sit idle holding memory, how long code has to stop after its
timeout's interrupt, and how much rich output (values, tables, images) one call may return.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from policy.model_base import Strict
from policy.units import Size

__all__ = ["InterpreterLimits"]


class InterpreterLimits(Strict):
    """Bounds of run_python's interpreter (every field: larger is weaker)."""

    #: Ended after this long without a call; the next call starts a fresh one and says state was lost.
    idle_timeout_s: float = Field(default=900.0, gt=0, le=86400)
    #: At a call's timeout the code gets KeyboardInterrupt; still running this long after, the
    #: interpreter is killed and its state is lost.
    interrupt_grace_s: float = Field(default=2.0, ge=0.1, le=60)
    #: A final expression's repr is cut at this many characters.
    max_value_chars: int = Field(default=64 * 1024, gt=0, le=1024 * 1024)
    #: Each rich text output (a Markdown table, HTML, SVG) is cut at this many characters (and one
    #: call's text outputs together at 1 MiB).
    max_text_chars: int = Field(default=256 * 1024, gt=0, le=1024 * 1024)
    #: Images (PNG) one call may return, and their bytes together.
    max_images: int = Field(default=8, ge=0, le=64)
    max_image_bytes: Size = 4 * 1024**2
    #: A DataFrame is shown as its first rows only.
    max_table_rows: int = Field(default=50, gt=0, le=10_000)

    @model_validator(mode="after")
    def _image_bytes_bounded(self) -> InterpreterLimits:
        if not 0 <= self.max_image_bytes <= 8 * 1024**2:  # with the text, within one answer's 24 MiB
            raise ValueError("max_image_bytes must be between 0 and 8 MiB")
        return self

    def caps(self) -> dict[str, int]:
        """The caps the interpreter applies itself (the gateway checks them again)."""
        return {
            "value": self.max_value_chars,
            "text": self.max_text_chars,
            "images": self.max_images,
            "image_bytes": self.max_image_bytes,
            "rows": self.max_table_rows,
        }
