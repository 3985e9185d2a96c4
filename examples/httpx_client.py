"""Fetch a URL with httpx over apr_async's ranked, source-bound Happy Eyeballs connections.

    python examples/httpx_client.py http://example.net/ [--nameserver 198.51.100.53] [--http2]

Prints the HTTP version and status, the pair that won the race and why, and the body's start.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import httpx

from apr_async.httpx import AprTransport, attempts_error


async def fetch(url: str, nameservers: list[str] | None, http2: bool) -> int:
    transport = AprTransport(nameservers=nameservers, http2=http2)
    async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(15, connect=5)) as c:
        response = await c.get(url)
        pair = response.extensions["network_stream"].get_extra_info("apr_pair")
        print(f"{response.http_version} {response.status_code}  {len(response.content)} bytes")
        if pair is not None:
            print(f"won by {pair.source[0]} -> {pair.destination[0]} ({pair.reason})")
        print(response.text[:200])
        return 0 if response.status_code < 400 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--nameserver", action="append", help="DNS server (repeatable)")
    parser.add_argument("--http2", action="store_true", help="offer HTTP/2 (over TLS)")
    args = parser.parse_args()
    try:
        return asyncio.run(fetch(args.url, args.nameserver, args.http2))
    except httpx.HTTPError as exc:
        cause = attempts_error(exc)
        print(f"error: {exc}", file=sys.stderr)
        for pair, error in cause.attempts if cause is not None else ():
            print(f"  {pair.destination[0]} from {pair.source[0]}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
