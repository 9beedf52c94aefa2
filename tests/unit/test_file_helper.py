"""The file helper behind write_file, read_file and list_files (gateway/agent/file_helper.py), run
against a temporary directory standing in for /workspace: every operation, every refusal, atomic
writes, caps; and the argv the gateway builds for it."""

from __future__ import annotations

import base64
import errno
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.agent import file_helper
from gateway.agent.file_helper import answer, confine, list_dir, read, write
from gateway.calls.files import HELPER_PATH, file_argv, parse_file_result
from gateway.errors import FileError

HELPER_SOURCE = Path(file_helper.__file__)


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A workspace and, next to it, a directory it must never reach (with a secret and an empty
    directory a write could land in). Yields the workspace's real path and the outside."""
    base = tmp_path.resolve()
    root, outside = base / "ws", base / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("secret")
    (outside / "empty").mkdir()
    (base / "ws-sibling").mkdir()
    (base / "ws-sibling" / "file").write_text("sibling")
    before = _snapshot(base, root)
    yield str(root), outside
    assert _snapshot(base, root) == before, "nothing outside the workspace changed"


def _snapshot(base: Path, root: Path) -> dict[str, bytes | None]:
    """Every path under `base` but outside `root`, with the contents of its files."""
    seen: dict[str, bytes | None] = {}
    for path in sorted(base.rglob("*")):
        if path == root or root in path.parents:
            continue
        seen[str(path)] = path.read_bytes() if path.is_file() and not path.is_symlink() else None
    return seen


def _code(result: dict[str, object]) -> object:
    return result.get("error")


# -- write ---------------------------------------------------------------------------------------


def test_write_creates_a_file_with_its_parents_and_answers_its_real_path(tree: tuple[str, Path]) -> None:
    root, _ = tree
    assert write(root, "notes/deep/a.txt", "héllo\n".encode()) == {
        "size": 7,
        "path": f"{root}/notes/deep/a.txt",
    }
    assert Path(root, "notes/deep/a.txt").read_text() == "héllo\n"
    assert write(root, f"{root}/b.bin", bytes(range(256)))["path"] == f"{root}/b.bin"
    assert Path(root, "b.bin").read_bytes() == bytes(range(256))
    assert write(root, "empty", b"") == {"size": 0, "path": f"{root}/empty"}


def test_write_replaces_atomically_and_leaves_no_temporary_file(tree: tuple[str, Path]) -> None:
    """The new contents arrive by a rename: a reader holding the old file keeps reading the old
    contents, and the directory holds only the file afterwards."""
    root, _ = tree
    write(root, "a.txt", b"old contents")
    with open(Path(root, "a.txt"), "rb") as reader:
        write(root, "a.txt", b"new")
        assert reader.read() == b"old contents"
    assert Path(root, "a.txt").read_bytes() == b"new"
    assert os.listdir(root) == ["a.txt"]


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary_one(
    tree: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = tree
    write(root, "a.txt", b"kept")

    def full(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    assert answer(root, "write", ["a.txt", base64.b64encode(b"lost").decode()]) == {
        "error": "no-space",
        "message": os.strerror(28),
    }
    assert Path(root, "a.txt").read_bytes() == b"kept"
    assert os.listdir(root) == ["a.txt"]


def test_write_through_a_symlink_inside_replaces_its_target(tree: tuple[str, Path]) -> None:
    root, _ = tree
    Path(root, "real.txt").write_text("before")
    Path(root, "link").symlink_to("real.txt")
    assert write(root, "link", b"after")["path"] == f"{root}/real.txt"
    assert Path(root, "real.txt").read_text() == "after"


@pytest.mark.parametrize("path", ["", ".", "dir", "dir/", "/ROOT"])
def test_write_to_a_directory_is_refused(tree: tuple[str, Path], path: str) -> None:
    root, _ = tree
    Path(root, "dir").mkdir()
    result = answer(root, "write", [path.replace("/ROOT", root), "eA=="])
    assert _code(result) == "is-a-directory"


def test_write_under_a_file_is_not_a_directory(tree: tuple[str, Path]) -> None:
    root, _ = tree
    Path(root, "file").write_text("x")
    assert _code(answer(root, "write", ["file/sub/new", "eA=="])) == "not-a-directory"
    assert _code(answer(root, "read", ["file/sub", "10"])) == "not-a-directory"


def test_write_data_may_come_in_pieces_and_must_be_base64(tree: tuple[str, Path]) -> None:
    root, _ = tree
    encoded = base64.b64encode(b"x" * 3000).decode()
    pieces = [encoded[i : i + 1000] for i in range(0, len(encoded), 1000)]
    assert answer(root, "write", ["a", *pieces])["size"] == 3000
    assert _code(answer(root, "write", ["a", "%%%"])) == "invalid-argument"
    assert Path(root, "a").read_bytes() == b"x" * 3000


# -- read ----------------------------------------------------------------------------------------


def test_read_answers_data_size_and_whether_it_was_cut(tree: tuple[str, Path]) -> None:
    root, _ = tree
    Path(root, "big.txt").write_bytes(b"0123456789" * 1000)
    whole = read(root, "big.txt", 100_000)
    assert (base64.b64decode(str(whole["data"])), whole["size"], whole["truncated"]) == (
        b"0123456789" * 1000,
        10_000,
        False,
    )
    assert whole["path"] == f"{root}/big.txt"
    part = read(root, "big.txt", 15)
    assert (base64.b64decode(str(part["data"])), part["size"], part["truncated"]) == (
        b"012345678901234",
        10_000,
        True,
    )
    exact = read(root, "big.txt", 10_000)
    assert exact["truncated"] is False
    nothing = read(root, "big.txt", 0)
    assert (nothing["data"], nothing["truncated"]) == ("", True)
    Path(root, "empty").write_bytes(b"")
    assert read(root, "empty", 0) == {"size": 0, "data": "", "truncated": False, "path": f"{root}/empty"}


def test_read_is_binary_safe_and_follows_symlinks_inside(tree: tuple[str, Path]) -> None:
    root, _ = tree
    Path(root, "sub").mkdir()
    Path(root, "sub", "blob").write_bytes(bytes(range(256)))
    Path(root, "alias").symlink_to("sub")
    result = read(root, "alias/blob", 1000)
    assert base64.b64decode(str(result["data"])) == bytes(range(256))
    assert result["path"] == f"{root}/sub/blob"


@pytest.mark.parametrize(
    ("path", "args", "code"),
    [
        pytest.param("missing.txt", ["10"], "not-found", id="missing"),
        pytest.param("missing-dir/x", ["10"], "not-found", id="missing-parent"),
        pytest.param("", ["10"], "is-a-directory", id="the-workspace"),
        pytest.param("dir", ["10"], "is-a-directory", id="a-directory"),
        pytest.param("file", ["-1"], "invalid-argument", id="negative-cap"),
        pytest.param("file", ["many"], "invalid-argument", id="cap-not-a-number"),
        pytest.param("file", [], "invalid-argument", id="no-cap"),
    ],
)
def test_read_failures_have_their_codes(
    tree: tuple[str, Path], path: str, args: list[str], code: str
) -> None:
    root, _ = tree
    Path(root, "dir").mkdir()
    Path(root, "file").write_text("x")
    assert _code(answer(root, "read", [path, *args])) == code


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (PermissionError(errno.EACCES, "Permission denied"), "permission-denied"),
        (OSError(errno.ENOSPC, "No space left on device"), "no-space"),
        (OSError(errno.EFBIG, "File too large"), "file-too-large"),
        (OSError(errno.EROFS, "Read-only file system"), "read-only"),
        (OSError(errno.EIO, "Input/output error"), "io-error"),
    ],
)
def test_what_the_system_refuses_has_its_code(
    tree: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, error: OSError, code: str
) -> None:
    root, _ = tree
    Path(root, "file").write_text("x")

    def refuse(*_: object, **__: object) -> int:
        raise error

    monkeypatch.setattr(os, "open", refuse)
    for op, args in (("read", ["file", "10"]), ("write", ["new", "eA=="])):
        result = answer(root, op, args)
        assert _code(result) == code and result["message"], (op, result)
    assert os.listdir(root) == ["file"]


# -- list ----------------------------------------------------------------------------------------


def test_list_answers_entries_by_name_with_type_and_size(tree: tuple[str, Path]) -> None:
    root, outside = tree
    Path(root, "b.txt").write_bytes(b"12345")
    Path(root, "a-dir").mkdir()
    Path(root, "c-link").symlink_to(outside / "secret")
    os.mkfifo(Path(root, "d-fifo"))
    link_size = os.lstat(Path(root, "c-link")).st_size
    listing = list_dir(root, "")
    assert listing["path"] == root
    entries = listing["entries"]
    assert isinstance(entries, list)
    assert [(e["name"], e["type"]) for e in entries] == [
        ("a-dir", "dir"),
        ("b.txt", "file"),
        ("c-link", "symlink"),
        ("d-fifo", "other"),
    ]
    assert entries[1]["size"] == 5 and entries[2]["size"] == link_size, "symlinks are not followed"
    assert list_dir(root, ".") == listing == list_dir(root, root)
    assert list_dir(root, "a-dir") == {"entries": [], "path": f"{root}/a-dir"}


def test_list_stops_at_its_entry_cap(tree: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = tree
    for i in range(12):
        Path(root, f"f{i:02}").write_text("")
    monkeypatch.setattr(file_helper, "MAX_ENTRIES", 5)
    entries = list_dir(root, "")["entries"]
    assert isinstance(entries, list) and len(entries) == 5


def test_list_failures_have_their_codes(tree: tuple[str, Path]) -> None:
    root, _ = tree
    Path(root, "file").write_text("x")
    assert _code(answer(root, "list", ["missing"])) == "not-found"
    assert _code(answer(root, "list", ["file"])) == "not-a-directory"


def test_names_that_are_not_utf8_are_listed_and_reachable(tree: tuple[str, Path]) -> None:
    """A file name is bytes: one that is not UTF-8 comes back with surrogate escapes, as JSON, and
    the same name reaches the file again."""
    root, _ = tree
    with open(os.path.join(os.fsencode(root), b"caf\xe9"), "wb") as handle:
        handle.write(b"latin-1")
    entries = list_dir(root, "")["entries"]
    assert isinstance(entries, list)
    name = str(entries[0]["name"])
    assert name == "caf\udce9"
    assert json.loads(json.dumps(answer(root, "list", [""])))["entries"][0]["name"] == name
    assert base64.b64decode(str(read(root, name, 100)["data"])) == b"latin-1"
    assert write(root, "d\udcffir/new", b"x")["path"] == f"{root}/d\udcffir/new"


def test_operation_and_arguments_are_checked(tree: tuple[str, Path]) -> None:
    root, _ = tree
    assert _code(answer(root, "delete", ["a"])) == "invalid-argument"
    assert _code(answer(root, "read", [])) == "invalid-argument"


# -- confinement ---------------------------------------------------------------------------------

#: Paths that name something outside the workspace, by text alone. ROOT stands for the workspace's
#: path, OUTSIDE for a directory next to it.
ESCAPES_BY_TEXT = [
    "..",
    "../",
    "../outside/secret",
    "../outside/empty/new",
    "a/../../outside/secret",
    "a/b/c/../../../../outside/secret",
    "./../outside",
    "x/" + "../" * 50 + "etc/passwd",
    "../" * 5000 + "etc/passwd",
    "/",
    "/etc/passwd",
    "/tmp/x",
    "//etc/passwd",
    "ROOT/..",
    "ROOT/../outside/secret",
    "ROOT/./../outside/empty/new",
    "ROOT-sibling/file",
    "ROOT/../ws-sibling/file",
    "OUTSIDE/secret",
    "OUTSIDE/empty/new",
]


def _fill(path: str, root: str, outside: Path) -> str:
    return path.replace("ROOT", root).replace("OUTSIDE", str(outside))


@pytest.mark.parametrize("path", ESCAPES_BY_TEXT)
@pytest.mark.parametrize("op", ["write", "read", "list"])
def test_paths_leaving_the_workspace_are_refused(tree: tuple[str, Path], path: str, op: str) -> None:
    root, outside = tree
    args = {"write": ["c2VjcmV0"], "read": ["100"], "list": []}[op]
    result = answer(root, op, [_fill(path, root, outside), *args])
    assert _code(result) == "path-outside-workspace", result


def test_each_way_out_is_named(tree: tuple[str, Path]) -> None:
    root, outside = tree
    Path(root, "out").symlink_to(outside)
    messages = {
        path: answer(root, "read", [path, "10"])["message"]
        for path in ("/etc/passwd", "../outside/secret", "out/secret")
    }
    assert messages == {
        "/etc/passwd": f"only paths under {root} are reachable",
        "../outside/secret": f"the path leaves {root}",
        "out/secret": f"the path resolves outside {root} (symlink)",
    }


def _symlinks(root: Path, outside: Path) -> None:
    """Links planted in the workspace, every one of which leads out of it."""
    (root / "to-etc").symlink_to("/etc")
    (root / "to-outside").symlink_to(outside)
    (root / "to-secret").symlink_to(outside / "secret")
    (root / "up").symlink_to("..")
    (root / "relative-out").symlink_to("../outside/secret")
    (root / "dangling-out").symlink_to(outside / "not-yet")
    (root / "chain-1").symlink_to("chain-2")
    (root / "chain-2").symlink_to("to-outside")
    (root / "to-sibling").symlink_to(str(root) + "-sibling")
    (root / "inner").mkdir()
    (root / "inner" / "back-out").symlink_to("../../outside")
    (root / "to-root-parent").symlink_to(root.parent)


#: Paths that leave the workspace through symlinks planted in it (see _symlinks).
ESCAPES_BY_SYMLINK = [
    "to-etc",
    "to-etc/passwd",
    "to-outside",
    "to-outside/secret",
    "to-outside/empty/new",
    "to-outside/new-dir/new",
    "to-secret",
    "up",
    "up/outside/secret",
    "relative-out",
    "dangling-out",
    "chain-1/secret",
    "chain-1/empty/new",
    "to-sibling/file",
    "inner/back-out/secret",
    "inner/back-out/empty/new",
    "to-root-parent/outside/secret",
    "ROOT/to-outside/secret",
]


@pytest.mark.parametrize("path", ESCAPES_BY_SYMLINK)
@pytest.mark.parametrize("op", ["write", "read", "list"])
def test_symlinks_resolving_outside_are_refused(tree: tuple[str, Path], path: str, op: str) -> None:
    root, outside = tree
    _symlinks(Path(root), outside)
    args = {"write": ["c2VjcmV0"], "read": ["100"], "list": []}[op]
    result = answer(root, op, [_fill(path, root, outside), *args])
    assert _code(result) == "path-outside-workspace", result


def _loops(root: Path, outside: Path) -> None:
    (root / "self").symlink_to("self")
    (root / "ping").symlink_to("pong")
    (root / "pong").symlink_to("ping")
    (outside / "hop").symlink_to(root / "via-outside")
    (root / "via-outside").symlink_to(outside / "hop")


@pytest.mark.parametrize("path", ["self", "ping", "pong/x", "via-outside", "via-outside/x"])
def test_symlink_loops_cannot_be_read_or_listed(tree: tuple[str, Path], path: str) -> None:
    """A loop cannot be resolved, inside the workspace or through the outside: ELOOP."""
    root, outside = tree
    _loops(Path(root), outside)
    try:
        loop = {"error": "io-error", "message": os.strerror(errno.ELOOP)}
        assert answer(root, "read", [path, "100"]) == loop
        assert answer(root, "list", [path]) == loop
    finally:
        (outside / "hop").unlink()


@pytest.mark.parametrize("path", ["self", "ping", "via-outside"])
def test_writing_to_a_symlink_loop_replaces_the_link_in_the_workspace(
    tree: tuple[str, Path], path: str
) -> None:
    """The path names the link itself: the rename puts the file in its place, in the workspace."""
    root, outside = tree
    _loops(Path(root), outside)
    try:
        assert write(root, path, b"x") == {"size": 1, "path": f"{root}/{path}"}
        assert Path(root, path).read_bytes() == b"x" and not Path(root, path).is_symlink()
        assert (outside / "hop").is_symlink()
    finally:
        (outside / "hop").unlink()


def test_nul_bytes_and_unencodable_names_are_refused(tree: tuple[str, Path]) -> None:
    root, _ = tree
    for path in ("a\x00b", "\x00", "ok/\x00/../x", "\ud800", "a/\udfff"):
        for op, args in (("write", ["eA=="]), ("read", ["100"]), ("list", [])):
            assert _code(answer(root, op, [path, *args])) == "invalid-argument", (op, path)


def test_very_long_names_fail_cleanly(tree: tuple[str, Path]) -> None:
    root, _ = tree
    long_name = "n" * 300
    deep = "d/" * 3000 + "x"
    assert answer(root, "write", [long_name, "eA=="]) == {
        "error": "io-error",
        "message": os.strerror(36),
    }
    assert _code(answer(root, "read", [long_name, "10"])) == "io-error"
    assert _code(answer(root, "read", [deep, "10"])) in ("io-error", "not-found")
    assert _code(answer(root, "list", ["../" + long_name])) == "path-outside-workspace"
    assert os.listdir(root) == []


def test_the_workspace_itself_and_paths_spelled_oddly_stay_inside(tree: tuple[str, Path]) -> None:
    root, _ = tree
    Path(root, "a").mkdir()
    for path in ("", ".", "./", root, root + "/", "a/..", "a/../a/..", root + "/a/../.", "a//..//"):
        assert confine(root, path) == root, path
    assert confine(root, "..a") == f"{root}/..a"
    assert confine(root, "a/...") == f"{root}/a/..."
    assert confine(root, "%2e%2e/x") == f"{root}/%2e%2e/x"


# -- the command line, as the sandbox runs it ----------------------------------------------------


def test_the_command_line_is_isolated_from_what_the_code_can_write(tmp_path: Path) -> None:
    """Run as in the sandbox, `python3 -I -S files.py`, from a directory full of hostile modules that
    are also on PYTHONPATH, and from next to one: the helper still answers itself."""
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    forged = "import sys\nsys.stdout.write('{\"forged\": true}\\n')\nsys.exit(0)\n"
    for name in ("json", "base64", "binascii", "errno", "contextlib", "sitecustomize", "usercustomize"):
        (hostile / f"{name}.py").write_text(forged)
    installed = hostile / "files.py"
    installed.write_bytes(HELPER_SOURCE.read_bytes())
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(hostile)}
    proc = subprocess.run(
        [sys.executable, "-I", "-S", str(installed), "read", "no-such-file-here", "10"],
        cwd=hostile,
        env=environment,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"error": "not-found", "message": "no such file or directory"}
    usage = subprocess.run(
        [sys.executable, "-I", "-S", str(installed)], capture_output=True, timeout=30, check=False
    )
    assert json.loads(usage.stdout)["error"] == "invalid-argument"


# -- the gateway's side --------------------------------------------------------------------------


def test_file_argv_runs_the_installed_helper_isolated() -> None:
    """No timeout in the argv: it travels in the request, as for code (the executor applies it)."""
    helper = ["python3", "-I", "-S", HELPER_PATH]
    assert HELPER_PATH == "/opt/sandbox-gateway/files.py"
    assert file_argv("write", "a.txt", data=b"hi") == [*helper, "write", "a.txt", "aGk="]
    assert file_argv("read", "a.txt", cap=100) == [*helper, "read", "a.txt", "100"]
    assert file_argv("list", "/workspace") == [*helper, "list", "/workspace"]


@pytest.mark.parametrize("size", [0, 1, 200_000, 1_000_000])
def test_what_file_argv_sends_is_what_the_helper_reads(tree: tuple[str, Path], size: int) -> None:
    """The gateway's argv, from the helper's operation on, fed to the helper: the data survives
    the split into argv pieces, and the answer parses back."""
    root, _ = tree
    data = os.urandom(size)
    argv = file_argv("write", "sub/data.bin", data=data)
    rest = argv[argv.index(HELPER_PATH) + 1 :]
    written = parse_file_result(0, json.dumps(answer(root, rest[0], rest[1:])).encode(), b"")
    assert written == {"size": size, "path": f"{root}/sub/data.bin"}
    argv = file_argv("read", "sub/data.bin", cap=size)
    rest = argv[argv.index(HELPER_PATH) + 1 :]
    got = parse_file_result(0, json.dumps(answer(root, rest[0], rest[1:])).encode(), b"")
    assert base64.b64decode(got["data"]) == data and got["truncated"] is False


def test_parse_file_result_turns_errors_and_broken_runs_into_file_errors() -> None:
    assert parse_file_result(0, b'noise\n{"size": 1, "path": "/workspace/a"}\n', b"") == {
        "size": 1,
        "path": "/workspace/a",
    }
    with pytest.raises(FileError) as refused:
        parse_file_result(0, b'{"error": "path-outside-workspace", "message": "no"}\n', b"")
    assert (refused.value.code, str(refused.value)) == ("path-outside-workspace", "no")
    for stdout in (b"", b"not json\n", b"[1, 2]\n"):
        with pytest.raises(FileError) as broken:
            parse_file_result(124, stdout, b"")
        assert broken.value.code == "file-operation-failed"
    missing = f"python3: can't open file '{HELPER_PATH}': [Errno 2] No such file or directory\n"
    with pytest.raises(FileError) as old_image:
        parse_file_result(2, b"", missing.encode())
    assert old_image.value.code == "file-operation-failed" and "sandbox-gateway setup" in str(old_image.value)
