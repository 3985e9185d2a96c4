"""Name resolution through aiodns: AAAA and A concurrently, TTL cache, stdlib-style errors.

``Resolver.answers(host)`` yields each address family's answer as soon as it arrives, which is
what a Happy Eyeballs connector needs (RFC 8305 section 3); ``Resolver.resolve(host)`` is the
simple form returning ``[(ip, zone), ...]``. Numeric hosts and ``addr%zone`` literals, the
RFC 6761 special-use names and names in the hosts file are answered locally without DNS:
``localhost`` and ``*.localhost`` are loopback (section 6.3; a hosts-file entry for them wins,
as with glibc), ``invalid`` and ``*.invalid`` are NXDOMAIN (``EAI_NONAME``, section 6.4).
Answers are cached for the smallest TTL of their RRset, clamped to ``[min_ttl, max_ttl]``;
NXDOMAIN and NODATA are cached for ``negative_ttl``, temporary failures for ``failure_ttl``.
Concurrent lookups of one name share one query, and a caller that is cancelled does not
cancel the query others (or the cache) are waiting for.

A ``Resolver`` can be used from several event loops (one pycares channel per loop, created in
that loop's thread, so a thread that entered a network namespace queries from inside it).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import aiodns
import pycares

from apr_async.errors import (
    EAI_NODATA,
    HostSpec,
    ResolutionError,
    gaierror,
    gaierror_from_ares,
    parse_host,
)

__all__ = [
    "Address",
    "FamilyAnswer",
    "Resolution",
    "Resolver",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: An address as ``(ip, zone)``; ``zone`` is an interface name or index text, or ``None``.
Address = tuple[IPAddress, str | None]

_QTYPE: dict[int, str] = {socket.AF_INET6: "AAAA", socket.AF_INET: "A"}
_RTYPE_A = pycares.QUERY_TYPE_A
_RTYPE_AAAA = pycares.QUERY_TYPE_AAAA
_RTYPE_CNAME = pycares.QUERY_TYPE_CNAME
_ARES_NAMES: dict[int, str] = dict(pycares.errno.errorcode)
_HOSTS_RECHECK = 5.0


@dataclass(frozen=True, slots=True)
class FamilyAnswer:
    """One address family's answer for a host.

    ``origin`` says where it came from: ``"dns"``, ``"cache"``, ``"hosts"``, ``"localhost"``,
    ``"invalid"`` (an RFC 6761 ``.invalid`` name, never sent to DNS) or ``"literal"``.
    ``error`` is set (and ``addresses`` empty) when the lookup failed.
    """

    family: int
    addresses: tuple[Address, ...]
    canonname: str | None
    ttl: float
    origin: str
    error: ResolutionError | None = None


@dataclass(frozen=True, slots=True)
class Resolution:
    """Both families' answers for a host (only the asked family when one was given)."""

    host: HostSpec
    answers: tuple[FamilyAnswer, ...]

    @property
    def addresses(self) -> list[Address]:
        """Every address, IPv6 answers first, each family in the order the server gave."""
        ordered = sorted(self.answers, key=lambda a: a.family != socket.AF_INET6)
        return [address for answer in ordered for address in answer.addresses]

    @property
    def canonname(self) -> str:
        """The canonical name (the target of a CNAME chain), else the host as given."""
        for answer in sorted(self.answers, key=lambda a: a.family != socket.AF_INET6):
            if answer.canonname:
                return answer.canonname
        return self.host.name or self.host.text

    def error(self) -> ResolutionError | None:
        """The gaierror to raise when no family has an address, else ``None``."""
        return combined_error(self.host.text, self.answers)


def combined_error(host: str, answers: Iterable[FamilyAnswer]) -> ResolutionError | None:
    """The single error for a host none of whose families resolved.

    NXDOMAIN is about the name, so it wins; otherwise a temporary failure of either family
    means a retry may help (``EAI_AGAIN``); otherwise the name exists without addresses.
    """
    errors = []
    for answer in answers:
        if answer.addresses:
            return None
        if answer.error is not None:
            errors.append(answer.error)
    if not errors:
        return gaierror(EAI_NODATA, host=host)
    for code in (socket.EAI_NONAME, socket.EAI_AGAIN, socket.EAI_FAIL):
        for err in errors:
            if err.errno == code:
                return gaierror(code, host=host, detail=err.detail)
    return gaierror(errors[0].errno or socket.EAI_FAIL, host=host, detail=errors[0].detail)


class _HostsFile:
    """``/etc/hosts`` parsed into name -> addresses, re-read when the file changes."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._entries: dict[str, list[Address]] = {}
        self._stamp: tuple[int, int] | None = None
        self._next_check = 0.0

    def lookup(self, name: str, now: float) -> list[Address] | None:
        if self.path is None:
            return None
        if now >= self._next_check:
            self._next_check = now + _HOSTS_RECHECK
            self._reload()
        return self._entries.get(name)

    def _reload(self) -> None:
        assert self.path is not None
        try:
            st = os.stat(self.path)
        except OSError:
            self._entries, self._stamp = {}, None
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        entries: dict[str, list[Address]] = {}
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                lines = f.readlines()
        except OSError:
            lines = []
        for line in lines:
            fields = line.split("#", 1)[0].split()
            if len(fields) < 2:
                continue
            try:
                spec = parse_host(fields[0])
            except ValueError:
                continue
            if spec.ip is None:
                continue
            for alias in fields[1:]:
                key = alias.lower().rstrip(".")
                entries.setdefault(key, []).append((spec.ip, spec.zone))
        self._entries, self._stamp = entries, stamp


def _is_localhost(name: str) -> bool:
    return name == "localhost" or name.endswith(".localhost")


def _is_invalid(name: str) -> bool:
    return name == "invalid" or name.endswith(".invalid")


class Resolver:
    """An asyncio DNS resolver (aiodns / c-ares) with a TTL cache and a hosts file.

    ``nameservers`` are ``"192.0.2.53"``, ``"127.0.0.1:5353"``, ``"[::1]:5353"`` or
    ``(ip, port)`` tuples; by default the system's (``/etc/resolv.conf``). ``timeout`` is the
    per-try timeout in seconds and ``tries`` the number of tries per server. Use
    ``hosts_path=None`` to skip the hosts file. Close with ``await resolver.close()`` or use
    ``async with``.
    """

    def __init__(
        self,
        nameservers: Sequence[str | tuple[str, int]] | None = None,
        *,
        timeout: float = 1.0,
        tries: int = 2,
        min_ttl: float = 1.0,
        max_ttl: float = 3600.0,
        negative_ttl: float = 5.0,
        failure_ttl: float = 1.0,
        hosts_path: str | None = "/etc/hosts",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if tries < 1:
            raise ValueError("tries must be at least 1")
        if not 0 <= min_ttl <= max_ttl:
            raise ValueError("need 0 <= min_ttl <= max_ttl")
        if negative_ttl < 0 or failure_ttl < 0:
            raise ValueError("negative_ttl and failure_ttl must not be negative")
        self.nameservers = [_server_text(s) for s in nameservers] if nameservers else None
        self.timeout = timeout
        self.tries = tries
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.negative_ttl = negative_ttl
        self.failure_ttl = failure_ttl
        self._clock = clock
        self._hosts = _HostsFile(hosts_path)
        # (name, family) -> (answer, expiry)
        self._cache: dict[tuple[str, int], tuple[FamilyAnswer, float]] = {}
        self._inflight: dict[
            tuple[asyncio.AbstractEventLoop, str, int], asyncio.Future[FamilyAnswer]
        ] = {}
        # Not a WeakKeyDictionary: a channel holds its loop, so the key would never die.
        # Channels of closed loops are dropped when a new loop shows up (see _channel).
        self._channels: dict[asyncio.AbstractEventLoop, aiodns.DNSResolver] = {}
        self._closed = False
        #: Number of DNS queries sent (cache misses), for tests and diagnostics.
        self.queries_sent = 0

    # ----------------------------------------------------------------- public API

    async def resolve(self, host: str | bytes, family: int = socket.AF_UNSPEC) -> list[Address]:
        """All addresses of ``host`` as ``[(ip, zone), ...]``, IPv6 first; raises gaierror."""
        resolution = await self.lookup(host, family)
        error = resolution.error()
        if error is not None:
            raise error
        return resolution.addresses

    async def lookup(
        self, host: str | bytes | HostSpec, family: int = socket.AF_UNSPEC
    ) -> Resolution:
        """Both families' answers (failures included, nothing raised for DNS errors)."""
        spec = host if isinstance(host, HostSpec) else parse_host(host)
        cached = self.cached(spec, family)
        if cached is not None:
            return cached
        answers = [answer async for answer in self.answers(spec, family)]
        return Resolution(spec, tuple(answers))

    def answers(
        self, host: str | bytes | HostSpec, family: int = socket.AF_UNSPEC
    ) -> AsyncIterator[FamilyAnswer]:
        """Yield each family's ``FamilyAnswer`` as soon as it is known (AAAA first on a tie).

        Input is checked before anything is sent. Stopping early is harmless: the queries
        still complete and fill the cache.
        """
        spec = host if isinstance(host, HostSpec) else parse_host(host)
        families = _families(family)
        local = self._local_answers(spec, families)
        if local is not None:
            return _AnswerStream(local, [])
        self._check_open()
        now = self._clock()
        pending: list[asyncio.Future[FamilyAnswer]] = []
        ready: list[FamilyAnswer] = []
        assert spec.name is not None
        for fam in families:
            hit = self._cache_get(spec.name, fam, now)
            if hit is not None:
                ready.append(hit)
            else:
                pending.append(self._query(spec.name, fam))
        return _AnswerStream(ready, pending)

    def cached(
        self, host: str | bytes | HostSpec, family: int = socket.AF_UNSPEC
    ) -> Resolution | None:
        """The answer if it can be given without waiting (literal, hosts, cache), else None."""
        spec = host if isinstance(host, HostSpec) else parse_host(host)
        families = _families(family)
        local = self._local_answers(spec, families)
        if local is not None:
            return Resolution(spec, tuple(local))
        assert spec.name is not None
        now = self._clock()
        answers = []
        for fam in families:
            hit = self._cache_get(spec.name, fam, now)
            if hit is None:
                return None
            answers.append(hit)
        return Resolution(spec, tuple(answers))

    def clear_cache(self) -> None:
        """Forget every cached answer (for instance after a network change)."""
        self._cache.clear()

    async def close(self) -> None:
        """Cancel outstanding queries and close every pycares channel."""
        self._closed = True
        channels = list(self._channels.values())
        self._channels.clear()
        for channel in channels:
            await channel.close()

    async def __aenter__(self) -> Resolver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ----------------------------------------------------------------- internals

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this Resolver is closed")

    def _local_answers(
        self, spec: HostSpec, families: tuple[int, ...]
    ) -> list[FamilyAnswer] | None:
        if spec.ip is not None:
            fam = int(socket.AF_INET6 if spec.ip.version == 6 else socket.AF_INET)
            return [
                FamilyAnswer(
                    f,
                    ((spec.ip, spec.zone),) if f == fam else (),
                    None,
                    0.0,
                    "literal",
                    None
                    if f == fam
                    else gaierror(
                        socket.EAI_ADDRFAMILY
                        if hasattr(socket, "EAI_ADDRFAMILY")
                        else socket.EAI_NONAME,
                        host=spec.text,
                    ),
                )
                for f in families
            ]
        assert spec.name is not None
        if _is_invalid(spec.name):
            # RFC 6761 6.4: "invalid" names get an immediate negative answer, hosts file or
            # not; a query would only leak the name to the resolver's operator.
            return [
                FamilyAnswer(
                    fam,
                    (),
                    None,
                    0.0,
                    "invalid",
                    gaierror(
                        socket.EAI_NONAME,
                        host=spec.text,
                        detail="RFC 6761 special-use name .invalid",
                    ),
                )
                for fam in families
            ]
        entries = self._hosts.lookup(spec.name, self._clock())
        origin = "hosts"
        if entries is None and _is_localhost(spec.name):
            # RFC 6761 6.3: localhost names are loopback and never go to DNS.
            entries = [(ipaddress.IPv6Address(1), None), (ipaddress.IPv4Address("127.0.0.1"), None)]
            origin = "localhost"
        if entries is None:
            return None
        out = []
        for fam in families:
            version = 6 if fam == socket.AF_INET6 else 4
            found = tuple(a for a in entries if a[0].version == version)
            # glibc answers a hosts-file name lacking the family with EAI_NONAME, not NODATA.
            out.append(
                FamilyAnswer(
                    fam,
                    found,
                    None,
                    0.0,
                    origin,
                    None if found else gaierror(socket.EAI_NONAME, host=spec.text),
                )
            )
        return out

    def _cache_get(self, name: str, family: int, now: float) -> FamilyAnswer | None:
        hit = self._cache.get((name, family))
        if hit is None:
            return None
        answer, expires = hit
        if now >= expires:
            del self._cache[(name, family)]
            return None
        return answer

    def _channel(self, loop: asyncio.AbstractEventLoop) -> aiodns.DNSResolver:
        channel = self._channels.get(loop)
        if channel is None:
            self._drop_closed_loops()
            kwargs: dict[str, Any] = {"timeout": self.timeout, "tries": self.tries}
            channel = aiodns.DNSResolver(loop=loop, **kwargs)
            if self.nameservers:
                channel.nameservers = self.nameservers
            self._channels[loop] = channel
        return channel

    def _drop_closed_loops(self) -> None:
        """Forget the channels and queries of loops that were closed (``asyncio.run`` ends).

        A shared resolver (the default context's) otherwise keeps one c-ares channel, with
        its sockets and thread, per ``asyncio.run`` of the program. Dropping the last
        reference closes the channel (``aiodns.DNSResolver.__del__``); its loop is gone, so
        nothing can await it.
        """
        closed = [loop for loop in self._channels if loop.is_closed()]
        for loop in closed:
            del self._channels[loop]
        if closed:
            for key in [key for key in self._inflight if key[0].is_closed()]:
                del self._inflight[key]

    def _query(self, name: str, family: int) -> asyncio.Future[FamilyAnswer]:
        loop = asyncio.get_running_loop()
        key = (loop, name, family)
        shared = self._inflight.get(key)
        if shared is not None:
            return shared
        result: asyncio.Future[FamilyAnswer] = loop.create_future()
        self._inflight[key] = result
        self.queries_sent += 1
        query = self._channel(loop).query_dns(name, _QTYPE[family])

        def done(fut: asyncio.Future[pycares.DNSResult]) -> None:
            self._inflight.pop(key, None)
            answer, ttl = self._convert(name, family, fut)
            if ttl > 0:
                self._cache[(name, family)] = (_as_cached(answer), self._clock() + ttl)
            if not result.done():
                result.set_result(answer)

        query.add_done_callback(done)
        return result

    def _convert(
        self, name: str, family: int, fut: asyncio.Future[pycares.DNSResult]
    ) -> tuple[FamilyAnswer, float]:
        if fut.cancelled():
            return FamilyAnswer(
                family, (), None, 0.0, "dns", gaierror_from_ares("ARES_ECANCELLED", host=name)
            ), 0.0
        exc = fut.exception()
        if exc is not None:
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else -1
            status = _ARES_NAMES.get(code, "ARES_EUNKNOWN")
            error = gaierror_from_ares(status, host=name)
            if status in ("ARES_ECANCELLED", "ARES_EDESTRUCTION"):
                ttl = 0.0
            elif error.errno == socket.EAI_AGAIN:
                ttl = self.failure_ttl
            else:
                ttl = self.negative_ttl
            return FamilyAnswer(family, (), None, ttl, "dns", error), ttl
        result = fut.result()
        wanted = _RTYPE_AAAA if family == socket.AF_INET6 else _RTYPE_A
        addresses: list[Address] = []
        canonname: str | None = None
        min_ttl: int | None = None
        for record in result.answer:
            if record.type not in (wanted, _RTYPE_CNAME):
                continue
            min_ttl = record.ttl if min_ttl is None else min(min_ttl, record.ttl)
            if record.type == wanted:
                data: Any = record.data
                addresses.append((ipaddress.ip_address(data.addr), None))
                canonname = canonname or record.name.rstrip(".")
        if not addresses:
            error = gaierror_from_ares("ARES_ENODATA", host=name)
            return FamilyAnswer(family, (), None, self.negative_ttl, "dns", error), (
                self.negative_ttl
            )
        ttl = min(max(float(min_ttl or 0), self.min_ttl), self.max_ttl)
        return FamilyAnswer(family, tuple(addresses), canonname, ttl, "dns"), ttl


def _as_cached(answer: FamilyAnswer) -> FamilyAnswer:
    return FamilyAnswer(
        answer.family, answer.addresses, answer.canonname, answer.ttl, "cache", answer.error
    )


def _families(family: int) -> tuple[int, ...]:
    if family == socket.AF_UNSPEC:
        return (socket.AF_INET6, socket.AF_INET)
    if family in (socket.AF_INET6, socket.AF_INET):
        return (family,)
    raise ValueError(f"family {family} is not AF_UNSPEC, AF_INET or AF_INET6")


def _server_text(server: str | tuple[str, int]) -> str:
    if isinstance(server, tuple):
        host, port = server
        ip = ipaddress.ip_address(host)
        if not 0 < int(port) <= 65535:
            raise ValueError(f"nameserver port {port} is outside 1-65535")
        return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
    if not isinstance(server, str) or not server:
        raise TypeError(f"nameserver must be a non-empty str or an (ip, port) tuple: {server!r}")
    host, port_text = server, None
    if server.startswith("["):
        host, _, rest = server[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else None
    elif server.count(":") == 1:
        host, port_text = server.split(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"nameserver {server!r} is not an IP address (with optional port)"
        ) from None
    if port_text is not None and not (port_text.isdigit() and 0 < int(port_text) <= 65535):
        raise ValueError(f"nameserver {server!r} has an invalid port")
    return server


class _AnswerStream:
    """Async iterator over ready answers, then pending ones in completion order."""

    def __init__(
        self, ready: list[FamilyAnswer], pending: list[asyncio.Future[FamilyAnswer]]
    ) -> None:
        self._ready = ready
        self._pending = set(pending)
        self._order = pending

    def __aiter__(self) -> _AnswerStream:
        return self

    async def __anext__(self) -> FamilyAnswer:
        if self._ready:
            return self._ready.pop(0)
        if not self._pending:
            raise StopAsyncIteration
        done = [f for f in self._order if f in self._pending and f.done()]
        if not done:
            # asyncio.wait never cancels what it waits for: a cancelled caller leaves the
            # shared query running for the other callers and the cache.
            await asyncio.wait(self._pending, return_when=asyncio.FIRST_COMPLETED)
            done = [f for f in self._order if f in self._pending and f.done()]
        first = done[0]
        self._pending.discard(first)
        return first.result()
