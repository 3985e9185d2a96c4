"""Wait until a TCP service accepts connections, e.g. in a container entrypoint.

    python examples/wait_for_service.py db.internal 5432 --timeout 60 && start-my-app

Exit status 0 once a connection succeeded, 1 on timeout. Each try races every ranked
(source, destination) pair, so a half-broken IPv6 path does not stall the wait.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from apr_async.connect.api import connect_socket
from apr_async.resolve.pairs import PairContext
from apr_async.resolve.resolver import Resolver


async def wait_for(host: str, port: int, seconds: float, nameservers: list[str] | None) -> bool:
    context = PairContext(resolver=Resolver(nameservers)) if nameservers else None
    deadline = time.monotonic() + seconds
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                sock = await connect_socket(
                    host, port, timeout=min(remaining, 5.0), context=context
                )
            except OSError as exc:  # refused, unreachable, timed out, not resolvable (yet)
                print(f"not yet: {exc.strerror or exc}", file=sys.stderr)
                await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
                continue
            peer = sock.getpeername()
            sock.close()
            print(f"{host} port {port} is up ({peer[0]})")
            return True
        return False
    finally:
        if context is not None and context.resolver is not None:
            await context.resolver.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--nameserver", action="append", help="DNS server (repeatable)")
    args = parser.parse_args()
    ok = asyncio.run(wait_for(args.host, args.port, args.timeout, args.nameserver))
    if not ok:
        print(f"timed out after {args.timeout:g} s", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
