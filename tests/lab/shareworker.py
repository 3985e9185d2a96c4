"""A worker process for the host-sharing lab tests and benchmark (run inside the lab client).

``shareworker.py probe CACHE TARGETS INTERVAL UNTIL``: run a sharing ProbeService with the
given targets until ``time.monotonic()`` reaches UNTIL, print one JSON line when ready (after
the first round or the first shared snapshot) and one with the probes sent and the
connectivity status at the end.

``shareworker.py connect CACHE TARGETS INTERVAL DNS NAME PORT [share]``: a fresh process's
first ``apr_async.open_connection(NAME, PORT)`` through the default service; prints the time it
took and the peer.

``shareworker.py fail CACHE TARGETS INTERVAL ADDRESS PORT``: one refused connection (its
failure reaches the leader). ``shareworker.py rank CACHE TARGETS INTERVAL DNS NAME PORT UNTIL``:
ranks NAME until its first pair changes family and says when. Only lab addresses are ever used
(targets and DNS are arguments).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import apr_async
from apr_async.config import Config
from apr_async.probe import default
from apr_async.probe.service import ProbeService


def config(cache: str, targets: str, interval: str, **extra: object) -> Config:
    return Config(
        targets=tuple(targets.split(",")), probe_gateways=False, nat64_discovery=False,
        probe_interval=float(interval), probe_timeout=0.3, probe_jitter=0.1, netwatch="off",
        cache_path=Path(cache) / "apr_async" / "latency.json",
        **{"share": True, **extra},  # type: ignore[arg-type]
    )


async def probe(cache: str, targets: str, interval: str, until: str) -> None:
    async with ProbeService(config(cache, targets, interval), install=False) as svc:
        if svc.role != "follower":
            await svc.wait_ready(10)
        print(json.dumps({"ready": svc.role}), flush=True)
        await asyncio.sleep(max(0.0, float(until) - time.monotonic()))
        print(json.dumps({"role": svc.role, **svc.probes_sent,
                          "status": svc.status().as_dict(full=True)}), flush=True)


async def connect(*argv: str) -> None:
    cache, targets, interval, dns, name, port, *rest = argv
    share = rest[0] if rest else "1"
    cfg = config(cache, targets, interval, nameservers=tuple(dns.split(",")), dns_timeout=1.0,
                 autostart=True, share=share == "1")
    default.configure(cfg)
    try:
        started = time.perf_counter()
        _reader, writer = await apr_async.open_connection(name, int(port))
        elapsed = time.perf_counter() - started
        peer = writer.get_extra_info("peername")[0]
        writer.close()
        await writer.wait_closed()
        svc = default.current_service()
        print(json.dumps({"ms": elapsed * 1000, "peer": peer,
                          "role": svc.role if svc is not None else None}), flush=True)
    finally:
        await default.aclose_default()


async def fail(cache: str, targets: str, interval: str, address: str, port: str) -> None:
    """One connection to a closed port: the best pair is refused at once and that failure
    goes to the host's leader (other sources' attempts may hang in a blackhole: bounded)."""
    default.configure(config(cache, targets, interval, autostart=True))
    try:
        started = time.monotonic()
        try:
            _reader, writer = await apr_async.open_connection(address, int(port), timeout=2.0)
        except OSError as exc:
            svc = default.current_service()
            print(json.dumps({"failed_at": started, "error": type(exc).__name__,
                              "role": svc.role if svc is not None else None}), flush=True)
        else:
            writer.close()
            print(json.dumps({"failed_at": None}), flush=True)
    finally:
        await default.aclose_default()


async def rank(*argv: str) -> None:
    """Rank ``name`` every 10 ms until its first pair changes family (or ``until``)."""
    cache, targets, interval, dns, name, port, until = argv
    default.configure(config(cache, targets, interval, nameservers=tuple(dns.split(",")),
                             dns_timeout=1.0, autostart=True))
    try:
        first = (await apr_async.get_addr_pairs(name, int(port)))[0]
        svc = default.current_service()
        print(json.dumps({"ready": svc.role if svc is not None else None,
                          "first": first.destination[0]}), flush=True)
        while time.monotonic() < float(until):
            pairs = await apr_async.get_addr_pairs(name, int(port))
            if pairs[0].family != first.family:
                print(json.dumps({"changed_at": time.monotonic(),
                                  "first": pairs[0].destination[0],
                                  "failing": [p.destination[0] for p in pairs if p.failing]}),
                      flush=True)
                return
            await asyncio.sleep(0.01)
        print(json.dumps({"changed_at": None}), flush=True)
    finally:
        await default.aclose_default()


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    modes = {"probe": probe, "connect": connect, "fail": fail, "rank": rank}
    asyncio.run(modes[mode](*args))
