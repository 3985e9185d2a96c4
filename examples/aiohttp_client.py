"""Fetch a URL with aiohttp over apr_async's ranked, source-bound Happy Eyeballs connections.

    python examples/aiohttp_client.py http://example.net/ [--nameserver 198.51.100.53]

Prints the HTTP status, the body's size and its beginning.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import aiohttp

from apr_async.aiohttp import AprConnector


async def fetch(url: str, nameservers: list[str] | None) -> int:
    connector = AprConnector(nameservers=nameservers)
    timeout = aiohttp.ClientTimeout(total=15, sock_connect=5)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
        session.get(url) as response,
    ):
        body = await response.read()
        print(f"{response.status} {response.reason}  {len(body)} bytes")
        print(body[:200].decode(errors="replace"))
        return 0 if response.status < 400 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--nameserver", action="append", help="DNS server (repeatable)")
    args = parser.parse_args()
    try:
        return asyncio.run(fetch(args.url, args.nameserver))
    except aiohttp.ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
