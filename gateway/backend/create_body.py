"""The one place a SandboxSpec becomes a Docker create request. Nothing else sets HostConfig."""

from __future__ import annotations

import json
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from gateway.egress.network import EgressNetwork
from gateway.errors import ConfigError
from policy import SandboxSpec

__all__ = [
    "LABEL_PREFIX",
    "SANDBOX_PATH_ENV",
    "SECCOMP_DIR",
    "USER_LABEL",
    "create_body",
    "environment",
    "sandbox_env",
    "seccomp_options",
    "seccomp_profile_names",
]

LABEL_PREFIX = "sandbox-gateway"
#: The `uid:gid` a sandbox's code runs as: a uid of its own, from the gateway's range (see uids.py).
USER_LABEL = f"{LABEL_PREFIX}.user"
#: The container's own processes (init and its idle child) run as `nobody`, not as the uid that runs
#: the calls: code in the sandbox cannot signal them, so `kill -9 -1` cannot stop its own sandbox.
KEEPER_USER = "65534:65534"
#: Where the sandbox image holds the agent (its launcher, gateway/agent/launcher.py, beside the
#: `sgw_agent` package), and how it is started.
AGENT_PATH = "/opt/sandbox-gateway/agent.py"
AGENT_COMMAND = ["python3", "-I", "-S", AGENT_PATH]
#: The seccomp profiles (`NAME.json`): package data of the top-level `seccomp` package.
SECCOMP_DIR: Traversable = files("seccomp")
SANDBOX_PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def sandbox_env(spec: SandboxSpec, network: EgressNetwork | None = None) -> list[str]:
    """The whole environment of sandbox processes: fixed, with no secret from the gateway; for a
    sandbox on the egress `network`, its proxy too."""
    proxy = network.environment() if spec.network == "egress" and network is not None else []
    return [*environment(spec.workdir), *proxy]


def environment(workdir: str) -> list[str]:
    """The fixed environment of a sandbox whose working directory (and HOME) is `workdir`."""
    return [
        f"PATH={SANDBOX_PATH_ENV}",
        f"HOME={workdir}",
        "LANG=C.UTF-8",
        "PYTHONUNBUFFERED=1",
        "PYTHONDONTWRITEBYTECODE=1",
        # The code-mode library and the generated tool modules (`import tools.<server>`), then skills.
        "PYTHONPATH=/opt/sandbox-gateway/pylib:/skills",
    ]


def _for_gvisor(profile: dict[str, Any]) -> dict[str, Any]:
    """gVisor's seccomp ignores `errnoRet` and answers EPERM, so a clone3 refused with ENOSYS would
    stop libc from falling back to clone (no thread could start). gVisor implements no clone3 at
    all (it answers ENOSYS itself), so the rule is dropped there: the outcome is the same ENOSYS."""
    rules = [rule for rule in profile.get("syscalls", []) if rule.get("names") != ["clone3"]]
    return {**profile, "syscalls": [*rules, {"names": ["clone3"], "action": "SCMP_ACT_ALLOW"}]}


def seccomp_profile_names(directory: Traversable = SECCOMP_DIR) -> list[str]:
    """The profiles a policy can name: the stems of the `*.json` files in `directory`."""
    return sorted(
        entry.name.removesuffix(".json")
        for entry in directory.iterdir()
        if entry.name.endswith(".json") and entry.is_file()
    )


def _seccomp_option(name: str, runtime: str = "runc", directory: Traversable = SECCOMP_DIR) -> list[str]:
    if name == "default":
        return []  # the engine applies its built-in default profile
    if name not in seccomp_profile_names(directory):  # a profile of the package, never a path
        raise ConfigError(
            f"seccomp profile {name!r} not found in {directory}; "
            f"profiles: {', '.join(seccomp_profile_names(directory)) or 'none'}"
        )
    try:
        profile = json.loads(directory.joinpath(f"{name}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"seccomp profile {name!r} in {directory} is not readable JSON") from exc
    if runtime == "runsc":
        profile = _for_gvisor(profile)
    # The API takes the profile inline, not as a path.
    return [f"seccomp={json.dumps(profile, separators=(',', ':'))}"]


def seccomp_options(directory: Traversable = SECCOMP_DIR) -> dict[str, frozenset[str]]:
    """Per runtime, every `seccomp=...` option the broker can send for it: each profile in
    `directory` as sent for that runtime (the socket proxy accepts exactly these)."""
    return {
        runtime: frozenset(
            option
            for name in seccomp_profile_names(directory)
            for option in _seccomp_option(name, runtime, directory)
        )
        for runtime in ("runc", "runsc")
    }


#: Under gVisor the sandbox's pids cgroup also holds the Sentry (about 35 host threads when idle)
#: and a host thread per running application thread; hitting the limit crashes the whole sandbox.
GVISOR_PIDS_FACTOR, GVISOR_PIDS_BASE = 3, 128


def host_pids_limit(spec: SandboxSpec) -> int:
    """The pids cgroup limit for the container: the policy's own under runc; scaled under gVisor,
    whose Sentry counts there too (see GVISOR_PIDS_FACTOR)."""
    if spec.runtime == "runsc":
        return spec.pids_limit * GVISOR_PIDS_FACTOR + GVISOR_PIDS_BASE
    return spec.pids_limit


def _tmpfs(spec: SandboxSpec, uid: int) -> dict[str, str]:
    mounts = {}
    for mount in spec.tmpfs:
        options = ["rw", "nosuid", "nodev"]
        if mount.noexec:
            options.append("noexec")
        options += [f"size={mount.size}", f"mode={mount.mode:o}", f"uid={uid}", f"gid={uid}"]
        mounts[mount.path] = ",".join(options)
    return mounts


def create_body(
    spec: SandboxSpec,
    *,
    uid: int,
    image: str,
    labels: dict[str, str],
    image_id: str | None = None,
    tools_path: Path | None = None,
    skills_path: Path | None = None,
    egress: tuple[EgressNetwork, str] | None = None,
) -> dict[str, object]:
    """The Docker Engine API body for POST /containers/create.

    `uid` is the sandbox's own host uid (and gid), allocated by the broker from the gateway's range.
    `image` must be a name the profile allows; `image_id`, when the broker resolved it, is what the
    container is created from, so the image cannot change between the check and the create.
    `egress` is the egress network and the sandbox's address on it, for a spec with network egress.
    """
    user = f"{uid}:{uid}"
    if image not in spec.image_names():
        raise ConfigError(f"image {image!r} is not allowed by the profile")
    binds = [
        f"{path.resolve()}:{target}:ro"
        for path, target in ((tools_path, "/tools"), (skills_path, "/skills"))
        if path is not None
    ]
    host_config: dict[str, object] = {
        "NetworkMode": "none",
        "ReadonlyRootfs": spec.read_only_rootfs,
        "CapDrop": ["ALL"],
        "CapAdd": list(spec.cap_add),
        "SecurityOpt": (["no-new-privileges:true"] if spec.no_new_privileges else [])
        + _seccomp_option(spec.seccomp, spec.runtime),
        "Privileged": False,
        "PidsLimit": host_pids_limit(spec),
        "Memory": spec.memory,
        "MemorySwap": spec.memory_swap,
        "NanoCpus": int(spec.cpus * 1e9),
        "Tmpfs": _tmpfs(spec, uid),
        "Ulimits": [
            {"Name": name, "Soft": value, "Hard": value} for name, value in sorted(spec.ulimits.items())
        ],
        "Init": spec.init,
        "Runtime": spec.runtime,
        "Binds": binds,
        "RestartPolicy": {"Name": "no"},
    }
    body: dict[str, object] = {
        "Image": image_id or image,
        "Cmd": ["sleep", "infinity"],
        "Entrypoint": [],
        "User": KEEPER_USER,
        "WorkingDir": spec.workdir,
        "Env": sandbox_env(spec),
        "Labels": {**labels, USER_LABEL: user},
        "Hostname": "sandbox",
        "StopSignal": "SIGKILL",  # nothing in a sandbox has state to flush on TERM
        "NetworkDisabled": True,
        "AttachStdin": False,
        "AttachStdout": False,
        "AttachStderr": False,
        "Tty": False,
        "OpenStdin": False,
        "HostConfig": host_config,
    }
    if spec.network == "egress":
        if egress is None:
            raise ConfigError("a profile with egress needs the egress network and an address on it")
        network, address = egress
        host_config |= network.host_config()
        body |= {
            "NetworkDisabled": False,
            "Env": sandbox_env(spec, network),
            "NetworkingConfig": network.networking_config(address),
        }
    if spec.exec_path == "agent":
        # The agent is PID 1 (it reaps orphans itself, and PID 1 ignores signals from inside the
        # sandbox), runs as the sandbox's uid, and reads requests from stdin, which stays open
        # across attach connections. Its stdout carries only protocol frames: no log driver keeps them.
        body |= {
            "Cmd": AGENT_COMMAND,
            "User": user,
            "AttachStdin": True,
            "AttachStdout": True,
            "AttachStderr": True,
            "OpenStdin": True,
            "StdinOnce": False,
        }
        host_config |= {"Init": False, "LogConfig": {"Type": "none", "Config": {}}}
    return body
