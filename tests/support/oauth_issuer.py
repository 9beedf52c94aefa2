"""A real OAuth 2.1 authorization server for the sign-in tests: node-oidc-provider (tests/support/issuer,
installed by `make test-tools`), with PKCE required, resource indicators and RS256 JWT access tokens,
and its development login page, where any login name signs in as that subject."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import end, wait_serving

__all__ = ["ISSUER_DIR", "Issuer", "running_issuer"]

ISSUER_DIR = Path(__file__).resolve().parent / "issuer"


@dataclass(frozen=True, slots=True)
class Issuer:
    url: str
    jwks_url: str
    log: Path


class IssuerMissing(RuntimeError):
    pass


@contextlib.contextmanager
def running_issuer(
    port: int,
    *,
    resource: str,
    audience: str,
    client_id: str,
    redirect_uri: str,
    log: Path,
    host: str = "localhost",
) -> Iterator[Issuer]:
    """The issuer at http://`host`:`port` (listening on 127.0.0.1), for one client and one resource."""
    node = shutil.which("node")
    if node is None or not (ISSUER_DIR / "node_modules" / "oidc-provider").is_dir():
        raise IssuerMissing("node or tests/support/issuer/node_modules missing: run `make test-tools`")
    url = f"http://{host}:{port}"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [node, "issuer.mjs", url, str(port), resource, audience, client_id, redirect_uri],
            cwd=ISSUER_DIR,
            stdout=out,
            stderr=out,
        )

    try:
        wait_serving(process, f"http://127.0.0.1:{port}/.well-known/openid-configuration", log, "the issuer")
        yield Issuer(url, f"{url}/jwks", log)
    finally:
        end(process)
