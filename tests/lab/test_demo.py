"""``python -m apr_async demo`` end to end: in the lab, and (without privileges) on loopback.

The demo runs as a subprocess exactly as a user runs it, with ResourceWarnings as errors so a
leaked socket or transport shows up on its stderr.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import sys
from typing import Any

import pytest

from apr_async.lab import LabNames, lab_namespaces

NO_CAPS = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"]
ULA = ipaddress.ip_network("fc00::/7")


def run_demo(*args: str, prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [*(prefix or []), sys.executable, "-W", "error::ResourceWarning",
            "-m", "apr_async", "demo", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "ResourceWarning" not in proc.stderr, proc.stderr
    return proc


def host_of(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``[2001:db8::1]:80`` / ``198.51.100.1:80`` / ``fe80::1%up0`` -> the address."""
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    return ipaddress.ip_address(text.partition("%")[0])


def clients(race: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["client"]: c for c in race["clients"]}


def attempts(client: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in client["events"] if e["kind"] == "attempt"]


@pytest.mark.lab
def test_demo_json_apr_async_connects_where_plain_asyncio_does_not() -> None:
    proc = run_demo("--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["mode"] == "lab" and report["reason"] is None

    # 1. the probe round saw IPv4 working and IPv6 (GUA and ULA) not
    status = report["status"]
    assert status["ready"]
    flags = status["status"]
    assert flags["IPv4_ok"] and flags["ULA_present"]
    assert not (flags["IPv6_ok"] or flags["GUA_ok"] or flags["ULA_ok"])

    # 2. ranked pairs: IPv4 first (the probes lost IPv6), every place explained, and the ULA
    # source behind the GUA source towards the same destination
    pairs = report["pairs"]
    assert pairs["host"] == LabNames().dual
    ranked = pairs["pairs"]
    assert ranked[0]["family"] == "IPv4"
    assert all(p["reason"] for p in ranked)
    v6_sources = [host_of(p["source"]) for p in ranked if p["family"] == "IPv6"]
    assert any(s in ULA for s in v6_sources) and any(s not in ULA for s in v6_sources)
    assert v6_sources[-1] in ULA

    blackhole, ula_trap = report["races"]
    # 3. IPv6 blackholed: apr_async goes straight to IPv4; plain asyncio sits on IPv6
    apr, plain, he = (clients(blackhole)[k] for k in ("apr_async", "asyncio", "asyncio HE"))
    assert apr["connected"] and host_of(apr["winner"]["destination"]).version == 4
    assert (not plain["connected"] and plain["error"] == "timed out") or (
        plain["elapsed_ms"] > apr["elapsed_ms"])
    assert [host_of(a["destination"]).version for a in attempts(plain)][:1] == [6]
    assert he["connected"] and host_of(he["winner"]["destination"]).version == 4
    assert len(attempts(he)) >= 2  # IPv6 first, then IPv4 after the delay

    # 4. ULA trap on an IPv6-only name: apr_async binds the GUA source, asyncio (with or
    # without Happy Eyeballs) leaves the choice to the kernel, which picks the ULA
    apr, plain, he = (clients(ula_trap)[k] for k in ("apr_async", "asyncio", "asyncio HE"))
    assert ula_trap["host"] == LabNames().v6_only
    assert apr["connected"]
    source = host_of(apr["winner"]["source"])
    assert source.version == 6 and source not in ULA
    assert apr["server_saw"] == apr["winner"]["source"]
    for stock in (plain, he):
        assert not stock["connected"] and stock["error"] == "timed out"
        assert attempts(stock) and all(host_of(a["source"]) in ULA for a in attempts(stock))

    assert lab_namespaces(report["lab"]["prefix"]) == []  # the demo cleaned up after itself


@pytest.mark.lab
def test_demo_readable_output() -> None:
    proc = run_demo()
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "\x1b[" not in out  # not a terminal: no colours
    assert out.startswith("apr-async demo: lab ")
    for heading in ("1. Connectivity status", f"2. Ranked pairs for {LabNames().dual}",
                    f"3. Connecting to {LabNames().dual}",
                    f"4. Connecting to {LabNames().v6_only}"):
        assert heading in out
    assert re.search(r"^\s+apr_async\s+connected\s", out, re.MULTILINE)
    assert re.search(r"^\s+asyncio \(cap \S+\)\s+timed out\s", out, re.MULTILINE)
    assert "why here" in out and "timeline" in out
    # the timeline shows each client's attempts: stock asyncio left from the ULA source
    assert re.search(r"^\s+apr_async\s+[\d.]+ ms\s+IPv4\s+\d", out, re.MULTILINE)
    assert re.search(r"^\s+asyncio\s+[\d.]+ ms\s+IPv6\s+fd12:", out, re.MULTILINE)


@pytest.mark.tools("setpriv")
def test_demo_without_privileges_explains_and_uses_loopback() -> None:
    # an empty capability bounding set: no namespaces can be made, as for a non-root user
    proc = run_demo("--json", prefix=NO_CAPS)
    if proc.returncode != 0 and "setpriv" in proc.stderr:
        pytest.skip(f"setpriv cannot drop capabilities here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["mode"] == "loopback"
    assert "CAP_" in report["reason"] or "root" in report["reason"]
    assert "status" not in report and "lab" not in report
    assert report["pairs"]["host"] == "localhost"
    (race,) = report["races"]
    apr = clients(race)["apr_async"]
    assert apr["connected"]
    touched = [host_of(p["destination"]) for p in report["pairs"]["pairs"]]
    touched += [host_of(a["destination"]) for c in race["clients"] for a in attempts(c)]
    assert touched and all(ip.is_loopback for ip in touched)

    proc = run_demo(prefix=NO_CAPS)
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("no lab: ") and "loopback only" in first
