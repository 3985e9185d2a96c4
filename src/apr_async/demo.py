"""``apr-async demo``: build a lab, start a dual-stack server in it, connect from the client.

For now the connections use plain asyncio (later the library's own racing connect takes over),
which also shows the problem apr_async solves: with IPv6 blackholed, a plain connect to the
IPv6 address just hangs until its timeout. Without root (or network namespaces) the demo says
why and runs the same connections on loopback only. Nothing is ever sent outside the lab.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import aiodns

from apr_async.lab import EchoServer, Lab, Scenario, lab_unavailable_reason
from apr_async.lab.netns import NetnsError

__all__ = ["ConnectionReport", "run_demo"]

CONNECT_TIMEOUT = 0.5


@dataclass(frozen=True)
class ConnectionReport:
    """One demonstrated connection attempt."""

    label: str
    destination: str
    port: int
    ok: bool
    source: str | None
    server_saw: str | None
    connect_ms: float
    error: str | None


async def _connect(label: str, destination: str, port: int) -> ConnectionReport:
    """Plain asyncio connect; reads the echo server's ``PEER`` line to show what it saw."""
    start = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(destination, port), CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        error = "timed out" if isinstance(exc, TimeoutError) else str(exc.strerror or exc)
        return ConnectionReport(label, destination, port, False, None, None,
                                (time.monotonic() - start) * 1000, error)
    elapsed = (time.monotonic() - start) * 1000
    try:
        source = str(writer.get_extra_info("sockname")[0])
        line = (await asyncio.wait_for(reader.readline(), CONNECT_TIMEOUT)).decode().split()
        saw = line[1] if line[:1] == ["PEER"] else None
    finally:
        writer.close()
        await writer.wait_closed()
    return ConnectionReport(label, destination, port, True, source, saw, elapsed, None)


async def _resolve(nameserver: str, name: str) -> list[str]:
    resolver = aiodns.DNSResolver(nameservers=[nameserver], timeout=1.0, tries=1)
    try:
        found: list[str] = []
        for qtype in ("AAAA", "A"):
            try:
                result = await resolver.query_dns(name, qtype)
            except aiodns.error.DNSError:
                continue
            found += [str(getattr(record.data, "addr", "")) for record in result.answer]
        return found
    finally:
        await resolver.close()


async def _lab_demo() -> dict[str, Any]:
    started = time.monotonic()
    async with Lab() as lab:
        setup_ms = (time.monotonic() - started) * 1000
        echo = await lab.start_echo_server(announce_peer=True)
        name = lab.names.dual
        resolved = await lab.run_in("client", _resolve, lab.dns_v6, name)
        attempts = [
            ("healthy, IPv6", lab.server.v6[0]),
            ("healthy, IPv4", lab.server.v4[0]),
        ]
        reports = [await lab.run_in("client", _connect, label, dst, echo.port)
                   for label, dst in attempts]
        await lab.set_scenario(Scenario.nat44_masquerade())
        reports.append(await lab.run_in("client", _connect, "NAT44, IPv4", lab.server.v4[0],
                                        echo.port))
        await lab.set_scenario(Scenario.v6_blackholed())
        reports.append(await lab.run_in("client", _connect, "IPv6 blackholed, IPv6",
                                        lab.server.v6[0], echo.port))
        return {
            "mode": "lab",
            "reason": None,
            "setup_ms": round(setup_ms, 1),
            "lab": {
                "prefix": lab.prefix,
                "client": {"v4": lab.client.v4, "gua": lab.client.gua, "ula": lab.client.ula},
                "server": {"v4": list(lab.server.v4), "v6": list(lab.server.v6)},
                "dns": lab.dns_servers,
            },
            "dns": {"name": name, "addresses": resolved},
            "connections": [asdict(r) for r in reports],
        }


async def _loopback_demo(reason: str) -> dict[str, Any]:
    targets = [("loopback, IPv4", "127.0.0.1")]
    if socket.has_ipv6 and _has_ipv6_loopback():
        targets.insert(0, ("loopback, IPv6", "::1"))
    host = "::" if len(targets) == 2 else "127.0.0.1"
    async with EchoServer(host, 0, announce_peer=True) as echo:
        reports = [await _connect(label, dst, echo.port) for label, dst in targets]
    return {"mode": "loopback", "reason": reason, "connections": [asdict(r) for r in reports]}


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def _render(result: dict[str, Any]) -> str:
    lines: list[str] = []
    if result["mode"] == "lab":
        lab = result["lab"]
        lines += [
            f"apr-async demo: lab {lab['prefix']} built in {result['setup_ms']:.0f} ms "
            "(client -- router -- server in network namespaces)",
            f"  client  {lab['client']['v4']}  {lab['client']['gua']}  {lab['client']['ula']}",
            f"  server  {'  '.join(lab['server']['v4'][:2])}  {'  '.join(lab['server']['v6'][:2])}",
            f"  DNS     {result['dns']['name']} -> {', '.join(result['dns']['addresses'])}",
        ]
    else:
        lines += [f"apr-async demo: no lab ({result['reason']}); using loopback only"]
    lines.append("")
    lines.append(f"  {'attempt':<24} {'destination':<18} {'result':<10} {'ms':>7}  server saw")
    for c in result["connections"]:
        status = "connected" if c["ok"] else (c["error"] or "failed")
        lines.append(f"  {c['label']:<24} {c['destination']:<18} {status:<10} "
                     f"{c['connect_ms']:>7.1f}  {c['server_saw'] or '-'}")
    if result["mode"] == "lab":
        lines += ["", "  A plain connect to a blackholed IPv6 address waits for its timeout;",
                  "  apr_async races ranked (source, destination) pairs instead."]
    return "\n".join(lines)


def run_demo(json_output: bool = False) -> int:
    """Run the demo; print a readable report (or JSON). Returns the process exit code."""
    reason = lab_unavailable_reason()
    result: dict[str, Any]
    if reason is None:
        try:
            result = asyncio.run(_lab_demo())
        except (NetnsError, OSError) as exc:
            result = asyncio.run(_loopback_demo(f"lab set-up failed: {exc}"))
    else:
        result = asyncio.run(_loopback_demo(reason))
    if json_output:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(_render(result))
    # the blackholed attempt is meant to fail; every other one must have worked
    expected = [c for c in result["connections"] if "blackholed" not in c["label"]]
    return 0 if all(c["ok"] for c in expected) else 1
