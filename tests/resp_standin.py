"""A Redis protocol stand-in for tests: HELLO (RESP3), PING, SET, GET, CLIENT, SELECT.

It speaks enough of the real protocol for redis-py's asyncio client: arrays of bulk strings
in; a RESP3 map for HELLO, simple strings, bulk strings and errors out.
"""

from __future__ import annotations

import asyncio


async def _command(reader: asyncio.StreamReader) -> list[bytes] | None:
    line = await reader.readline()
    if not line:
        return None
    assert line.startswith(b"*"), line
    parts = []
    for _ in range(int(line[1:])):
        size = int((await reader.readline())[1:])
        parts.append((await reader.readexactly(size + 2))[:-2])
    return parts


def resp_handler() -> tuple[dict[bytes, bytes], list[str]]:
    """(store, peers): the stand-in's data and the peers it served."""
    return {}, []


async def serve_resp(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
    store: dict[bytes, bytes], peers: list[str],
) -> None:
    peers.append(str(writer.get_extra_info("peername")[0]).removeprefix("::ffff:"))
    try:
        while (command := await _command(reader)) is not None:
            name = command[0].upper()
            if name == b"HELLO":
                writer.write(b"%3\r\n+server\r\n+standin\r\n+version\r\n+7.2.0\r\n"
                             b"+proto\r\n:3\r\n")
            elif name == b"PING":
                writer.write(b"+PONG\r\n")
            elif name == b"SET":
                store[command[1]] = command[2]
                writer.write(b"+OK\r\n")
            elif name == b"GET":
                value = store.get(command[1])
                writer.write(b"$-1\r\n" if value is None else
                             b"$%d\r\n%s\r\n" % (len(value), value))
            elif name in (b"CLIENT", b"SELECT"):
                writer.write(b"+OK\r\n")
            else:
                writer.write(b"-ERR unknown command " + name + b"\r\n")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()
