"""`looks_like_secret`: code mode's `refuse_secrets` check. It finds the usual credentials, lets
ordinary text, hashes and UUIDs through, and its work is linear in what it reads."""

from __future__ import annotations

import hashlib
import time
import uuid
from pathlib import Path

import pytest

from gateway.auth.tokens import TokenStore
from policy.secrets import SCAN_LIMIT, SECRET_KINDS, looks_like_secret

# Built from parts so that no scanner mistakes this file for a leak.
PEM = "-----BEGIN " + "RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----"
JWT = "eyJhbGciOiJIUzI1NiJ9" + ".eyJzdWIiOiJhbGljZSIsImV4cCI6MTcwMDAwMDAwMH0" + ".c2lnbmF0dXJlLWJ5dGVzLWhlcmU"
GHP = "ghp" + "_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        pytest.param(PEM, "private-key", id="rsa"),
        pytest.param("key:\n-----BEGIN " + "OPENSSH PRIVATE KEY-----\nb3Blbn", "private-key", id="openssh"),
        pytest.param("-----BEGIN " + "PRIVATE KEY-----", "private-key", id="pkcs8"),
        pytest.param("-----BEGIN " + "ENCRYPTED PRIVATE KEY-----", "private-key", id="encrypted"),
        pytest.param("-----BEGIN " + "PGP PRIVATE KEY BLOCK-----", "private-key", id="pgp"),
        pytest.param("aws_access_key_id=" + "AKIA" + "IOSFODNN7EXAMPLE", "aws-access-key", id="akia"),
        pytest.param('{"AccessKeyId": "' + "ASIA" + 'Y34FZKBOKMUTVV7A"}', "aws-access-key", id="asia"),
        pytest.param(f"token {GHP} here", "github-token", id="ghp"),
        pytest.param("gho" + "_" + "a" * 36, "github-token", id="gho"),
        pytest.param("GH_TOKEN=ghs" + "_" + "Z9" * 18, "github-token", id="ghs"),
        pytest.param(
            "github" + "_pat_" + "11ABCDEFG0" * 3 + "_" + "x" * 59, "github-token", id="fine-grained"
        ),
        pytest.param("SLACK=" + "xoxb" + "-1234567890-abcdefghij", "slack-token", id="xoxb"),
        pytest.param("xoxp" + "-1234567890123-4567", "slack-token", id="xoxp"),
        pytest.param(f"Authorization: Bearer {JWT}", "jwt", id="jwt"),
        pytest.param(f'{{"id_token":"{JWT}"}}', "jwt", id="jwt-json"),
        pytest.param("eyJhbGciOiJub25lIn0" + ".eyJzdWIiOiJib2IifQ" + ".", "jwt", id="jwt-unsigned"),
        pytest.param('api_key = "' + "q8Zr2LmX4vT9pWcN7bK3" + '"', "generic-api-key", id="api-key"),
        pytest.param("OPENAI_API_KEY=sk-" + "proj-4fG7hJ2kL9mN3pQ8rS6t", "generic-api-key", id="env"),
        pytest.param(
            'aws_secret_access_key: "' + "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY" + '"',
            "generic-api-key",
            id="aws-secret",
        ),
        pytest.param('{"client_secret": "' + "4f9a1c7e2b8d6035e1f7a9c2" + '"}', "generic-api-key", id="json"),
        pytest.param("PASSWORD=" + "Tr0ub4dor&3xK9mQ2vL7pZ", "generic-api-key", id="password"),
        pytest.param("Authorization: Bearer " + "A9fK2mQ7xZ3pL8vN4bR6tY1w", "generic-api-key", id="bearer"),
        pytest.param(
            "SECRET_KEY = '" + hashlib.sha256(b"k").hexdigest() + "'", "generic-api-key", id="hex-key"
        ),
    ],
)
def test_secrets_are_found(text: str, kind: str) -> None:
    assert kind in SECRET_KINDS
    assert looks_like_secret(text) == kind
    assert looks_like_secret("Some prose first.\n" * 50 + text + "\nand after.") == kind


def test_the_gateways_own_tokens_are_found(tmp_path: Path) -> None:
    token = TokenStore(tmp_path / "tokens").create("alice")
    assert looks_like_secret(f"the token is {token}.") == "gateway-token"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("The quick brown fox jumps over the lazy dog. " * 200, id="prose"),
        pytest.param("Use an API key: set api_key in the settings page, then restart.", id="talk-about-keys"),
        pytest.param("sha256:" + hashlib.sha256(b"x").hexdigest(), id="sha256"),
        pytest.param("commit " + hashlib.sha1(b"x").hexdigest() + " fixes #12", id="sha1"),  # noqa: S324
        pytest.param(hashlib.sha512(b"x").hexdigest(), id="sha512"),
        pytest.param(str(uuid.uuid4()), id="uuid"),
        pytest.param(f'{{"id": "{uuid.uuid4()}", "page": 2}}', id="uuid-json"),
        pytest.param(
            '{"next_page_token": "CiAKGjBpNDd2Nmp2Zml2cXRwYjBpOXA1MHZpbTVwEgJpZBgB"}', id="page-token"
        ),
        pytest.param('{"max_tokens": 4096, "token_type": "Bearer"}', id="token-words"),
        pytest.param('api_key = "YOUR_API_KEY"', id="placeholder"),
        pytest.param('password: "xxxxxxxxxxxxxxxxxxxxxxxx"', id="masked"),
        pytest.param("password = os.environ['DB_PASSWORD']", id="env-lookup"),
        pytest.param("secret = /home/alice/notes/secret-plans.md", id="path"),
        pytest.param("AKIA is the prefix of AWS access key ids", id="akia-word"),
        pytest.param("MAKIAIOSFODNN7EXAMPLE1", id="akia-inside"),
        pytest.param("ghp_ alone, or ghp_short", id="ghp-short"),
        pytest.param("eyJhbGciOiJIUzI1NiJ9 is a base64 header", id="jwt-header-only"),
        pytest.param("-----BEGIN PUBLIC KEY-----\nMFkwEwYH", id="public-key"),
        pytest.param("-----BEGIN CERTIFICATE-----\nMIIB", id="certificate"),
        pytest.param("sgw-0123456789abcdef is a sandbox name", id="sandbox-name"),
        pytest.param(
            "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk", id="b64"
        ),
    ],
)
def test_ordinary_text_is_not_a_secret(text: str) -> None:
    assert looks_like_secret(text) is None


def test_only_the_scan_limit_is_read() -> None:
    assert looks_like_secret("a" * (SCAN_LIMIT - len(PEM)) + PEM) == "private-key"
    assert looks_like_secret("a" * SCAN_LIMIT + PEM) is None


@pytest.mark.parametrize(
    "unit",
    [
        "-eyJ",
        "eyJabcdefgh.",
        "_token=",
        "api_key=abc ",
        "api_key=" + "a" * 600 + " ",
        "-----BEGIN ",
        "-ghp_" + "a" * 30,
        "xoxb",
        "a",
        "password: x",
        "bearer ",
        "-sgw_",
        "AKIA",
    ],
)
def test_hostile_input_costs_linear_time(unit: str) -> None:
    """Inputs made of the patterns' own beginnings, the whole scan limit long: linear patterns take
    well under a second on any machine; a backtracking one would take minutes."""
    text = (unit * (SCAN_LIMIT // len(unit) + 1))[:SCAN_LIMIT]
    started = time.perf_counter()
    looks_like_secret(text)
    assert time.perf_counter() - started < 5
