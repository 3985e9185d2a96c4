"""An asyncio server whose handlers make outbound calls through apr_async.

Each client sends one line; the server forwards it to UPSTREAM over a ranked, source-bound
Happy Eyeballs connection and answers with the upstream's reply and the path that was used.

    python examples/outbound_server.py --listen 127.0.0.1:8000 --upstream api.internal:7000
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from apr_async.connect.api import open_connection
from apr_async.resolve.pairs import PairContext
from apr_async.resolve.resolver import Resolver


class Gateway:
    def __init__(self, upstream_host: str, upstream_port: int, context: PairContext | None):
        self.upstream = (upstream_host, upstream_port)
        self.context = context

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            up_reader, up_writer = await open_connection(
                *self.upstream, timeout=5.0, context=self.context
            )
            try:
                up_writer.write(line)
                up_writer.write_eof()
                reply = await up_reader.read(65536)
                src = up_writer.get_extra_info("sockname")[0]
                dst = up_writer.get_extra_info("peername")[0]
            finally:
                up_writer.close()
                await up_writer.wait_closed()
            writer.write(f"via {src} -> {dst}: ".encode() + reply)
        except OSError as exc:  # the upstream is unreachable: tell the client, keep serving
            writer.write(f"upstream error: {exc.strerror or exc}\n".encode())
        finally:
            writer.close()
            await writer.wait_closed()


async def serve(listen: str, upstream: str, nameservers: list[str] | None) -> None:
    lhost, _, lport = listen.rpartition(":")
    uhost, _, uport = upstream.rpartition(":")
    context = PairContext(resolver=Resolver(nameservers)) if nameservers else None
    gateway = Gateway(uhost.strip("[]"), int(uport), context)
    server = await asyncio.start_server(gateway.handle, lhost.strip("[]") or None, int(lport))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    port = server.sockets[0].getsockname()[1]
    print(f"listening on port {port}, forwarding to {upstream}", flush=True)
    async with server:
        await stop.wait()
    if context is not None and context.resolver is not None:
        await context.resolver.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:8000", help="HOST:PORT (PORT 0: any)")
    parser.add_argument("--upstream", required=True, help="HOST:PORT")
    parser.add_argument("--nameserver", action="append", help="DNS server (repeatable)")
    args = parser.parse_args()
    asyncio.run(serve(args.listen, args.upstream, args.nameserver))
    return 0


if __name__ == "__main__":
    sys.exit(main())
