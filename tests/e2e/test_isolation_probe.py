"""The isolation probe, run through the real gateway inside real sandboxes, under runc and gVisor.

Each property is its own test. `default` runs on runc; `strict` on runsc (gVisor), where the same
seccomp profile is applied inside gVisor's kernel through --oci-seccomp.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from gateway.backend.docker_engine import DockerBackend
from gateway.egress.network import EGRESS_PORT, EgressNetwork
from policy import load_policy
from tests.e2e.conftest import Gateway, mcp_client, start_gateway, stop_gateway
from tests.support.egress_lock import egress_port

PROBE = Path(__file__).parents[1] / "probe" / "isolation_probe.py"
CHECKS = [
    "uid_gid_not_root",
    "capability_sets_empty",
    "no_new_privs",
    "seccomp_filter_mode",
    "syscall_unshare_refused",
    "syscall_mount_refused",
    "syscall_umount2_refused",
    "syscall_setns_refused",
    "syscall_pivot_root_refused",
    "syscall_io_uring_setup_refused",
    "syscall_userfaultfd_refused",
    "syscall_bpf_refused",
    "syscall_perf_event_open_refused",
    "syscall_keyctl_refused",
    "syscall_add_key_refused",
    "syscall_kexec_load_refused",
    "syscall_init_module_refused",
    "syscall_ptrace_refused",
    "syscall_process_vm_readv_refused",
    "socket_af_alg_refused",
    "socket_af_vsock_refused",
    "socket_af_packet_refused",
    "no_engine_sockets",
    "only_loopback_interface",
    "no_route_to_internet",
    "no_route_to_metadata",
    "no_route_to_host_proxy_port",
    "no_route_to_host_gateway_port",
    "no_route_to_loopback_proxy_port",
    "no_route_to_loopback_gateway_port",
    "read_only_rootfs",
    "read_only_etc",
    "read_only_usr",
    "proc_sys_not_writable",
    "proc_sysrq_trigger_not_writable",
    "proc_kcore_masked",
    "cgroup_fs_read_only",
    "dev_minimal",
    "mknod_device_refused",
    "few_pids_visible",
    "rlimit_core_zero",
    "rlimit_nofile",
    "rlimit_fsize",
    "no_secrets_in_environment",
    "no_setuid_binaries",
]
#: Checks only an egress sandbox makes: its one door (the egress proxy) opens, nothing else on that
#: network does.
EGRESS_CHECKS = [
    "egress_proxy_is_the_one_door",
    "no_route_to_bridge_gateway_other_port",
    "no_route_to_bridge_gateway_ssh",
    "no_route_to_bridge_dns",
    "no_route_to_outside_direct",
]
#: sam is mapped to the strict (gVisor) profile, eve to `default` with an egress allow-list (runc).
RUNTIMES = {"runc": "alice", "runsc": "sam", "egress": "eve"}
#: Under runsc a command runs in gVisor's user-space kernel: these calls are served (or refused) by
#: gVisor itself and never reach the host kernel. The OCI seccomp profile (--oci-seccomp) covers the
#: container's init tree, not `docker exec`'d processes, so inside gVisor the safe outcome is containment.
CONTAINED_BY_GVISOR = {
    "seccomp_filter_mode",
    "syscall_unshare_refused",
    "syscall_io_uring_setup_refused",
    "socket_af_packet_refused",
    "mknod_device_refused",
}
GVISOR_KERNEL = "Linux version 4.4.0 #1 SMP Sun Jan 10 15:06:54 PST 2016"


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory, backend: DockerBackend) -> dict[str, dict[str, Any]]:
    from tests.e2e.test_policy_over_mcp import write_policy

    tmp = tmp_path_factory.mktemp("probe")
    egress_profile = {
        **load_policy().profiles["default"].model_dump(mode="json"),
        "egress": {"allow": ["good.test:443"]},
    }
    policy = write_policy(
        tmp / "policy.yaml", {"profiles.egress-probe": egress_profile, "principals.eve": "egress-probe"}
    )
    with egress_port():
        gateway = start_gateway(
            tmp, "--policy", str(policy), principals={"alice": "default", "sam": "default", "eve": "default"}
        )
        expected = {
            "nofile": 1024,
            "fsize": 1073741824,
            "proxy_port": 2375,
            "gateway_port": gateway_port(gateway),
        }
        network = EgressNetwork.from_env()
        door = {"proxy_host": str(network.gateway), "proxy_port": EGRESS_PORT, "dns": str(network.dns)}
        try:
            reports = {
                runtime: anyio.run(
                    _probe,
                    gateway,
                    gateway.tokens[who],
                    _code({**expected, "egress": door} if runtime == "egress" else expected),
                )
                for runtime, who in RUNTIMES.items()
            }
        finally:
            stop_gateway(gateway)
    assert backend.list({"sandbox-gateway.gateway": gateway.gateway_id}) == []
    return reports


def _code(expected: dict[str, Any]) -> str:
    return f"EXPECTED = {json.dumps(expected)}\n" + PROBE.read_text()


def gateway_port(gateway: Gateway) -> int:
    return int(gateway.base.rsplit(":", 1)[1])


#: Debian's runsc (release 20221219) now and then stops a whole gVisor sandbox while this probe runs
#: ("urpc method containerManager.WaitPID failed: EOF"). The sandbox is lost, not breached: the gateway
#: replaces it on the next call. The probe is retried on a fresh sandbox in that case only.
GVISOR_CRASH = "containerManager.WaitPID"
ATTEMPTS = 5


async def _probe(gateway: Gateway, token: str, code: str) -> dict[str, Any]:
    async with mcp_client(gateway.url, token) as client:
        for attempt in range(1, ATTEMPTS + 1):
            result = await client.call_tool("execute_python", {"code": code})
            content = result.structured_content
            assert content is not None, result.content
            if GVISOR_CRASH in content["stderr"] and attempt < ATTEMPTS:
                print(f"gVisor sandbox lost during the probe (attempt {attempt}); retrying on a new one")
                continue
            assert content["exit_code"] == 0, content["stderr"]
            return dict(json.loads(content["stdout"]))
    raise AssertionError("unreachable")


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_the_probe_reports_every_property(probed: dict[str, dict[str, Any]], runtime: str) -> None:
    extra = EGRESS_CHECKS if runtime == "egress" else []
    assert sorted(probed[runtime]) == sorted([*CHECKS, *extra, "kernel"])


@pytest.mark.parametrize("check", EGRESS_CHECKS)
def test_an_egress_sandbox_reaches_only_its_proxy(probed: dict[str, dict[str, Any]], check: str) -> None:
    outcome = probed["egress"][check]
    assert outcome["ok"], f"{check} under egress: observed {outcome['observed']}"


def test_strict_sandboxes_run_on_gvisor_and_default_ones_do_not(probed: dict[str, dict[str, Any]]) -> None:
    assert probed["runsc"]["kernel"]["observed"] == GVISOR_KERNEL
    assert probed["runc"]["kernel"]["observed"] != GVISOR_KERNEL


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
@pytest.mark.parametrize("check", CHECKS)
def test_isolation_property(probed: dict[str, dict[str, Any]], runtime: str, check: str) -> None:
    outcome = probed[runtime][check]
    if runtime == "runsc" and check in CONTAINED_BY_GVISOR:
        assert probed["runsc"]["kernel"]["observed"] == GVISOR_KERNEL, (
            "contained only if gVisor serves the call"
        )
        return
    assert outcome["ok"], f"{check} under {runtime}: observed {outcome['observed']}"
