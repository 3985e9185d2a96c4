"""A tiny authoritative DNS server (UDP and TCP, standard library only) with a Python zone.

Used inside the lab (the client resolves over the lab network) and on loopback by tests::

    zone = {"dual.example.test": ZoneEntry(a=["127.0.0.1"], aaaa=["::1"], delay_aaaa=0.2)}
    async with DNSServer(zone, "127.0.0.1", 0) as server:
        resolver = aiodns.DNSResolver(nameservers=[f"127.0.0.1:{server.port}"])

A name absent from the zone gets NXDOMAIN; a present name without records of the asked type
gets NODATA (NOERROR, no answer). Per-name, per-type delays hold the answer back, which is how
"the AAAA answer comes N ms after the A answer" is produced.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import socket
import struct
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self, cast

from apr_async.lab.dnswire import (
    CLASS_IN,
    DNSFormatError,
    Query,
    Rcode,
    RRType,
    build_response,
    formerr,
    parse_query,
)

__all__ = ["DNSServer", "LabNames", "QueryRecord", "ZoneEntry", "default_zone", "normalize_name"]


def normalize_name(name: str) -> str:
    """Lower-case, no trailing dot: the zone's key form."""
    return name.strip().rstrip(".").lower()


@dataclass(frozen=True)
class ZoneEntry:
    """Records of one name. Addresses are validated; lists are accepted and frozen to tuples.

    ``delay_a``/``delay_aaaa``/``delay_https`` hold back answers to that query type by that
    many seconds. ``https`` are HTTPS (type 65) RDATA, served as given (build them with
    :func:`apr_async.lab.dnswire.https_rdata`; any bytes, so malformed ones too);
    ``drop_https`` never answers type-65 queries, like a middlebox that eats them.
    """

    a: tuple[str, ...] = ()
    aaaa: tuple[str, ...] = ()
    ttl: int = 300
    delay_a: float = 0.0
    delay_aaaa: float = 0.0
    https: tuple[bytes, ...] = ()
    delay_https: float = 0.0
    drop_https: bool = False

    def __post_init__(self) -> None:
        a = tuple(_checked(self.a, 4))
        aaaa = tuple(_checked(self.aaaa, 6))
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "aaaa", aaaa)
        object.__setattr__(self, "https", tuple(bytes(r) for r in self.https))
        if any(len(r) > 65535 for r in self.https):
            raise ValueError("an RDATA longer than 65535 octets cannot be sent")
        if isinstance(self.ttl, bool) or not isinstance(self.ttl, int) or not (
                0 <= self.ttl < 2**31):
            raise ValueError(f"ttl must be an int in [0, 2**31): {self.ttl!r}")
        for name in ("delay_a", "delay_aaaa", "delay_https"):
            delay = getattr(self, name)
            if (isinstance(delay, bool) or not isinstance(delay, int | float)
                    or not math.isfinite(delay) or not 0 <= delay <= 60):
                raise ValueError(f"{name} must be seconds in [0, 60]: {delay!r}")

    def records(self, qtype: int) -> list[tuple[int, int, str | bytes]]:
        """Answers for ``qtype`` as ``(rrtype, ttl, address or rdata)``."""
        if qtype == RRType.A:
            return [(RRType.A, self.ttl, a) for a in self.a]
        if qtype == RRType.AAAA:
            return [(RRType.AAAA, self.ttl, a) for a in self.aaaa]
        if qtype == RRType.HTTPS:
            return [(RRType.HTTPS, self.ttl, r) for r in self.https]
        return []

    def delay(self, qtype: int) -> float:
        """How long to hold back the answer to ``qtype``."""
        if qtype == RRType.A:
            return self.delay_a
        if qtype == RRType.AAAA:
            return self.delay_aaaa
        if qtype == RRType.HTTPS:
            return self.delay_https
        return 0.0


def _checked(addresses: Iterable[str] | str, version: int) -> Iterable[str]:
    if isinstance(addresses, str):
        raise TypeError("give a sequence of addresses, not a single string")
    for addr in addresses:
        ip = ipaddress.ip_address(addr)
        if ip.version != version:
            raise ValueError(f"{addr} is not an IPv{version} address")
        yield str(ip)


@dataclass(frozen=True)
class LabNames:
    """Names of the default lab zone (``.test`` is reserved for testing, RFC 6761)."""

    v4_only: str = "v4only.lab.test"
    v6_only: str = "v6only.lab.test"
    dual: str = "dual.lab.test"
    multi: str = "multi.lab.test"
    dead_v6: str = "deadv6.lab.test"
    dead_v4: str = "deadv4.lab.test"
    part_dead: str = "partdead.lab.test"
    all_dead: str = "alldead.lab.test"
    slow_aaaa: str = "slowaaaa.lab.test"
    nxdomain: str = "nxdomain.lab.test"


def default_zone(
    v4: Sequence[str],
    v6: Sequence[str],
    dead_v4: Sequence[str],
    dead_v6: Sequence[str],
    *,
    aaaa_delay: float = 0.25,
    ttl: int = 300,
    names: LabNames = LabNames(),
) -> dict[str, ZoneEntry]:
    """The lab's standard zone built from the server's addresses.

    ``names.dead_v6`` has only dead AAAA records but a live A record (Happy Eyeballs must fall
    back), ``names.slow_aaaa`` answers AAAA ``aaaa_delay`` seconds late, ``names.nxdomain`` is
    deliberately absent.
    """
    return {
        names.v4_only: ZoneEntry(a=(v4[0],), ttl=ttl),
        names.v6_only: ZoneEntry(aaaa=(v6[0],), ttl=ttl),
        names.dual: ZoneEntry(a=(v4[0],), aaaa=(v6[0],), ttl=ttl),
        names.multi: ZoneEntry(a=tuple(v4), aaaa=tuple(v6), ttl=ttl),
        names.dead_v6: ZoneEntry(a=(v4[0],), aaaa=tuple(dead_v6), ttl=ttl),
        names.dead_v4: ZoneEntry(a=tuple(dead_v4), aaaa=(v6[0],), ttl=ttl),
        names.part_dead: ZoneEntry(a=(dead_v4[0], v4[0]), aaaa=(dead_v6[0], v6[0]), ttl=ttl),
        names.all_dead: ZoneEntry(a=tuple(dead_v4), aaaa=tuple(dead_v6), ttl=ttl),
        names.slow_aaaa: ZoneEntry(a=(v4[0],), aaaa=(v6[0],), ttl=ttl, delay_aaaa=aaaa_delay),
    }


@dataclass(frozen=True)
class QueryRecord:
    """One query the server saw (for tests counting or ordering queries)."""

    name: str
    qtype: int
    transport: str  # "udp" or "tcp"
    peer: str


class _UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DNSServer) -> None:
        self._server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.transport is not None:
            self._server._spawn(self._server._answer_udp(self.transport, data, addr))

    def error_received(self, exc: Exception) -> None:  # ICMP errors from gone clients
        pass


@dataclass
class _Listeners:
    udp: list[asyncio.DatagramTransport] = field(default_factory=list)
    tcp: list[asyncio.Server] = field(default_factory=list)


class DNSServer:
    """An authoritative DNS server for a Python zone, on one port over UDP and TCP.

    Args:
        zone: name -> :class:`ZoneEntry` (names are case-insensitive, trailing dot optional).
        host: address (or addresses) to listen on; all share one port.
        port: port number, ``0`` picks a free one (same number for UDP and TCP).
        tcp: also serve DNS over TCP (for truncated answers).
    """

    def __init__(
        self,
        zone: Mapping[str, ZoneEntry] | None = None,
        host: str | Sequence[str] = "127.0.0.1",
        port: int = 0,
        *,
        tcp: bool = True,
    ) -> None:
        hosts = (host,) if isinstance(host, str) else tuple(host)
        if not hosts:
            raise ValueError("at least one host address is needed")
        for h in hosts:
            ipaddress.ip_address(h)  # a clear error before any socket exists
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"invalid port {port!r}")
        self._hosts = hosts
        self._requested_port = port
        self._tcp = tcp
        self._zone: dict[str, ZoneEntry] = {}
        self.set_zone(zone or {})
        self._listeners = _Listeners()
        self._tasks: set[asyncio.Task[None]] = set()
        self._tcp_writers: set[asyncio.StreamWriter] = set()
        self._port: int | None = None
        self.queries: list[QueryRecord] = []

    # -- zone ---------------------------------------------------------------------------------

    @property
    def zone(self) -> Mapping[str, ZoneEntry]:
        """The current zone (read-only view; replace it with :meth:`set_zone`)."""
        return dict(self._zone)

    def set_zone(self, zone: Mapping[str, ZoneEntry]) -> None:
        """Replace the whole zone (atomic: a single reference swap, safe from any thread)."""
        new: dict[str, ZoneEntry] = {}
        for name, entry in zone.items():
            if not isinstance(entry, ZoneEntry):
                raise TypeError(f"zone value for {name!r} is not a ZoneEntry")
            new[normalize_name(name)] = entry
        self._zone = new

    def update(self, name: str, entry: ZoneEntry | None) -> None:
        """Add, replace or (with ``None``) remove one name."""
        zone = dict(self._zone)
        if entry is None:
            zone.pop(normalize_name(name), None)
        else:
            zone[normalize_name(name)] = entry
        self.set_zone(zone)

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        if self._port is None:
            raise RuntimeError("DNSServer is not started")
        return self._port

    @property
    def hosts(self) -> tuple[str, ...]:
        """The addresses it listens on."""
        return self._hosts

    @property
    def nameservers(self) -> list[str]:
        """``host:port`` strings for ``aiodns.DNSResolver(nameservers=...)``."""
        return [f"[{h}]:{self.port}" if ":" in h else f"{h}:{self.port}" for h in self._hosts]

    async def start(self) -> None:
        """Bind every listener (TCP, then UDP on the same port)."""
        if self._port is not None:
            raise RuntimeError("DNSServer already started")
        attempts = 20 if self._requested_port == 0 else 1
        for attempt in range(attempts):  # port 0: the kernel's TCP port may be taken for UDP
            try:
                await self._bind_all(self._requested_port)
                return
            except OSError:
                await self._close_listeners()
                if attempt == attempts - 1:
                    raise

    async def _bind_all(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        for host in self._hosts:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            if self._tcp:
                # TCP first: ephemeral TCP ports are the crowded ones (TIME_WAIT)
                server = await asyncio.start_server(
                    self._serve_tcp, host, port, family=family, reuse_address=True)
                self._listeners.tcp.append(server)
                port = server.sockets[0].getsockname()[1]
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((host, port))
            except BaseException:
                sock.close()
                raise
            port = sock.getsockname()[1]  # port 0: all other listeners reuse this one
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UDPProtocol(self), sock=sock)
            self._listeners.udp.append(transport)
        self._port = port

    async def stop(self) -> None:
        """Close every listener and connection and cancel pending (delayed) answers."""
        await self._close_listeners()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._port = None

    async def _close_listeners(self) -> None:
        for transport in self._listeners.udp:
            transport.close()
        for server in self._listeners.tcp:
            server.close()
        if self._listeners.tcp:
            for _ in range(3):  # let already-accepted connections reach their handler
                await asyncio.sleep(0)
        for writer in list(self._tcp_writers):
            writer.transport.abort()
        for server in self._listeners.tcp:
            await server.wait_closed()
        self._listeners = _Listeners()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- answering ----------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def resolve(self, query: Query) -> tuple[Rcode, list[tuple[int, int, str | bytes]], float]:
        """Decide the answer to ``query``: rcode, records and delay (pure zone lookup)."""
        if query.opcode != 0:
            return Rcode.NOTIMP, [], 0.0
        if query.qclass != CLASS_IN:
            return Rcode.REFUSED, [], 0.0
        entry = self._zone.get(query.name)
        if entry is None:
            return Rcode.NXDOMAIN, [], 0.0
        return Rcode.NOERROR, entry.records(query.qtype), entry.delay(query.qtype)

    async def _reply(self, data: bytes, peer: str, transport: str) -> bytes | None:
        try:
            query = parse_query(data)
        except DNSFormatError:
            return formerr(data)
        self.queries.append(QueryRecord(query.name, query.qtype, transport, peer))
        entry = self._zone.get(query.name)
        if entry is not None and entry.drop_https and query.qtype == RRType.HTTPS:
            return None  # silence: the client's resolver must time out on its own
        rcode, answers, delay = self.resolve(query)
        if delay > 0:
            await asyncio.sleep(delay)
        max_size = query.udp_size if transport == "udp" else None
        return build_response(query, rcode, answers, max_size=max_size)

    async def _answer_udp(
        self, transport: asyncio.DatagramTransport, data: bytes, addr: Any
    ) -> None:
        reply = await self._reply(data, str(addr[0]), "udp")
        if reply is not None and not transport.is_closing():
            transport.sendto(reply, addr)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:  # tracked so stop() can wait for it
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._tcp_writers.add(writer)
        peer = str(writer.get_extra_info("peername", ("?",))[0])
        try:
            while True:
                try:
                    size = struct.unpack("!H", await reader.readexactly(2))[0]
                    data = await reader.readexactly(size)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                reply = await self._reply(data, peer, "tcp")
                if reply is None:
                    return
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except ConnectionError:
            return
        finally:
            self._tcp_writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()
