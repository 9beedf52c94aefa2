"""The read-only /skills and /tools trees: host directories mounted into every sandbox, listed by
the list_skills / list_tools tools and published as MCP resources (skills:///PATH, tools:///PATH)."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

__all__ = ["Library", "LibraryEntry", "LibraryListing"]

_MAX_FILES = 2000


class LibraryEntry(BaseModel):
    path: str = Field(description="Path inside the sandbox, e.g. /skills/textstats.py")
    size: int
    summary: str = Field(description="First line of a Python module's docstring, else empty")
    uri: str = Field(description="The MCP resource with the file's content")


class LibraryListing(BaseModel):
    """The files of a read-only tree mounted into every sandbox."""

    mount: str
    entries: list[LibraryEntry]


def _summary(path: Path) -> str:
    if path.suffix != ".py":
        return ""
    try:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8", errors="replace")))
    except (SyntaxError, ValueError, OSError):
        return ""
    return doc.strip().splitlines()[0] if doc else ""


@dataclass(frozen=True, slots=True)
class Library:
    """One mounted tree (`root` on the host, `mount` in the sandbox)."""

    root: Path | None
    mount: str
    scheme: str

    def files(self) -> list[Path]:
        if self.root is None:
            return []
        root = self.root.resolve()
        found = [
            p
            for p in sorted(root.rglob("*"))
            if p.is_file()
            and not p.is_symlink()
            and p.resolve().is_relative_to(root)
            and not any(part.startswith(".") for part in p.parts)
        ]
        return found[:_MAX_FILES]

    def listing(self) -> LibraryListing:
        entries = []
        if self.root is not None:
            root = self.root.resolve()
            for path in self.files():
                relative = path.relative_to(root).as_posix()
                entries.append(
                    LibraryEntry(
                        path=f"{self.mount}/{relative}",
                        size=path.stat().st_size,
                        summary=_summary(path),
                        uri=f"{self.scheme}:///{relative}",
                    )
                )
        return LibraryListing(mount=self.mount, entries=entries)

    def read(self, relative: str) -> str:
        """A file's text (for the MCP resource); only files that listing() shows can be read."""
        if self.root is None:
            raise FileNotFoundError(relative)
        root = self.root.resolve()
        target = (root / relative).resolve()
        if target not in self.files() or not target.is_relative_to(root):
            raise FileNotFoundError(relative)
        return target.read_text(encoding="utf-8", errors="replace")
