"""Time to first byte with and without HTTPS-record hints when AAAA is 100 ms late (issue 13).

    python benchmarks/bench_svcb.py [--quick] [--runs N]

Everything runs on loopback: the lab DNS server (``apr_async.lab.DNSServer``) on 127.0.0.1
answers A at once and AAAA 100 ms late for every name; an HTTPS server (aiohttp, TLS with a
throw-away CA) listens on 127.0.0.1 and ::1 on one random port. Names:

* ``hint.bench.test``: HTTPS record ``1 . port=P ipv6hint=::1 ipv4hint=127.0.0.1``;
* ``nohint.bench.test``: HTTPS record ``1 . port=P`` (no hints);
* ``plain.bench.test``: no HTTPS record (clients are given port P);
* ``drop.bench.test``: the DNS server never answers its HTTPS query (svcb=True, port P).

Each sample is one fresh client (new resolver, empty caches, new connection) timed from the
call to the first byte of the HTTP response (``GET /`` over TLS). Clients:

* apr open_connection, svcb on: the name's record (hints or not) via port 443;
* apr open_connection, svcb=False on the plain name;
* apr AprConnector on ``https://hint.bench.test/`` (record followed);
* aiohttp stock ``TCPConnector(resolver=AsyncResolver(lab DNS))`` on the plain name;
* asyncio: aiodns A + AAAA (both awaited, as getaddrinfo does), then
  ``asyncio.open_connection`` with ``happy_eyeballs_delay=0.25`` on the addresses.

Prints median and p90 in milliseconds and the ratio of each median to asyncio's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiodns
import aiohttp
from aiohttp import web
from aiohttp.resolver import AsyncResolver

from apr_async.aiohttp import AprConnector
from apr_async.connect.api import open_connection
from apr_async.lab.dnsserver import DNSServer, ZoneEntry
from apr_async.lab.dnswire import https_rdata
from apr_async.resolve.pairs import PairContext
from apr_async.resolve.resolver import Resolver

AAAA_DELAY = 0.1
NAMES = ("hint.bench.test", "nohint.bench.test", "plain.bench.test", "drop.bench.test")


def make_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a certificate for the benchmark names (openssl)."""
    ca_key, ca, key, csr, cert = (directory / n for n in
                                  ("ca.key", "ca.pem", "s.key", "s.csr", "s.pem"))
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=" + ",".join(f"DNS:{n}" for n in NAMES) + "\n")
    ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
    for cmd in (f"req -x509 {ec} -keyout {ca_key} -out {ca} -days 1 -subj /CN=bench-CA",
                f"req {ec} -keyout {key} -out {csr} -subj /CN=bench",
                f"x509 -req -in {csr} -CA {ca} -CAkey {ca_key} -CAcreateserial -out {cert}"
                f" -days 1 -extfile {ext}"):
        subprocess.run(["openssl", *cmd.split()], check=True, capture_output=True, timeout=60)
    return ca, cert, key


def zone(port: int) -> dict[str, ZoneEntry]:
    base = {"a": ("127.0.0.1",), "aaaa": ("::1",), "delay_aaaa": AAAA_DELAY, "ttl": 300}
    return {
        NAMES[0]: ZoneEntry(**base, https=(https_rdata(1, port=port, ipv6hint=("::1",),
                                                       ipv4hint=("127.0.0.1",)),)),
        NAMES[1]: ZoneEntry(**base, https=(https_rdata(1, port=port),)),
        NAMES[2]: ZoneEntry(**base),
        NAMES[3]: ZoneEntry(**base, drop_https=True),
    }


async def first_byte(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     host: str) -> None:
    writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    await reader.readexactly(1)
    writer.close()
    await writer.wait_closed()


Client = Callable[[], Awaitable[None]]


def clients(dns: list[str], port: int, ctx: ssl.SSLContext) -> dict[str, Client]:
    async def apr(host: str, target_port: int, svcb: bool) -> None:
        resolver = Resolver(dns, hosts_path=None)
        try:
            reader, writer = await open_connection(
                host, target_port, ssl=ctx, svcb=svcb, context=PairContext(resolver=resolver),
                timeout=5)
            await first_byte(reader, writer, host)
        finally:
            await resolver.close()

    async def apr_aiohttp() -> None:
        resolver = Resolver(dns, hosts_path=None)
        connector = AprConnector(context=PairContext(resolver=resolver), ssl=ctx)
        async with (aiohttp.ClientSession(connector=connector) as session,
                    session.get(f"https://{NAMES[0]}/") as response):
            await response.content.read(1)
        await resolver.close()

    async def stock() -> None:
        connector = aiohttp.TCPConnector(resolver=AsyncResolver(nameservers=dns), ssl=ctx,
                                         use_dns_cache=False)
        async with (aiohttp.ClientSession(connector=connector) as session,
                    session.get(f"https://{NAMES[2]}:{port}/") as response):
            await response.content.read(1)

    async def plain_asyncio() -> None:
        resolver = aiodns.DNSResolver(nameservers=dns)
        try:
            v6, v4 = await asyncio.gather(resolver.query_dns(NAMES[2], "AAAA"),
                                          resolver.query_dns(NAMES[2], "A"))
            addresses = [r.data.addr for r in (*v6.answer, *v4.answer)]
            reader, writer = await asyncio.open_connection(
                addresses[0], port, ssl=ctx, server_hostname=NAMES[2],
                happy_eyeballs_delay=0.25)
            await first_byte(reader, writer, NAMES[2])
        finally:
            await resolver.close()

    return {
        "apr open_connection, HTTPS record with hints": lambda: apr(NAMES[0], 443, True),
        "apr open_connection, HTTPS record, no hints": lambda: apr(NAMES[1], 443, True),
        "apr open_connection, svcb=False": lambda: apr(NAMES[2], port, False),
        "apr open_connection, type 65 dropped (wait 50 ms)": lambda: apr(NAMES[3], port, True),
        "apr AprConnector, record with hints": apr_aiohttp,
        "aiohttp stock TCPConnector (AsyncResolver)": stock,
        "asyncio: aiodns A+AAAA, open_connection": plain_asyncio,
    }


async def main(runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ca, cert, key = make_ca(Path(tmp))
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(str(cert), str(key))
        client_ctx = ssl.create_default_context(cafile=str(ca))
        app = web.Application()
        app.router.add_get("/", lambda request: web.Response(text="hello"))
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
        await site.start()
        port = runner.addresses[0][1]
        await web.TCPSite(runner, "::1", port, ssl_context=server_ctx).start()
        try:
            async with DNSServer(zone(port)) as dns:
                table = clients(dns.nameservers, port, client_ctx)
                results: dict[str, list[float]] = {name: [] for name in table}
                for _ in range(runs):
                    for name, client in table.items():  # interleaved: same conditions
                        start = time.perf_counter()
                        await client()
                        results[name].append((time.perf_counter() - start) * 1000)
        finally:
            await runner.cleanup()
    base = statistics.median(results["asyncio: aiodns A+AAAA, open_connection"])
    width = max(map(len, results))
    print(f"AAAA {AAAA_DELAY * 1000:.0f} ms late, {runs} runs each (milliseconds to first byte)")
    print(f"| {'client'.ljust(width)} | median |    p90 | x asyncio |")
    print(f"|{'-' * (width + 2)}|--------|--------|-----------|")
    for name, times in results.items():
        times.sort()
        p90 = times[min(len(times) - 1, int(0.9 * len(times)))]
        median = statistics.median(times)
        print(f"| {name.ljust(width)} | {median:6.1f} | {p90:6.1f} | {median / base:8.2f}x |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="5 runs")
    args = parser.parse_args()
    os.environ.setdefault("APR_ASYNC_AUTOSTART", "0")
    os.environ.setdefault("APR_ASYNC_TARGETS", "none")
    os.environ.setdefault("APR_ASYNC_PROBE_GATEWAYS", "0")
    asyncio.run(main(5 if args.quick else args.runs))
    sys.exit(0)
