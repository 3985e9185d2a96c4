"""A network lab in namespaces: client -- router -- server, switchable pathologies, DNS.

Used by tests, benchmarks and the demo. Needs root (see :func:`lab_unavailable_reason`).
"""

from __future__ import annotations

from apr_async.lab.availability import lab_unavailable_reason
from apr_async.lab.cleanup import lab_namespaces, sweep_stale_labs
from apr_async.lab.dnsserver import DNSServer, LabNames, QueryRecord, ZoneEntry, default_zone
from apr_async.lab.lab import HostName, Lab, LabUnavailableError
from apr_async.lab.netns import ExecResult, NetnsError
from apr_async.lab.scenarios import HEALTHY, PathMode, Scenario, combine
from apr_async.lab.servers import Accepted, EchoServer
from apr_async.lab.topology import ClientPlan, RouterPlan, ServerPlan, Topology

__all__ = [
    "HEALTHY",
    "Accepted",
    "ClientPlan",
    "DNSServer",
    "EchoServer",
    "ExecResult",
    "HostName",
    "Lab",
    "LabNames",
    "LabUnavailableError",
    "NetnsError",
    "PathMode",
    "QueryRecord",
    "RouterPlan",
    "Scenario",
    "ServerPlan",
    "Topology",
    "ZoneEntry",
    "combine",
    "default_zone",
    "lab_namespaces",
    "lab_unavailable_reason",
    "sweep_stale_labs",
]
