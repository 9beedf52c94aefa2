"""The front door over real HTTP: API tokens, JWTs, scopes, tenants, sessions, rate limits, TLS."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from gateway.auth.tokens import TokenEntry, TokenStore, hash_token
from gateway.backend.docker_engine import DockerBackend
from tests.e2e.conftest import ACCEPT, INIT, Gateway, mcp_client, start_gateway, stop_gateway
from tests.e2e.test_cli import cli
from tests.e2e.test_policy_over_mcp import write_policy
from tests.support import audit_events, eventually, eventually_async
from tests.support.net import accepts, free_port

pytestmark = pytest.mark.anyio
ISSUER = "https://issuer.test"
AUDIENCE = "sandbox-gateway-test"
LIST_TOOLS = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}


def post(gateway: Gateway, token: str | None, body: Any = INIT, **headers: str) -> httpx.Response:
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(gateway.url, json=body, headers={**ACCEPT, **auth, **headers}, timeout=10)


async def run(gateway: Gateway, token: str, command: str = "echo ok") -> Any:
    async with mcp_client(gateway.url, token) as client:
        return await client.call_tool("execute_bash", {"command": command})


# -- API tokens ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_gateway(tmp_path_factory: pytest.TempPathFactory, backend: DockerBackend) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("tokens")
    gateway = start_gateway(tmp)
    store = TokenStore(tmp / "tokens.jsonl")
    gateway.tokens["revokable"] = store.create("revokable")
    expired = "sgw_" + "e" * 43
    with (tmp / "tokens.jsonl").open("a") as handle:
        past = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
        entry = TokenEntry(
            hash_token(expired),
            "late",
            "default",
            "default",
            ("sandbox:exec",),
            past,
            expires=past + dt.timedelta(days=1),
        )
        handle.write(entry.to_json() + "\n")
    gateway.tokens["expired"] = expired
    yield gateway
    stop_gateway(gateway)
    assert backend.list({"sandbox-gateway.gateway": gateway.gateway_id}) == []


@pytest.mark.parametrize(
    ("who", "header", "status"),
    [
        pytest.param(None, None, 401, id="missing"),
        pytest.param(None, "Token abc", 401, id="malformed-scheme"),
        pytest.param(None, "Bearer", 401, id="malformed-empty"),
        pytest.param(None, "Bearer sgw_" + "x" * 43, 401, id="wrong"),
        pytest.param("expired", None, 401, id="expired"),
        pytest.param("alice", None, 200, id="valid"),
    ],
)
def test_the_token_matrix(token_gateway: Gateway, who: str | None, header: str | None, status: int) -> None:
    headers = {"Authorization": header} if header else {}
    response = post(token_gateway, token_gateway.tokens[who] if who else None, **headers)
    assert response.status_code == status
    if status == 401:
        assert response.headers["www-authenticate"].startswith('Bearer realm="sandbox-gateway"')
        assert "Traceback" not in response.text


async def test_a_revoked_token_stops_working_without_a_restart(token_gateway: Gateway) -> None:
    token = token_gateway.tokens["revokable"]
    assert not (await run(token_gateway, token)).is_error
    tokens_file = token_gateway.audit_log.with_name("tokens.jsonl")
    listed = cli("token", "list", "--tokens", str(tokens_file))
    assert (
        "revokable" in listed.stdout and token not in listed.stdout and hash_token(token) not in listed.stdout
    )
    assert cli("token", "revoke", "--principal", "revokable", "--tokens", str(tokens_file)).returncode == 0
    await eventually_async(
        lambda: post(token_gateway, token).status_code == 401,
        interval_s=0.2,
        message="revocation was not picked up",
    )
    assert "revoked" in cli("token", "list", "--tokens", str(tokens_file)).stdout
    assert audit_events(token_gateway.audit_log, "auth.failed", reason="revoked")


def test_a_session_cannot_be_used_with_another_principals_token(token_gateway: Gateway) -> None:
    opened = post(token_gateway, token_gateway.tokens["alice"], INIT)
    session = opened.headers["mcp-session-id"]
    hijack = post(token_gateway, token_gateway.tokens["bob"], LIST_TOOLS, **{"mcp-session-id": session})
    assert hijack.status_code == 404


# -- JWT access tokens ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def jwt_gateway(
    tmp_path_factory: pytest.TempPathFactory, signing_key: rsa.RSAPrivateKey, backend: DockerBackend
) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("jwt")
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(signing_key.public_key()))
    (tmp / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}))
    gateway = start_gateway(
        tmp, "--oauth-issuer", ISSUER, "--oauth-audience", AUDIENCE, "--oauth-jwks", str(tmp / "jwks.json")
    )
    yield gateway
    stop_gateway(gateway)
    assert backend.list({"sandbox-gateway.gateway": gateway.gateway_id}) == []


def mint(key: rsa.RSAPrivateKey, **overrides: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "jwt-user",
        "tenant": "acme",
        "profile": "default",
        "scope": "sandbox:exec",
        "iat": now,
        "exp": now + 300,
        **overrides,
    }
    return jwt.encode(
        {k: v for k, v in claims.items() if v is not None}, key, algorithm="RS256", headers={"kid": "k1"}
    )


@pytest.mark.parametrize(
    ("claims", "status"),
    [
        pytest.param({}, 200, id="valid"),
        pytest.param({"aud": "someone-else"}, 401, id="wrong-audience"),
        pytest.param({"iss": "https://evil.test"}, 401, id="wrong-issuer"),
        pytest.param({"exp": int(time.time()) - 3600}, 401, id="expired"),
        pytest.param({"scope": "openid profile"}, 403, id="missing-scope"),
    ],
)
def test_the_jwt_matrix(
    jwt_gateway: Gateway, signing_key: rsa.RSAPrivateKey, claims: dict[str, Any], status: int
) -> None:
    response = post(jwt_gateway, mint(signing_key, **claims))
    assert response.status_code == status
    if status in (401, 403):
        challenge = response.headers["www-authenticate"]
        assert 'resource_metadata="http://127.0.0.1:' in challenge
        assert ("insufficient_scope" in challenge) == (status == 403)


def test_a_jwt_signed_by_another_key_is_refused(jwt_gateway: Gateway) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert post(jwt_gateway, mint(other)).status_code == 401


def test_the_protected_resource_metadata_is_served(jwt_gateway: Gateway) -> None:
    metadata = httpx.get(f"{jwt_gateway.base}/.well-known/oauth-protected-resource/mcp").json()
    assert metadata["resource"] == jwt_gateway.url
    assert metadata["authorization_servers"] == [ISSUER]
    assert "sandbox:exec" in metadata["scopes_supported"]


async def test_claims_map_to_principal_tenant_and_profile_and_scopes_to_tools(
    jwt_gateway: Gateway, signing_key: rsa.RSAPrivateKey
) -> None:
    async with mcp_client(jwt_gateway.url, mint(signing_key, profile="data-science")) as client:
        info = await client.call_tool("sandbox_info", {})
    assert info.structured_content is not None
    assert (
        info.structured_content["principal"],
        info.structured_content["tenant"],
        info.structured_content["profile"],
    ) == ("jwt-user", "acme", "data-science")
    async with mcp_client(jwt_gateway.url, mint(signing_key, scope="sandbox:files")) as client:
        denied = await client.call_tool("execute_bash", {"command": "true"})
    assert denied.is_error and "insufficient-scope" in denied.content[0].text  # type: ignore[union-attr]


# -- tenants ---------------------------------------------------------------------------------------


async def test_tenants_never_reach_each_others_sandboxes(tmp_path: Path, backend: DockerBackend) -> None:
    store = TokenStore(tmp_path / "tokens.jsonl")
    tokens = {
        "alice@acme": store.create("alice", tenant="acme"),
        "alice@beta": store.create("alice", tenant="beta"),
        "admin@acme": store.create(
            "admin", tenant="acme", profile="tenant-admin", scopes=("sandbox:exec", "sandbox:admin")
        ),
        "plain@acme": store.create("plain", tenant="acme"),
    }
    gateway = start_gateway(tmp_path, principals={})
    try:
        await run(gateway, tokens["alice@beta"], "echo beta-secret > /workspace/s")
        same_name = await run(
            gateway, tokens["alice@acme"], "cat /workspace/s 2>&1; echo acme > /workspace/s"
        )
        assert "beta-secret" not in same_name.structured_content["stdout"]
        async with mcp_client(gateway.url, tokens["admin@acme"]) as admin:
            listing = await admin.call_tool("admin_list_sandboxes", {})
            cross = await admin.call_tool("admin_remove_sandbox", {"principal": "alice"})
        assert listing.structured_content is not None
        assert [s["principal"] for s in listing.structured_content["sandboxes"]] == ["alice"]
        assert listing.structured_content["tenant"] == "acme"
        assert cross.structured_content == {"reset": True}, "removes acme's alice, the caller's own tenant"
        still = await run(gateway, tokens["alice@beta"], "cat /workspace/s")
        assert still.structured_content["stdout"] == "beta-secret\n", "beta's alice is untouched"
        async with mcp_client(gateway.url, tokens["plain@acme"]) as plain:
            refused = await plain.call_tool("admin_list_sandboxes", {})
        assert refused.is_error and "insufficient-scope" in refused.content[0].text  # type: ignore[union-attr]
    finally:
        stop_gateway(gateway)
    assert backend.list({"sandbox-gateway.gateway": gateway.gateway_id}) == []


# -- rate limits ------------------------------------------------------------------------------------


def test_a_burst_past_the_principal_rate_gets_429_and_the_next_window_succeeds(tmp_path: Path) -> None:
    policy = write_policy(tmp_path / "policy.yaml", {"profiles.default.rate_limits.requests": "3/second"})
    gateway = start_gateway(tmp_path, "--policy", str(policy))
    try:
        statuses = [post(gateway, gateway.tokens["alice"]).status_code for _ in range(5)]
        assert statuses[:3] == [200, 200, 200] and statuses[3:] == [429, 429]
        limited = post(gateway, gateway.tokens["alice"])
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert post(gateway, gateway.tokens["bob"]).status_code == 200, "another principal is not affected"
        time.sleep(int(limited.headers["retry-after"]) + 0.1)  # the window running out is what is tested
        assert post(gateway, gateway.tokens["alice"]).status_code == 200
    finally:
        stop_gateway(gateway)
    hits = audit_events(gateway.audit_log, "ratelimit.hit")
    assert hits and all(e["actor"]["principal"] == "alice" for e in hits)


def test_unauthenticated_floods_are_limited_by_address(tmp_path: Path) -> None:
    gateway = start_gateway(tmp_path, "--address-rate", "5/minute")
    try:
        statuses = [post(gateway, "sgw_wrong").status_code for _ in range(7)]
    finally:
        stop_gateway(gateway)
    assert statuses == [401] * 5 + [429, 429]


# -- TLS ----------------------------------------------------------------------------------------------


def test_tls_serves_https_with_the_given_certificate(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    gateway = start_gateway(
        tmp_path, "--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem"), https=True
    )
    try:
        trusted = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        response = httpx.get(f"{gateway.base}/health", verify=trusted)
        assert response.status_code == 200 and gateway.base.startswith("https://")
        with pytest.raises(httpx.HTTPError):
            httpx.get(gateway.base.replace("https://", "http://") + "/health", timeout=3)
    finally:
        stop_gateway(gateway)


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A real Redis server on loopback, for rate limits shared by several gateways."""
    server = shutil.which("redis-server")
    assert server, "redis-server is missing: `make test` installs it (make test-tools)"
    port = free_port()
    process = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )

    def listening() -> bool:
        assert process.poll() is None, "redis-server exited"
        return accepts(port)

    eventually(listening, interval_s=0.05, retry_on=(), message="redis-server did not start")
    yield f"redis://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=10)


def test_two_gateways_share_one_principal_rate_through_redis(tmp_path: Path, redis_url: str) -> None:
    policy = write_policy(tmp_path / "policy.yaml", {"profiles.default.rate_limits.requests": "4/minute"})
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = start_gateway(tmp_path / "a", "--policy", str(policy), "--rate-limit-storage", redis_url)
    tokens = tmp_path / "a" / "tokens.jsonl"
    second = start_gateway(
        tmp_path / "b",
        "--policy",
        str(policy),
        "--rate-limit-storage",
        redis_url,
        "--tokens",
        str(tokens),
        principals={},
    )
    try:
        token = first.tokens["alice"]
        statuses = [
            post(gateway, token).status_code for gateway in (first, second, first, second, first, second)
        ]
    finally:
        stop_gateway(first)
        stop_gateway(second)
    assert statuses == [200, 200, 200, 200, 429, 429], "the four allowed requests are counted across both"
