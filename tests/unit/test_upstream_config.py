"""The upstreams file: what it accepts, each way it is refused, and that no secret shows."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

from gateway.errors import ConfigError, UpstreamConfigError
from gateway.upstream import load_upstreams, load_upstreams_text
from gateway.upstream.config import HttpServer, StdioServer
from gateway.upstream.credentials import Secret

SECRET = "s3cr3t-VALUE-never-shown"


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(SECRET + "\n")
    return path


@pytest.fixture
def env_token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("NOTES_TOKEN", SECRET)
    return "NOTES_TOKEN"


def _file(servers: Mapping[str, object]) -> str:
    return yaml.safe_dump({"servers": servers})


def _http(**extra: object) -> dict[str, object]:
    return {"transport": "http", "url": "https://notes.internal/mcp", "tools": ["search_notes"], **extra}


def _stdio(**extra: object) -> dict[str, object]:
    return {"transport": "stdio", "command": ["python3", "-m", "files_server"], "tools": "*", **extra}


def _refused(servers: Mapping[str, object]) -> str:
    with pytest.raises(UpstreamConfigError) as refused:
        load_upstreams_text(_file(servers), source="up.yaml")
    return refused.value.message


def test_the_documented_example_loads(env_token: str, token_file: Path, tmp_path: Path) -> None:
    text = textwrap.dedent(f"""\
        servers:
          notes:
            transport: http
            url: https://notes.internal/mcp
            headers:
              Authorization: {{env: NOTES_TOKEN, prefix: "Bearer "}}
              X-Client: {{value: sandbox-gateway}}
            tools: [search_notes, read_note]
            timeout_s: 30
          notes-oauth:
            transport: http
            url: http://127.0.0.1:9000/mcp
            oauth:
              token_url: https://id.internal/token
              client_id: gateway
              client_secret_file: {token_file}
              scope: notes.read
              resource: https://notes.internal/mcp
            tools: "*"
          files:
            transport: stdio
            command: [python3, -m, files_server]
            env: {{FILES_ROOT: /srv/files, API_KEY: {{file: {token_file}}}}}
            cwd: {tmp_path}
            tools: "*"
        """)
    config = load_upstreams_text(text)
    assert list(config.servers) == ["notes", "notes-oauth", "files"]
    notes, files = config.servers["notes"], config.servers["files"]
    assert isinstance(notes, HttpServer) and isinstance(files, StdioServer)
    assert notes.exposes("read_note") and not notes.exposes("delete_note")
    assert files.exposes("anything") and config.module("notes-oauth") == "notes_oauth"
    assert notes.headers["Authorization"].read().reveal() == f"Bearer {SECRET}"
    assert files.env["FILES_ROOT"] == "/srv/files"


def test_an_empty_file_has_no_servers() -> None:
    assert load_upstreams_text("").servers == {}


@pytest.mark.parametrize(
    ("servers", "says"),
    [
        ({"notes": _http(colour="red")}, "servers.notes.colour: unknown key"),
        ({"notes": _http(transport="grpc")}, "servers.notes"),
        ({"notes": _http(tools=[])}, "servers.notes.tools"),
        ({"notes": _http(tools="all")}, "servers.notes.tools"),
        ({"notes": _http(tools=["a", "a"])}, "a tool is listed twice"),
        ({"notes": _http(timeout_s=0)}, "servers.notes.timeout_s"),
        ({"notes": _http(timeout_s="30")}, "servers.notes.timeout_s"),
        ({"notes": _http(url="ftp://notes.internal/mcp")}, "absolute http:// or https:// URL"),
        ({"notes": _http(url="notes.internal/mcp")}, "absolute http:// or https:// URL"),
        ({"notes": _http(url="http://notes.internal/mcp")}, "only to a loopback address"),
        ({"notes": _http(url="https://user:pw@notes.internal/mcp")}, "must not carry credentials"),
        ({"notes": _http(headers={"Authorization": {"value": "Bearer x"}})}, "carries a credential"),
        ({"notes": _http(headers={"X-Api-Key": {"value": "x"}})}, "carries a credential"),
        ({"notes": _http(headers={"Bad Header": {"value": "x"}})}, "not a valid HTTP field name"),
        ({"notes": _http(headers={"Host": {"value": "x"}})}, "set by the MCP transport"),
        ({"notes": _http(headers={"X-A": {"env": "A", "value": "b"}})}, "exactly one of env, file or value"),
        ({"notes": _http(headers={"X-A": {"file": "relative/path"}})}, "absolute path"),
        ({"notes": _http(headers={"X-A": "plain"})}, "servers.notes.headers.X-A"),
        ({"files": _stdio(command=[])}, "servers.files.command"),
        ({"files": _stdio(cwd="srv")}, "cwd must be an absolute path"),
        ({"files": _stdio(env={"BAD-NAME": "x"})}, "env var name"),
        ({"files": _stdio(url="https://x")}, "servers.files.url: unknown key"),
        ({"bad name": _stdio()}, "server 'bad name'"),
        ({"9lives": _stdio()}, "server '9lives'"),
        ({"_private": _stdio()}, "server '_private'"),
        ({"x" * 65: _stdio()}, "server 'xxx"),
        ({"class": _stdio()}, "Python keyword"),
        ({"json": _stdio()}, "would shadow a Python module"),
        ({"sgw_tools": _stdio()}, "would shadow a Python module"),
        ({"a-b": _stdio(), "a_b": _stdio()}, "map to one module name"),
    ],
)
def test_each_mistake_is_refused_naming_where(servers: dict[str, object], says: str) -> None:
    message = _refused(servers)
    assert message.startswith("up.yaml: ") and says in message


def test_http_to_a_remote_host_needs_the_operator_to_say_so() -> None:
    assert load_upstreams_text(
        _file({"notes": _http(url="http://notes.internal/mcp", allow_insecure_http=True)})
    )
    assert load_upstreams_text(_file({"notes": _http(url="http://localhost:8080/mcp")}))
    assert load_upstreams_text(_file({"notes": _http(url="http://[::1]:8080/mcp")}))


def test_oauth_needs_one_secret_and_excludes_an_authorization_header(token_file: Path) -> None:
    oauth = {"token_url": "https://id.internal/token", "client_id": "gw"}
    assert "exactly one of client_secret_file" in _refused({"n": _http(oauth=oauth)})
    both = {**oauth, "client_secret_file": str(token_file), "client_secret_env": "X"}
    assert "exactly one of client_secret_file" in _refused({"n": _http(oauth=both)})
    with_file = {**oauth, "client_secret_file": str(token_file)}
    header = {"Authorization": {"file": str(token_file)}}
    assert "either oauth or an Authorization header" in _refused(
        {"n": _http(oauth=with_file, headers=header)}
    )
    insecure = {**with_file, "token_url": "http://id.internal/token"}
    assert "only to a loopback address" in _refused({"n": _http(oauth=insecure)})


def test_a_duplicate_key_is_refused() -> None:
    text = "servers:\n  notes:\n    transport: stdio\n    command: [a]\n    tools: '*'\n    tools: [x]\n"
    with pytest.raises(UpstreamConfigError, match="duplicate key 'tools'"):
        load_upstreams_text(text)


@pytest.mark.parametrize("text", ["- a list", "servers: [", "42"])
def test_what_is_not_a_mapping_of_servers_is_refused(text: str) -> None:
    with pytest.raises(UpstreamConfigError):
        load_upstreams_text(text)


def test_a_missing_or_empty_env_var_fails_the_load_naming_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTES_TOKEN", raising=False)
    header = {"Authorization": {"env": "NOTES_TOKEN", "prefix": "Bearer "}}
    message = _refused({"notes": _http(headers=header)})
    assert message == "up.yaml: servers.notes.headers.Authorization: env var NOTES_TOKEN is not set or empty"
    monkeypatch.setenv("NOTES_TOKEN", "")
    assert "env var NOTES_TOKEN is not set or empty" in _refused({"notes": _http(headers=header)})
    monkeypatch.delenv("FILES_KEY", raising=False)
    stdio_env = {"KEY": {"env": "FILES_KEY"}}
    assert _refused({"files": _stdio(env=stdio_env)}).startswith(
        "up.yaml: servers.files.env.KEY: env var FILES_KEY"
    )


def test_a_missing_or_empty_file_fails_the_load_naming_the_server(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    message = _refused({"notes": _http(headers={"Authorization": {"file": str(missing)}})})
    assert message.startswith(f"up.yaml: servers.notes.headers.Authorization: file {missing} cannot be read")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert "is not set or empty" in _refused(
        {"notes": _http(headers={"Authorization": {"file": str(empty)}})}
    )
    oauth = {"token_url": "https://id.internal/token", "client_id": "gw", "client_secret_file": str(missing)}
    assert _refused({"notes": _http(oauth=oauth)}).startswith("up.yaml: servers.notes.oauth: file")
    assert "is not a directory" in _refused({"files": _stdio(cwd=str(missing))})


def test_no_secret_shows_in_a_repr_or_an_error(
    env_token: str, token_file: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    servers = {
        "notes": _http(headers={"Authorization": {"env": env_token, "prefix": "Bearer "}}),
        "files": _stdio(env={"LITERAL": SECRET, "KEY": {"file": str(token_file)}}),
    }
    config = load_upstreams_text(_file(servers))
    notes = config.servers["notes"]
    assert isinstance(notes, HttpServer)
    shown = repr(config) + str(config) + repr(notes.headers["Authorization"].read())
    assert SECRET not in shown and repr(Secret(SECRET)) == "Secret('***')"
    # A value that cannot be a header (a line break) is refused without being shown.
    monkeypatch.setenv("NOTES_TOKEN", f"{SECRET}\r\nX-Injected: 1")
    message = _refused({"notes": _http(headers={"Authorization": {"env": env_token}})})
    assert "control character or a line break" in message and SECRET not in message
    bad_file = tmp_path / "bad"
    bad_file.write_text(f"{SECRET}\nsecond line\n")
    message = _refused({"notes": _http(headers={"Authorization": {"file": str(bad_file)}})})
    assert SECRET not in message
    # A literal of the wrong type, and a credential given literally: neither is echoed.
    for header in ({"X-Trace": {"value": [SECRET]}}, {"Authorization": {"value": SECRET}}):
        assert SECRET not in _refused({"notes": _http(headers=header)})
    with pytest.raises(UpstreamConfigError) as refused:
        load_upstreams_text(_file({"notes": _http(headers={"Authorization": {"value": SECRET}})}))
    assert refused.value.__cause__ is None and refused.value.__suppress_context__  # no ValidationError shown


def test_the_file_is_read_from_disk_and_its_errors_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(UpstreamConfigError) as missing:
        load_upstreams(tmp_path / "absent.yaml")
    assert isinstance(missing.value, ConfigError) and missing.value.code == "upstream-config-error"
    path = tmp_path / "upstreams.yaml"
    path.write_text(_file({"files": _stdio()}))
    assert load_upstreams(path).servers["files"].transport == "stdio"
