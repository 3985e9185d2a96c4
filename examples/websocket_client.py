"""Send one message over a WebSocket connected through apr_async's race, print the reply.

    python examples/websocket_client.py ws://example.net/echo hello [--nameserver 198.51.100.53]
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from apr_async import PairContext
from apr_async.resolve.resolver import Resolver
from apr_async.websockets import connect


async def talk(uri: str, message: str, nameservers: list[str] | None) -> int:
    resolver = Resolver(nameservers) if nameservers else None
    context = PairContext(resolver=resolver) if resolver is not None else None
    try:
        async with connect(uri, context=context, open_timeout=10) as ws:
            await ws.send(message)
            print(f"{ws.local_address[0]} -> {ws.remote_address[0]}: {await ws.recv()}")
    finally:
        if resolver is not None:
            await resolver.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("uri")
    parser.add_argument("message")
    parser.add_argument("--nameserver", action="append", help="DNS server (repeatable)")
    args = parser.parse_args()
    try:
        return asyncio.run(talk(args.uri, args.message, args.nameserver))
    except OSError as exc:  # apr_async's AllAttemptsFailedError included
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
