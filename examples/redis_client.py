"""redis-py's asyncio client over connections apr_async raced: a Connection class for the pool.

    python examples/redis_client.py HOST [PORT] [--nameserver 198.51.100.53]

redis-py has no socket hook, but its ``Connection._connect`` opens the stream with
``asyncio.open_connection(**self._connection_arguments())``. ``AprRedisConnection`` races the
socket first, then lets redis-py open the stream on it (``sock=``), so redis-py's own socket
options, TLS (``SSLConnection`` adds ``ssl=``) and error handling stay as they are::

    pool = redis.asyncio.ConnectionPool(host=..., connection_class=AprRedisConnection)
    client = redis.asyncio.Redis(connection_pool=pool)

Sets a key, reads it back and prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from collections.abc import Mapping
from typing import Any

import redis.asyncio as redis
from redis.asyncio.connection import Connection

import apr_async
from apr_async.resolve.pairs import PairContext
from apr_async.resolve.resolver import Resolver

CONTEXT: PairContext | None = None  # the ranking context (here: with --nameserver's resolver)


class AprRedisConnection(Connection):
    """A redis-py asyncio ``Connection`` whose TCP connection apr_async makes."""

    _apr_sock: socket.socket | None = None

    def _connection_arguments(self) -> Mapping[str, Any]:
        arguments = dict(super()._connection_arguments())
        if self._apr_sock is None:
            return arguments
        host = arguments.pop("host")
        arguments.pop("port")
        if arguments.get("ssl"):
            arguments["server_hostname"] = host  # asyncio needs it when given sock=
        return {**arguments, "sock": self._apr_sock}

    async def _connect(self) -> None:
        self._apr_sock = await apr_async.connect_socket(
            self.host, self.port, timeout=self.socket_connect_timeout, context=CONTEXT
        )
        try:
            await super()._connect()
        except BaseException:
            self._apr_sock.close()
            raise
        finally:
            self._apr_sock = None


async def run(host: str, port: int, nameservers: list[str] | None) -> int:
    global CONTEXT  # noqa: PLW0603 - a script's one setting
    resolver = Resolver(nameservers) if nameservers else None
    CONTEXT = PairContext(resolver=resolver) if resolver else None
    pool = redis.ConnectionPool(host=host, port=port, connection_class=AprRedisConnection)
    client = redis.Redis(connection_pool=pool)
    try:
        await client.set("apr_async", "raced")
        print(f"apr_async = {(await client.get('apr_async')).decode()}")
    finally:
        await client.aclose()
        await pool.aclose()
        if resolver is not None:
            await resolver.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host")
    parser.add_argument("port", type=int, nargs="?", default=6379)
    parser.add_argument("--nameserver", action="append", help="DNS server (repeatable)")
    args = parser.parse_args()
    try:
        return asyncio.run(run(args.host, args.port, args.nameserver))
    except (OSError, redis.RedisError) as exc:
        print(f"error: {exc!r}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
