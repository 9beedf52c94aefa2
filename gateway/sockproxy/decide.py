"""Per-route decisions: what is forwarded for a matched request, and on which container.

Container and exec verbs act only on the gateway's own sandboxes (sandbox_facts.py). The request
is forwarded with the container's full id, so a rename between the check and the call cannot
redirect it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from gateway.backend.create_body import USER_LABEL
from gateway.sockproxy.binds import bind_source
from gateway.sockproxy.create_rules import validate_create
from gateway.sockproxy.engine import Engine, EngineReply
from gateway.sockproxy.errors import Refused
from gateway.sockproxy.exec_rules import validate_exec_create, validate_exec_start
from gateway.sockproxy.queries import allowed_query, attach_query, list_query, no_query
from gateway.sockproxy.routes import API, Match
from gateway.sockproxy.rules import ContainerFacts, ProxyRules
from gateway.sockproxy.sandbox_facts import FULL_ID, MANAGED, Sandboxes
from gateway.sockproxy.strict_json import canonical
from gateway.sockproxy.uid_locks import UidLocks

__all__ = ["Decider", "Forward", "Respond"]

_BOOL = ("0", "1", "true", "false", "True", "False")
_SIGNALS = ("KILL", "SIGKILL", "9")
_CONDITIONS = ("not-running", "next-exit", "removed")


@dataclass(frozen=True, slots=True)
class Forward:
    """Send this to the engine (path and query rebuilt by the proxy, body re-encoded)."""

    path: str
    query: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    facts: ContainerFacts | None = None
    #: Called once the engine has answered (a create holds its uid until then); by whoever forwards.
    release: Callable[[], None] | None = None


@dataclass(frozen=True, slots=True)
class Respond:
    """Answer the client directly."""

    status: int
    body: Any


class Decider:
    def __init__(self, rules: ProxyRules, engine: Engine) -> None:
        self.rules = rules
        self.engine = engine
        self.sandboxes = Sandboxes(rules, engine)
        self._uid_locks = UidLocks()

    async def decide(self, found: Match, body: Any) -> Forward | Respond:  # noqa: PLR0911 - a return per route
        name, ref, query = found.route.name, found.ref, found.query
        if name in ("ping", "version"):
            no_query(query)
            return Forward(f"{API}/_ping" if name == "ping" else f"{API}/version")
        if name == "image.inspect":
            no_query(query)
            await self._allowed_image(ref)
            return Forward(f"{API}/images/{ref}/json")
        if name == "container.create":
            return await self._create(query, body)
        if name == "container.list":
            return Forward(f"{API}/containers/json", list_query(query))
        if name.startswith("exec.") and name != "exec.create":
            facts = await self.sandboxes.exec_owner(ref)
            if name == "exec.start":
                no_query(query)
                return Forward(
                    f"{API}/exec/{ref}/start", body=canonical(validate_exec_start(body)), facts=facts
                )
            no_query(query)
            return Forward(f"{API}/exec/{ref}/json", facts=facts)
        facts = await self.sandboxes.lookup(ref, fresh=name == "container.rename")
        base = f"{API}/containers/{facts.id}"
        return self._container_verb(name, base, query, body, facts)

    def _container_verb(  # noqa: PLR0911 - a return per route
        self, name: str, base: str, query: dict[str, str], body: Any, facts: ContainerFacts
    ) -> Forward:
        if name == "container.inspect":
            no_query(query)
            return Forward(f"{base}/json", facts=facts)
        if name == "container.start":
            no_query(query)
            # The engine resolves bind sources now, not at create: look at them again.
            for bind in facts.binds:
                bind_source(bind.partition(":")[0], self.rules)
            return Forward(f"{base}/start", facts=facts)
        if name == "container.kill":
            allowed_query(query, {"signal": _SIGNALS})
            return Forward(f"{base}/kill", {"signal": "KILL"}, facts=facts)
        if name == "container.wait":
            allowed_query(query, {"condition": _CONDITIONS})
            return Forward(f"{base}/wait", query, facts=facts)
        if name == "container.attach":
            return Forward(f"{base}/attach", attach_query(query), facts=facts)
        if name == "container.rename":
            new = query.get("name", "")
            if set(query) != {"name"} or not re.fullmatch(r"sgw-[0-9a-f]{16}", new):
                raise Refused("rename", "only name=sgw-<16 hex digits> is allowed")
            if not facts.name.startswith("sgw-pool-"):
                raise Refused("rename", f"only a warm-pool sandbox is renamed, not {facts.name}")
            return Forward(f"{base}/rename", {"name": new}, facts=facts)
        if name == "container.remove":
            allowed_query(query, {"v": _BOOL, "force": _BOOL, "link": ("0", "false", "False")})
            return Forward(base, {"force": "1", "v": "1"}, facts=facts)
        if name == "exec.create":
            no_query(query)
            checked = validate_exec_create(body, facts)
            checked["Container"] = facts.id
            return Forward(f"{base}/exec", body=canonical(checked), facts=facts)
        raise Refused("no-route", name)  # pragma: no cover - every route name is handled above

    async def after(self, found: Match, action: Forward, reply: EngineReply) -> bytes:
        """The body returned to the client; remembers what the engine just told about sandboxes."""
        name = found.route.name
        if name == "container.list" and reply.status == 200:
            return canonical([row for row in reply.json() if self.sandboxes.listed(row)])
        if name == "exec.create" and reply.status == 201 and action.facts is not None:
            exec_id = str((reply.json() or {}).get("Id", ""))
            if FULL_ID.fullmatch(exec_id):
                self.sandboxes.remember_exec(exec_id, action.facts.id)
        if name == "container.remove" and action.facts is not None:
            self.sandboxes.forget(action.facts.id)
        return reply.body

    async def _create(self, query: dict[str, str], body: Any) -> Forward:
        if set(query) != {"name"}:
            raise Refused("query", "a create takes exactly name=<sandbox name>")
        checked = validate_create(query["name"], body, self.rules)
        # Created from the image's id, so a tag moved after this check changes nothing.
        checked["Image"] = await self._allowed_image(checked["Image"])
        user = checked["Labels"][USER_LABEL]
        release = await self._uid_locks.hold(user)
        try:
            in_use = await self._user_in_use(user)
        except BaseException:
            release()
            raise
        if in_use:
            release()
            raise Refused("uid-in-use", f"uid:gid {user} belongs to another sandbox", status=409)
        return Forward(
            f"{API}/containers/create", {"name": query["name"]}, canonical(checked), release=release
        )

    async def _allowed_image(self, ref: str) -> str:
        """The id of image `ref` when it carries an allowed name; Refused otherwise."""
        status, doc = await self.engine.get_json(f"{API}/images/{ref}/json")
        if status != 200 or not isinstance(doc, dict):
            raise Refused("image", f"no such image: {ref}", status=404)
        tags = set(doc.get("RepoTags") or ())
        if self.rules.images and not tags & self.rules.images:
            raise Refused(
                "image", f"{ref} is not an image sandboxes are made from ({sorted(self.rules.images)})"
            )
        return str(doc["Id"])

    async def _user_in_use(self, user: str) -> bool:
        """Whether a container (running or not) already carries this sandbox uid."""
        filters = canonical({"label": [f"{MANAGED}=true", f"{USER_LABEL}={user}"]}).decode()
        status, rows = await self.engine.get_json(
            f"{API}/containers/json?all=1&filters={quote(filters, safe='')}"
        )
        if status != 200 or not isinstance(rows, list):
            raise Refused("uid-check", "cannot list sandboxes to check the uid", status=502)
        return bool(rows)
