"""What the tests (and the benchmark) share: waiting for a condition (`waiting`), reading audit
events (`events`), and running what a test needs of its own: a gateway process
(`gateway_process`), a socket proxy (`proxy`), a Docker engine (`engine`), sandbox hosts each in a
network namespace of its own (`fleet_hosts`) with a throwaway PKI (`pki`), plus loopback ports
(`net`) and the processes in a gateway's sandboxes (`sandboxes`).

Nothing here imports pytest: `python -m bench` uses the gateway launcher and the waits outside a
test run. The waits and the audit reader, used nearly everywhere, are importable from here.
"""

from tests.support.events import audit_events, matching, read_events, settled_events
from tests.support.waiting import EventuallyFailed, eventually, eventually_async

__all__ = [
    "EventuallyFailed",
    "audit_events",
    "eventually",
    "eventually_async",
    "matching",
    "read_events",
    "settled_events",
]
