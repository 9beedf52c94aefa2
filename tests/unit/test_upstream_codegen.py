"""`tools generate`: typed keyword-only functions, hostile upstreams that cannot inject code or
escape the output directory, byte-for-byte determinism, and only its own directories touched."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import random
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import anyio
import pytest

from gateway.calls.library import Library
from gateway.errors import InvalidArgument, ToolGenerationError, UpstreamUnavailable
from gateway.upstream import GenerationReport, UpstreamTool, generate
from gateway.upstream.output import MARKER

pytestmark = pytest.mark.anyio

STUB = '''\
"""The sandbox runtime's stand-in: records each call."""
calls = []
results = {}


def call_tool(server, tool, arguments):
    calls.append((server, tool, arguments))
    return results.get(tool, {"ok": True})
'''
#: What every generated tool module is, at the top level, and nothing else.
SHAPE = [ast.Expr, ast.ImportFrom, ast.ImportFrom, ast.Assign, ast.FunctionDef]


def tool(
    name: str, server: str = "notes", description: str = "Does a thing.", defs: Any = None, **schema: Any
) -> UpstreamTool:
    input_schema = {"type": "object", "properties": {}, **schema}
    if defs is not None:
        input_schema["$defs"] = defs
    return UpstreamTool(server, name, description, input_schema, None)


SEARCH = tool(
    "search_notes",
    description="Search notes.\n\nMatches words in titles and bodies.",
    properties={
        "query": {"type": "string", "description": "Words to look for."},
        "limit": {"type": "integer", "default": 5},
        "min-score": {"type": "number"},
        "exact": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "filters": {"type": "object"},
        "order": {"enum": ["new", "old"]},
        "since": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "class": {"type": "string"},
        "anything": {},
        "kind": {"$ref": "#/$defs/Kind"},
        "matrix": {"type": "array", "items": {"type": "array", "items": {"type": ["integer", "null"]}}},
    },
    required=["query", "class", "since"],
    defs={"Kind": {"enum": ["a", "b", None]}},
)
READ = tool("read_note", properties={"id": {"type": "string"}}, required=["id"])


class FakeUpstreams:
    """Upstream servers by name and their tools; a server in `down` cannot be listed."""

    def __init__(self, tools: dict[str, list[UpstreamTool]], down: tuple[str, ...] = ()) -> None:
        self.tools, self.down = tools, down

    def servers(self) -> list[str]:
        return [*self.tools, *self.down]

    async def list_tools(self, server: str) -> list[UpstreamTool]:
        if server in self.down:
            raise UpstreamUnavailable(f"upstream {server} is unavailable: cannot connect to the upstream")
        return list(self.tools[server])


async def run(out: Path, tools: dict[str, list[UpstreamTool]], **kw: Any) -> GenerationReport:
    down = kw.pop("down", ())
    return await generate(FakeUpstreams(tools, down), out, **kw)


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def stub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """A stub `sgw_tools` on sys.path; generated packages are imported as `gen_<random>`."""
    (tmp_path / "stub").mkdir()
    (tmp_path / "stub" / "sgw_tools.py").write_text(STUB)
    monkeypatch.syspath_prepend(str(tmp_path / "stub"))
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield importlib.import_module("sgw_tools")
    for name in set(sys.modules) - before:
        del sys.modules[name]


def load(out: Path, dotted: str) -> ModuleType:
    return importlib.import_module(f"{out.name}.{dotted}")


def out_dir(tmp_path: Path) -> Path:
    return tmp_path / f"gen_{uuid.uuid4().hex[:8]}"


async def test_a_tool_becomes_a_typed_keyword_only_function(tmp_path: Path, stub: ModuleType) -> None:
    out = out_dir(tmp_path)
    report = await run(out, {"notes": [SEARCH, READ]})
    assert report.tools == {"notes": ["read_note", "search_notes"]} and report.written == ["notes"]
    function = load(out, "notes.search_notes").search_notes
    signature = inspect.signature(function)
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in signature.parameters.values())
    types = {name: p.annotation for name, p in signature.parameters.items()}
    assert types == {
        "query": str,
        "class_": str,
        "since": str | None,
        "limit": int | None,
        "min_score": float | None,
        "exact": bool | None,
        "tags": list[str] | None,
        "filters": dict[str, Any] | None,
        "order": Literal["new", "old"] | None,
        "anything": Any,
        "kind": Literal["a", "b"] | None,
        "matrix": list[list[int | None]] | None,
    }
    required = [n for n, p in signature.parameters.items() if p.default is inspect.Parameter.empty]
    assert required == ["query", "since", "class_"]
    assert all(p.default is None for n, p in signature.parameters.items() if n not in required)
    doc = inspect.getdoc(function) or ""
    assert doc.startswith("Search notes.\n\nMatches words in titles and bodies.\n\nArgs:\n")
    assert (
        "query: Words to look for." in doc
        and "limit: (no description) Optional (the server's default: 5)" in doc
    )
    assert inspect.getdoc(load(out, "notes.search_notes")).splitlines()[0] == "Search notes."  # type: ignore[union-attr]


async def test_the_function_calls_call_tool_leaving_out_optional_nones(
    tmp_path: Path, stub: ModuleType
) -> None:
    out = out_dir(tmp_path)
    await run(out, {"notes": [SEARCH, READ]})
    package = load(out, "notes")
    assert package.__all__ == ["read_note", "search_notes"]
    assert package.search_notes(query="gateway", class_="x", since=None) == {"ok": True}
    package.search_notes(query="q", class_="c", since="2024", limit=3, min_score=0.5, tags=["a"])
    package.read_note(id="n1")
    assert stub.calls == [
        ("notes", "search_notes", {"query": "gateway", "class": "x", "since": None}),
        ("notes", "search_notes", {"query": "q", "class": "c", "since": "2024", "limit": 3, "min-score": 0.5,
                                   "tags": ["a"]}),
        ("notes", "read_note", {"id": "n1"}),
    ]  # fmt: skip
    with pytest.raises(TypeError):
        package.read_note("n1")  # keyword-only


async def test_a_result_the_sdk_wrapped_comes_back_unwrapped(tmp_path: Path, stub: ModuleType) -> None:
    """MCP SDK servers give a non-object result as {"result": value}, with an output schema of just
    that property; the generated function returns the value (any other result as it came)."""
    wrapper = {"type": "object", "properties": {"result": {"type": "integer"}}, "required": ["result"]}
    count = UpstreamTool("notes", "count", "Count notes.", {"type": "object", "properties": {}}, wrapper)
    plain = UpstreamTool(
        "notes", "plain", "A dict.", {"type": "object", "properties": {}}, {"type": "object"}
    )
    out = out_dir(tmp_path)
    await run(out, {"notes": [count, plain]})
    package = load(out, "notes")
    stub.results.update(count={"result": 42}, plain={"result": 1})
    assert package.count() == 42
    assert package.plain() == {"result": 1}, "unwrapped only where the schema says it is a wrapper"
    stub.results["count"] = "text, when the server gave no structured result"
    assert package.count() == "text, when the server gave no structured result"


HOSTILE_TEXT = (
    'Harmless first line """ + __import__("os").system("id") + """\n'
    '"""\nimport os\nos.system("rm -rf /")\n"""\\\n'
    'NUL \x00, CR \r, bidi \u202e, line sep \u2028, lone surrogate \ud800, end quote"'
)


async def test_a_hostile_upstream_cannot_inject_code_or_escape_the_directory(
    tmp_path: Path, stub: ModuleType
) -> None:
    out = out_dir(tmp_path)
    hostile = [
        tool("evil", description=HOSTILE_TEXT, properties={
            "x": {"type": "string", "description": HOSTILE_TEXT, "enum": ['a"""b', "c\\", "d\x00'"]},
            "y": {"type": "string", "default": HOSTILE_TEXT},
        }),
        tool("../escape"), tool("a/b"), tool("__init__"), tool("_private"), tool("9lives"), tool(""),
        tool("class"), tool("dup-name"), tool("dup_name"), tool("DUP_NAME"), tool("x" * 65),
        tool("bad_arg", properties={"not an identifier": {"type": "string"}}),
        tool("clash", properties={"a-b": {}, "a_b": {}}),
        tool("shadow", properties={"call_tool": {"type": "string"}, "arguments": {"type": "string"}}),
    ]  # fmt: skip
    report = await run(out, {"notes": hostile})
    # Of names that map to one module, the first in sorted order wins (whatever order they came in).
    assert report.tools == {"notes": ["DUP_NAME", "class", "evil", "shadow"]}
    skipped = "\n".join(report.warnings)
    for name in (
        "../escape",
        "a/b",
        "__init__",
        "_private",
        "9lives",
        "dup-name",
        "dup_name",
        "bad_arg",
        "clash",
    ):
        assert f"notes/{name}: skipped" in skipped
    assert sorted(files_of(out)) == sorted(
        [MARKER, "INDEX.md", "__init__.py", "index.json", f"notes/{MARKER}", "notes/__init__.py",
         "notes/class_.py", "notes/DUP_NAME.py", "notes/evil.py", "notes/shadow.py"]
    )  # fmt: skip
    assert not (tmp_path / "escape.py").exists() and not (tmp_path / "escape").exists()
    for path in (out / "notes").glob("*.py"):
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        assert [type(node) for node in tree.body] == SHAPE, path.name
        function = tree.body[-1]
        assert isinstance(function, ast.FunctionDef)
        kinds = [type(s) for s in function.body]
        assert kinds[:2] == [ast.Expr, ast.AnnAssign] and kinds[-1] is ast.Return
        assert set(kinds[2:-1]) <= {ast.If}
    module = load(out, "notes.evil")
    doc = ast.get_docstring(ast.parse((out / "notes" / "evil.py").read_text()), clean=False) or ""
    assert doc.splitlines()[0] == HOSTILE_TEXT.splitlines()[0] == module.__doc__.splitlines()[0]  # type: ignore[union-attr]
    assert HOSTILE_TEXT in (module.evil.__doc__ or "").replace("\n    ", "\n")
    assert (
        inspect.signature(module.evil).parameters["x"].annotation == Literal['a"""b', "c\\", "d\x00'"] | None
    )
    module.evil(x="c\\")
    assert stub.calls == [("notes", "evil", {"x": "c\\"})]
    shadow = load(out, "notes.shadow").shadow
    assert list(inspect.signature(shadow).parameters) == ["call_tool_", "arguments_"]
    shadow(call_tool_="a", arguments_="b")
    assert stub.calls[-1] == ("notes", "shadow", {"call_tool": "a", "arguments": "b"})
    assert load(out, "notes.class_").class_.__name__ == "class_"


async def test_the_output_is_the_same_bytes_for_the_same_tools(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    await run(first, {"notes": [SEARCH, READ], "calc": [tool("add", server="calc")]})
    shuffled = [READ, SEARCH]
    random.Random(7).shuffle(shuffled)
    await run(second, {"calc": [tool("add", server="calc")], "notes": shuffled})
    assert files_of(first) == files_of(second)
    again = await run(first, {"notes": [SEARCH, READ], "calc": [tool("add", server="calc")]})
    assert again.written == [] and again.unchanged == ["calc", "notes"]
    assert files_of(first) == files_of(second)


async def test_vanished_tools_and_servers_are_removed_an_unreachable_one_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "out"
    await run(
        out, {"notes": [SEARCH, READ], "calc": [tool("add", server="calc")], "old": [tool("x", server="old")]}
    )
    report = await run(out, {"notes": [READ], "calc": []}, down=("old",))
    assert not (out / "notes" / "search_notes.py").exists() and (out / "notes" / "read_note.py").exists()
    assert report.unavailable == {"old": "upstream old is unavailable: cannot connect to the upstream"}
    assert (out / "old" / "x.py").exists() and "from old import x" in (out / "INDEX.md").read_text()
    report = await run(out, {"notes": [READ]})
    assert report.removed == ["calc", "old"] and not (out / "old").exists() and not (out / "calc").exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [MARKER, "INDEX.md", "__init__.py", "index.json", "notes"]
    )


async def test_only_its_own_directories_are_touched(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the operator's")
    with pytest.raises(ToolGenerationError, match="not empty and was not made by"):
        await run(mine, {"notes": [READ]})
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    out = tmp_path / "out"
    await run(out, {"calc": [tool("add", server="calc")]})
    (out / "notes").mkdir()
    (out / "notes" / "own.py").write_text("# hand-written")
    before = files_of(out)
    with pytest.raises(ToolGenerationError, match="was not made by `tools generate`") as refused:
        await run(out, {"calc": [tool("add", server="calc")], "notes": [READ]})
    assert refused.value.code == "tools-generate-refused" and files_of(out) == before
    (out / "notes" / "own.py").unlink()
    (out / "notes").rmdir()
    (out / "notes").symlink_to(tmp_path / "mine", target_is_directory=True)
    with pytest.raises(ToolGenerationError):
        await run(out, {"notes": [READ]})
    assert (tmp_path / "mine" / "notes.txt").exists()


async def test_leftovers_of_an_interrupted_run_are_cleaned_and_modes_are_readable(tmp_path: Path) -> None:
    out = tmp_path / "out"
    await run(out, {"notes": [READ]})
    crashed = out / ".tmp-notes-deadbeef"
    crashed.mkdir()
    (crashed / MARKER).write_text("x")
    (out / ".tmp-INDEX.md-cafe").write_text("half")
    await run(out, {"notes": [READ, SEARCH]})
    assert not any(p.name.startswith((".tmp-", ".old-")) for p in out.iterdir())
    assert (out / "notes").stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()} == {0o644}


async def test_the_index_files_and_the_tools_listing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    await run(out, {"notes": [SEARCH, READ]}, package="upstream")
    index_md = (out / "INDEX.md").read_text()
    assert "- `from upstream.notes import search_notes`: Search notes." in index_md
    index = json.loads((out / "index.json").read_text())
    [notes] = index["servers"]
    assert notes["name"] == "notes" and [t["name"] for t in notes["tools"]] == ["read_note", "search_notes"]
    assert notes["tools"][1]["input_schema"] == SEARCH.input_schema
    listing = Library(out, "/tools", "tools").listing()
    summaries = {e.path: e.summary for e in listing.entries}
    assert summaries["/tools/notes/search_notes.py"] == "Search notes."
    assert f"/tools/notes/{MARKER}" not in summaries
    with pytest.raises(InvalidArgument):
        await run(out, {"notes": [READ]}, package="not a package")


def test_generate_runs_outside_pytest_anyio_too(tmp_path: Path) -> None:
    report = anyio.run(generate, FakeUpstreams({"notes": [READ]}), tmp_path / "o")
    assert report.tools == {"notes": ["read_note"]}
