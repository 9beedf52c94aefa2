"""API tokens: only hashes are stored; verification maps a token to its principal."""

import json
from pathlib import Path

import pytest

from gateway.auth.tokens import TokenStore, hash_token
from gateway.errors import ConfigError


def test_create_stores_only_the_hash_and_verifies(tmp_path: Path) -> None:
    path = tmp_path / "tokens.jsonl"
    token = TokenStore(path).create("alice", profile="default", tenant="acme")
    text = path.read_text()
    assert token not in text
    assert hash_token(token) in text
    assert path.stat().st_mode & 0o077 == 0, "tokens file is private to its owner"
    entry, reason = TokenStore(path).verify(token)
    assert entry is not None and reason == ""
    assert (entry.principal, entry.tenant, entry.profile) == ("alice", "acme", "default")


@pytest.mark.parametrize(
    "presented",
    ["", "sgw_wrong", "Bearer x", "sgw_" + "a" * 300, "no-prefix"],
    ids=["empty", "wrong", "scheme", "too-long", "no-prefix"],
)
def test_wrong_tokens_do_not_verify(tmp_path: Path, presented: str) -> None:
    store = TokenStore(tmp_path / "t")
    store.create("alice")
    assert store.verify(presented) == (None, "unknown-token")


@pytest.mark.parametrize(
    "name",
    ["", "a b", "../x", "x" * 129, "é", "-lead"],
    ids=["empty", "space", "path", "long", "unicode", "dash"],
)
def test_principal_names_are_restricted(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError):
        TokenStore(tmp_path / "t").create(name)


def test_a_corrupt_tokens_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "t"
    path.write_text(json.dumps({"principal": "a"}) + "\n")
    with pytest.raises(ConfigError, match="line 1"):
        TokenStore(path)
