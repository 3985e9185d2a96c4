"""Make a few connections, then print apr_async's metrics in Prometheus' text format.

    python examples/prometheus_metrics.py example.net 80 [--count 3] [--nameserver 198.51.100.53]

In a service, register the collector once and let prometheus_client serve it::

    REGISTRY.register(AprCollector()); prometheus_client.start_http_server(9100)
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from prometheus_client import CollectorRegistry, generate_latest

from apr_async import PairContext, connect_socket
from apr_async.metrics_prometheus import AprCollector
from apr_async.resolve.resolver import Resolver


async def connect_a_few(host: str, port: int, count: int, nameservers: list[str] | None) -> None:
    resolver = Resolver(nameservers) if nameservers else None
    context = PairContext(resolver=resolver) if resolver is not None else None
    try:
        for _ in range(count):
            try:
                sock = await connect_socket(host, port, context=context, timeout=5)
            except OSError as exc:
                print(f"# connect failed: {exc}")
            else:
                sock.close()
    finally:
        if resolver is not None:
            await resolver.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--nameserver", action="append", help="DNS server (repeatable)")
    args = parser.parse_args()
    asyncio.run(connect_a_few(args.host, args.port, args.count, args.nameserver))
    registry = CollectorRegistry()
    registry.register(AprCollector())
    sys.stdout.write(generate_latest(registry).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
