"""Per-route decisions: what is forwarded for a matched request, and on which container.

Container and exec verbs act only on the gateway's own sandboxes. Which container a reference
means is asked of the engine (inspect), and the request is forwarded with the container's full
id, so a rename between the check and the call cannot redirect it. A container counts as a sandbox
when it carries the managed label, a sandbox name, network none and is not privileged: every
container the proxy lets be created has all four.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from gateway.backend.create_body import KEEPER_USER, LABEL_PREFIX, USER_LABEL
from gateway.sockproxy.binds import bind_source, binds_of
from gateway.sockproxy.create_rules import validate_create
from gateway.sockproxy.engine import Engine, EngineReply
from gateway.sockproxy.errors import Refused, StrictJSONError
from gateway.sockproxy.exec_rules import validate_exec_create, validate_exec_start
from gateway.sockproxy.fields import NAME, caps, sandbox_user, security_opt
from gateway.sockproxy.routes import API, Match
from gateway.sockproxy.rules import ContainerFacts, ProxyRules
from gateway.sockproxy.shapes import fail, list_of, obj, text
from gateway.sockproxy.strict_json import canonical, decode

__all__ = ["Decider", "Forward", "Respond"]

_MANAGED = f"{LABEL_PREFIX}.managed"
_FULL_ID = re.compile(r"[0-9a-f]{64}")
_CACHE = 8192
_BOOL = ("0", "1", "true", "false", "True", "False")
_SIGNALS = ("KILL", "SIGKILL", "9")
_CONDITIONS = ("not-running", "next-exit", "removed")
_LIST_KEYS = frozenset({"limit", "all", "size", "trunc_cmd", "filters"})
#: HostConfig fields a sandbox never has (namespaces shared, devices, mounts beside its binds...).
_NEVER_SET = (
    "PidMode",
    "UTSMode",
    "UsernsMode",
    "Devices",
    "DeviceRequests",
    "DeviceCgroupRules",
    "Mounts",
    "VolumesFrom",
    "Links",
    "PortBindings",
    "Sysctls",
    "CgroupParent",
    "OomKillDisable",
    "PublishAllPorts",
)
_FILTERS = obj({}, {key: list_of(text, max_items=32) for key in ("label", "name", "status", "id")})


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
        self._sandboxes: OrderedDict[str, ContainerFacts] = OrderedDict()
        self._execs: OrderedDict[str, str] = OrderedDict()
        #: Creates of one uid are serialised so that two cannot both take it; other uids go on.
        self._uid_locks: dict[str, tuple[asyncio.Lock, int]] = {}

    async def decide(self, found: Match, body: Any) -> Forward | Respond:  # noqa: PLR0911 - a return per route
        name, ref, query = found.route.name, found.ref, found.query
        if name in ("ping", "version"):
            _no_query(query)
            return Forward(f"{API}/_ping" if name == "ping" else f"{API}/version")
        if name == "image.inspect":
            _no_query(query)
            await self._allowed_image(ref)
            return Forward(f"{API}/images/{ref}/json")
        if name == "container.create":
            return await self._create(query, body)
        if name == "container.list":
            return Forward(f"{API}/containers/json", _list_query(query))
        if name.startswith("exec.") and name != "exec.create":
            facts = await self._exec_owner(ref)
            if name == "exec.start":
                _no_query(query)
                return Forward(
                    f"{API}/exec/{ref}/start", body=canonical(validate_exec_start(body)), facts=facts
                )
            _no_query(query)
            return Forward(f"{API}/exec/{ref}/json", facts=facts)
        facts = await self.sandbox(ref, fresh=name == "container.rename")
        base = f"{API}/containers/{facts.id}"
        return self._container_verb(name, base, query, body, facts)

    def _container_verb(  # noqa: PLR0911 - a return per route
        self, name: str, base: str, query: dict[str, str], body: Any, facts: ContainerFacts
    ) -> Forward:
        if name == "container.inspect":
            _no_query(query)
            return Forward(f"{base}/json", facts=facts)
        if name == "container.start":
            _no_query(query)
            # The engine resolves bind sources now, not at create: look at them again.
            for bind in facts.binds:
                bind_source(bind.partition(":")[0], self.rules)
            return Forward(f"{base}/start", facts=facts)
        if name == "container.kill":
            _allowed_query(query, {"signal": _SIGNALS})
            return Forward(f"{base}/kill", {"signal": "KILL"}, facts=facts)
        if name == "container.wait":
            _allowed_query(query, {"condition": _CONDITIONS})
            return Forward(f"{base}/wait", query, facts=facts)
        if name == "container.attach":
            return Forward(f"{base}/attach", _attach_query(query), facts=facts)
        if name == "container.rename":
            new = query.get("name", "")
            if set(query) != {"name"} or not re.fullmatch(r"sgw-[0-9a-f]{16}", new):
                raise Refused("rename", "only name=sgw-<16 hex digits> is allowed")
            if not facts.name.startswith("sgw-pool-"):
                raise Refused("rename", f"only a warm-pool sandbox is renamed, not {facts.name}")
            return Forward(f"{base}/rename", {"name": new}, facts=facts)
        if name == "container.remove":
            _allowed_query(query, {"v": _BOOL, "force": _BOOL, "link": ("0", "false", "False")})
            return Forward(base, {"force": "1", "v": "1"}, facts=facts)
        if name == "exec.create":
            _no_query(query)
            checked = validate_exec_create(body, facts)
            checked["Container"] = facts.id
            return Forward(f"{base}/exec", body=canonical(checked), facts=facts)
        raise Refused("no-route", name)  # pragma: no cover - every route name is handled above

    async def after(self, found: Match, action: Forward, reply: EngineReply) -> bytes:
        """The body returned to the client; remembers what the engine just told about sandboxes."""
        name = found.route.name
        if name == "container.list" and reply.status == 200:
            return canonical([row for row in reply.json() if self._listed(row)])
        if name == "exec.create" and reply.status == 201 and action.facts is not None:
            exec_id = str((reply.json() or {}).get("Id", ""))
            if _FULL_ID.fullmatch(exec_id):
                _remember(self._execs, exec_id, action.facts.id)
        if name == "container.remove" and action.facts is not None:
            self._sandboxes.pop(action.facts.id, None)
        return reply.body

    def _listed(self, row: dict[str, Any]) -> bool:
        """A row of the container list that may be shown: a sandbox's, as far as a row tells."""
        labels = row.get("Labels") or {}
        names = row.get("Names") or []
        try:
            sandbox_user(labels.get(USER_LABEL), "label", self.rules)
        except Refused:
            return False
        return (
            labels.get(_MANAGED) == "true"
            and len(names) == 1
            and NAME.fullmatch(str(names[0]).lstrip("/")) is not None
            and (row.get("HostConfig") or {}).get("NetworkMode") == "none"
        )

    async def _create(self, query: dict[str, str], body: Any) -> Forward:
        if set(query) != {"name"}:
            raise Refused("query", "a create takes exactly name=<sandbox name>")
        checked = validate_create(query["name"], body, self.rules)
        # Created from the image's id, so a tag moved after this check changes nothing.
        checked["Image"] = await self._allowed_image(checked["Image"])
        user = checked["Labels"][USER_LABEL]
        release = await self._hold_uid(user)
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

    async def _hold_uid(self, user: str) -> Callable[[], None]:
        """Wait for the lock of `user`; returns its release (which forgets the lock once unused)."""
        lock, users = self._uid_locks.get(user, (asyncio.Lock(), 0))
        self._uid_locks[user] = (lock, users + 1)
        try:
            await lock.acquire()
        except BaseException:
            self._forget_uid(user)
            raise

        def release() -> None:
            lock.release()
            self._forget_uid(user)

        return release

    def _forget_uid(self, user: str) -> None:
        lock, users = self._uid_locks[user]
        if users <= 1:
            del self._uid_locks[user]
        else:
            self._uid_locks[user] = (lock, users - 1)

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
        filters = canonical({"label": [f"{_MANAGED}=true", f"{USER_LABEL}={user}"]}).decode()
        status, rows = await self.engine.get_json(
            f"{API}/containers/json?all=1&filters={quote(filters, safe='')}"
        )
        if status != 200 or not isinstance(rows, list):
            raise Refused("uid-check", "cannot list sandboxes to check the uid", status=502)
        return bool(rows)

    async def sandbox(self, ref: str, *, fresh: bool = False) -> ContainerFacts:
        """The facts of the sandbox `ref` names; Refused (404) when it names no sandbox."""
        if not fresh and ref in self._sandboxes:
            return self._sandboxes[ref]
        status, doc = await self.engine.get_json(f"{API}/containers/{ref}/json")
        if status == 404 or not isinstance(doc, dict):
            raise Refused("no-such-sandbox", f"no such container: {ref}", status=404)
        facts = self._facts(doc)
        if facts is None:
            raise Refused("not-a-sandbox", f"no such container: {ref}", status=404)
        _remember(self._sandboxes, facts.id, facts)
        return facts

    def _facts(self, doc: dict[str, Any]) -> ContainerFacts | None:
        """The sandbox an inspect document describes, or None when it is not one in every respect
        the proxy checks at create (a container that only wears a sandbox's name and labels, or one
        made before sandboxes had a uid of their own, is not one)."""
        config, host = doc.get("Config") or {}, doc.get("HostConfig") or {}
        labels = config.get("Labels") or {}
        name = str(doc.get("Name", "")).lstrip("/")
        try:
            user = sandbox_user(labels.get(USER_LABEL), "label", self.rules)
            caps(host.get("CapAdd") or [], "CapAdd")
            security_opt(host.get("SecurityOpt") or [], "SecurityOpt", self.rules, host.get("Runtime"))
            binds = binds_of(host.get("Binds") or [], "Binds", self.rules)
        except Refused:
            return None
        shaped = (
            _FULL_ID.fullmatch(str(doc.get("Id", "")))
            and NAME.fullmatch(name)
            and labels.get(_MANAGED) == "true"
            and config.get("User") in (user, KEEPER_USER)
            and host.get("NetworkMode") == "none"
            and host.get("Privileged") is False
            and host.get("CapDrop") == ["ALL"]
            and not any(host.get(key) for key in _NEVER_SET)
            and host.get("IpcMode") in ("private", "shareable", "none", "")
        )
        if not shaped:
            return None
        return ContainerFacts(str(doc["Id"]), name, user, tuple(config.get("Env") or ()), tuple(binds))

    async def _exec_owner(self, exec_id: str) -> ContainerFacts:
        container = self._execs.get(exec_id)
        if container is None:
            status, doc = await self.engine.get_json(f"{API}/exec/{exec_id}/json")
            if status != 200 or not isinstance(doc, dict):
                raise Refused("no-such-exec", f"no such exec instance: {exec_id}", status=404)
            container = str(doc.get("ContainerID", ""))
        facts = await self.sandbox(container)
        _remember(self._execs, exec_id, facts.id)
        return facts


def _remember(cache: OrderedDict[str, Any], key: str, value: Any) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > _CACHE:
        cache.popitem(last=False)


def _no_query(query: dict[str, str]) -> None:
    if query:
        raise Refused("query", f"no query parameters here, got {sorted(query)}")


def _allowed_query(query: dict[str, str], allowed: dict[str, tuple[str, ...]]) -> None:
    for key, value in query.items():
        if value not in allowed.get(key, ()):
            raise Refused("query", f"{key}={value[:40]!r} is not allowed here")


def _attach_query(query: dict[str, str]) -> dict[str, str]:
    if query.get("logs", "0") not in ("0", "false"):
        raise Refused("attach-logs", "attach never replays the container's log (logs=1)")
    _allowed_query(
        query,
        dict.fromkeys(("stdin", "stdout", "stderr", "stream", "logs"), ("0", "1", "true", "false")),
    )
    if query.get("stream") not in ("1", "true"):
        raise Refused("query", "attach needs stream=1")
    return {key: "1" if query.get(key) in ("1", "true") else "0" for key in ("stdin", "stdout", "stderr")} | {
        "stream": "1",
        "logs": "0",
    }


def _list_query(query: dict[str, str]) -> dict[str, str]:
    unknown = sorted(set(query) - _LIST_KEYS)
    if unknown:
        raise Refused("query", f"unknown list parameter(s) {unknown}")
    if query.get("size", "0") not in ("0", "false"):
        raise Refused("query", "size=1 is refused (it walks every container's files)")
    out = {"all": "1" if query.get("all") in ("1", "true") else "0"}
    if "limit" in query:
        if not re.fullmatch(r"-1|[0-9]{1,6}", query["limit"]):
            raise fail("limit", "must be an integer")
        out["limit"] = query["limit"]
    if "filters" in query:
        try:
            filters = _FILTERS(decode(query["filters"].encode()), "filters")
        except StrictJSONError as exc:
            raise Refused("query", f"filters: {exc}") from exc
        out["filters"] = canonical(filters).decode()
    return out
