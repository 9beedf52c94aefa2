"""The audit HMAC key file: random bytes are key as they are; a text key loses its line ending."""

import hashlib
import hmac
from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.errors import ConfigError
from gateway.wiring import build_audit, hmac_key_from
from policy.loader import load_policy


@pytest.mark.parametrize(
    "raw",
    [
        b"\n" + bytes(range(200, 231)),  # `head -c 32 /dev/urandom` that begins with a newline byte
        bytes(range(200, 231)) + b" ",  # ...or ends with a space byte
        b"\t\x00" + bytes(range(1, 31)) + b"\r\n",  # binary with a CRLF tail: not text, all of it is key
    ],
)
def test_whitespace_bytes_in_a_random_key_are_part_of_the_key(raw: bytes) -> None:
    assert hmac_key_from(raw) == raw


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_a_text_key_loses_its_line_ending(ending: bytes) -> None:
    text = b"c2VjcmV0LWtleS1tYXRlcmlhbC1mb3ItdGhlLWF1ZGl0LWxvZw=="
    assert hmac_key_from(text + ending) == text


def _settings(tmp_path: Path, raw: bytes) -> Settings:
    key = tmp_path / "audit-hmac.key"
    key.write_bytes(raw)
    return Settings(audit_hmac_key_file=key, audit_log=tmp_path / "audit.jsonl", audit_stdout=False)


def test_a_32_byte_random_key_with_whitespace_at_its_edges_is_accepted(tmp_path: Path) -> None:
    raw = b"\n" + bytes(range(128, 158)) + b" "
    assert len(raw) == 32
    log = build_audit(_settings(tmp_path, raw), load_policy())
    recorded = log.code(None, "info", {"code": "ls"})
    assert recorded["code"] == {"hmac_sha256": hmac.new(raw, b"ls", hashlib.sha256).hexdigest()}


def test_a_short_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        build_audit(_settings(tmp_path, b"short-key\n"), load_policy())
