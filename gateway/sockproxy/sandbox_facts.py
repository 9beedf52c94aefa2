"""Which containers are the gateway's sandboxes: looked up on the engine, remembered by full id.

Which container a reference means is asked of the engine (inspect); the facts found are cached
by the container's full id, and an exec instance by the container it runs in. A container counts
as a sandbox only when its inspect document has the shape of one the proxy lets be created: the
managed label, a sandbox name, its own uid, network none, not privileged, CapDrop ALL, allowed
capabilities, the project's security options and binds, no shared namespaces, devices or mounts.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

from gateway.backend.create_body import KEEPER_USER, LABEL_PREFIX, USER_LABEL
from gateway.sockproxy.binds import binds_of
from gateway.sockproxy.engine import Engine
from gateway.sockproxy.errors import Refused
from gateway.sockproxy.fields import NAME, caps, sandbox_user, security_opt
from gateway.sockproxy.routes import API
from gateway.sockproxy.rules import ContainerFacts, ProxyRules

__all__ = ["FULL_ID", "MANAGED", "Sandboxes"]

MANAGED = f"{LABEL_PREFIX}.managed"
FULL_ID = re.compile(r"[0-9a-f]{64}")
_CACHE = 8192
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


class Sandboxes:
    """The sandboxes (and their exec instances) the engine has described, most recent kept."""

    def __init__(self, rules: ProxyRules, engine: Engine) -> None:
        self.rules = rules
        self.engine = engine
        self._sandboxes: OrderedDict[str, ContainerFacts] = OrderedDict()
        self._execs: OrderedDict[str, str] = OrderedDict()

    async def lookup(self, ref: str, *, fresh: bool = False) -> ContainerFacts:
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
            FULL_ID.fullmatch(str(doc.get("Id", "")))
            and NAME.fullmatch(name)
            and labels.get(MANAGED) == "true"
            and config.get("User") in (user, KEEPER_USER)
            and self._network_shaped(doc)
            and host.get("Privileged") is False
            and host.get("CapDrop") == ["ALL"]
            and not any(host.get(key) for key in _NEVER_SET)
            and host.get("IpcMode") in ("private", "shareable", "none", "")
        )
        if not shaped:
            return None
        return ContainerFacts(str(doc["Id"]), name, user, tuple(config.get("Env") or ()), tuple(binds))

    def _network_mode_ok(self, mode: object) -> bool:
        return mode == "none" or (self.rules.egress is not None and mode == self.rules.egress.name)

    def _network_shaped(self, doc: dict[str, Any]) -> bool:
        """Network none; or the egress network alone, at a sandbox address, with no DNS of its own."""
        host = doc.get("HostConfig") or {}
        network = self.rules.egress
        if host.get("NetworkMode") == "none" or network is None:
            return host.get("NetworkMode") == "none"
        endpoints = (doc.get("NetworkSettings") or {}).get("Networks") or {}
        address = ((endpoints.get(network.name) or {}).get("IPAMConfig") or {}).get("IPv4Address")
        return (
            host.get("NetworkMode") == network.name
            and set(endpoints) == {network.name}
            and isinstance(address, str)
            and network.holds(address)
            and host.get("Dns") == [str(network.dns)]
        )

    async def exec_owner(self, exec_id: str) -> ContainerFacts:
        """The sandbox exec instance `exec_id` runs in; Refused (404) when there is none."""
        container = self._execs.get(exec_id)
        if container is None:
            status, doc = await self.engine.get_json(f"{API}/exec/{exec_id}/json")
            if status != 200 or not isinstance(doc, dict):
                raise Refused("no-such-exec", f"no such exec instance: {exec_id}", status=404)
            container = str(doc.get("ContainerID", ""))
        facts = await self.lookup(container)
        _remember(self._execs, exec_id, facts.id)
        return facts

    def remember_exec(self, exec_id: str, container_id: str) -> None:
        """An exec instance the engine just created in sandbox `container_id`."""
        _remember(self._execs, exec_id, container_id)

    def forget(self, container_id: str) -> None:
        """A sandbox that was just removed."""
        self._sandboxes.pop(container_id, None)

    def listed(self, row: dict[str, Any]) -> bool:
        """A row of the container list that may be shown: a sandbox's, as far as a row tells."""
        labels = row.get("Labels") or {}
        names = row.get("Names") or []
        try:
            sandbox_user(labels.get(USER_LABEL), "label", self.rules)
        except Refused:
            return False
        return (
            labels.get(MANAGED) == "true"
            and len(names) == 1
            and NAME.fullmatch(str(names[0]).lstrip("/")) is not None
            and self._network_mode_ok((row.get("HostConfig") or {}).get("NetworkMode"))
        )


def _remember(cache: OrderedDict[str, Any], key: str, value: Any) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > _CACHE:
        cache.popitem(last=False)
