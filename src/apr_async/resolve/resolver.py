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

The answer types are in :mod:`.answers`, the answers given without DNS in :mod:`.local_answers`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import aiodns
import pycares

from apr_async.errors import (
    HostSpec,
    gaierror_from_ares,
    parse_host,
)

# The answer types live in .answers; they are re-exported here, where callers look for them.
from apr_async.resolve.answers import (
    Address,
    AnswerStream,
    FamilyAnswer,
    Resolution,
    as_cached,
    families_of,
)
from apr_async.resolve.hostsfile import HostsFile, server_text
from apr_async.resolve.local_answers import local_answers

__all__ = [
    "Address",
    "FamilyAnswer",
    "Resolution",
    "Resolver",
]

_QTYPE: dict[int, str] = {socket.AF_INET6: "AAAA", socket.AF_INET: "A"}
#: families_of() for the valid families, as a table (is_cached runs once per connection).
_FAMILIES_OF: dict[int, tuple[int, ...]] = {
    f: families_of(f) for f in (socket.AF_UNSPEC, socket.AF_INET, socket.AF_INET6)
}
_RTYPE_A = pycares.QUERY_TYPE_A
_RTYPE_AAAA = pycares.QUERY_TYPE_AAAA
_RTYPE_CNAME = pycares.QUERY_TYPE_CNAME
_ARES_NAMES: dict[int, str] = dict(pycares.errno.errorcode)


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
        self.nameservers = [server_text(s) for s in nameservers] if nameservers else None
        self.timeout = timeout
        self.tries = tries
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.negative_ttl = negative_ttl
        self.failure_ttl = failure_ttl
        self._clock = clock
        self._hosts = HostsFile(hosts_path)
        # (name, family) -> (answer, expiry)
        self._cache: dict[tuple[str, int], tuple[FamilyAnswer, float]] = {}
        self._inflight: dict[tuple[asyncio.AbstractEventLoop, str, int],
                             asyncio.Future[FamilyAnswer]] = {}
        # Not a WeakKeyDictionary: a channel holds its loop, so the key would never die.
        # Channels of closed loops are dropped when a new loop shows up (see _channel).
        self._channels: dict[asyncio.AbstractEventLoop, aiodns.DNSResolver] = {}
        # Channels for queries outside the cache (HTTPS records), see query_dns, and what
        # their callers keep of the answers (resolve/https.py), cleared with the cache.
        self._side_channels: dict[asyncio.AbstractEventLoop, aiodns.DNSResolver] = {}
        self._side_cache: dict[tuple[str, int], tuple[object, float]] = {}
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

    async def lookup(self, host: str | bytes | HostSpec,
                     family: int = socket.AF_UNSPEC) -> Resolution:
        """Both families' answers (failures included, nothing raised for DNS errors)."""
        spec = host if isinstance(host, HostSpec) else parse_host(host)
        cached = self.cached(spec, family)
        if cached is not None:
            return cached
        answers = [answer async for answer in self.answers(spec, family)]
        return Resolution(spec, tuple(answers))

    def answers(self, host: str | bytes | HostSpec,
                family: int = socket.AF_UNSPEC) -> AsyncIterator[FamilyAnswer]:
        """Yield each family's ``FamilyAnswer`` as soon as it is known (AAAA first on a tie).

        Input is checked before anything is sent. Stopping early is harmless: the queries
        still complete and fill the cache.
        """
        spec = host if isinstance(host, HostSpec) else parse_host(host)
        families = families_of(family)
        local = local_answers(spec, families, self._hosts, self._clock)
        if local is not None:
            return AnswerStream(local, [])
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
        return AnswerStream(ready, pending)

    def prefetch(self, host: str, family: int = socket.AF_UNSPEC) -> None:
        """Send now the queries a later :meth:`lookup` of ``host`` would send (it then joins
        them), so the answer travels while the caller does other work; nothing for a literal,
        a hosts-file name, a cached answer, or input :meth:`lookup` would reject (it raises
        the error then). Needs a running event loop."""
        try:
            # What answers() sends, with its stream dropped: the queries still complete and
            # fill the cache (see answers()).
            self.answers(host, family)
        except Exception:  # an optimisation only
            # (bad input, a closed resolver, a channel that cannot be made): the lookup that
            # follows raises the error where the caller expects it
            return

    def cached(self, host: str | bytes | HostSpec,
               family: int = socket.AF_UNSPEC) -> Resolution | None:
        """The answer if it can be given without waiting (literal, hosts, cache), else None."""
        spec = host if isinstance(host, HostSpec) else parse_host(host)
        families = families_of(family)
        local = local_answers(spec, families, self._hosts, self._clock)
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

    def is_cached(self, spec: HostSpec, family: int = socket.AF_UNSPEC) -> bool:
        """Whether :meth:`cached` would answer, without building its answer (the one-pair fast
        path asks on every connection): every family in the cache is enough, else
        :meth:`cached` itself decides (a literal, the hosts file)."""
        name = spec.name
        if name is not None and type(self) is Resolver:  # a subclass may answer otherwise
            cache = self._cache
            now = self._clock()
            for fam in _FAMILIES_OF.get(family) or families_of(family):
                hit = cache.get((name, fam))
                if hit is None or now >= hit[1]:
                    break
            else:
                return True
        return self.cached(spec, family) is not None

    def query_dns(self, name: str, qtype: int) -> asyncio.Future[pycares.DNSResult]:
        """Send one uncached query of type ``qtype`` (``pycares.QUERY_TYPE_*``) for ``name``
        through this loop's channel (for record types the cache does not hold, HTTPS)."""
        self._check_open()
        self.queries_sent += 1
        # A channel of its own: c-ares treats a reply it cannot parse (a hostile HTTPS record)
        # as a server error and re-sends or fails every query on that connection, which
        # would take the A/AAAA queries in flight down with it.
        channel = self._channel(asyncio.get_running_loop(), self._side_channels)
        # aiodns 4's query_dns() knows type names only from a table without HTTPS (type 65),
        # which pycares 5 does query and decode: go one level down, through the same future
        # and error plumbing query_dns() uses (aiodns 4.0 internals; tests/test_https*.py
        # fail loudly if they move).
        fut: asyncio.Future[pycares.DNSResult]
        fut, callback = channel._get_future_callback()
        with channel._capture_ares_error(fut):
            channel._channel.query(name, qtype, callback=callback)
        return fut

    def side_cached(self, name: str, qtype: int) -> object | None:
        """What :meth:`side_cache` kept for ``(name, qtype)``, if not expired."""
        hit = self._side_cache.get((name, qtype))
        if hit is None:
            return None
        if self._clock() >= hit[1]:
            del self._side_cache[(name, qtype)]
            return None
        return hit[0]

    def side_cache(self, name: str, qtype: int, value: object, ttl: float) -> None:
        """Keep ``value`` (the decoded answer of a :meth:`query_dns`) for ``ttl`` seconds,
        clamped like the address cache's TTLs."""
        ttl = min(max(ttl, self.min_ttl), self.max_ttl)
        if ttl > 0:
            self._side_cache[(name, qtype)] = (value, self._clock() + ttl)

    def clear_cache(self) -> None:
        """Forget every cached answer (for instance after a network change)."""
        self._cache.clear()
        self._side_cache.clear()

    async def close(self) -> None:
        """Cancel outstanding queries and close every pycares channel."""
        self._closed = True
        channels = [*self._channels.values(), *self._side_channels.values()]
        self._channels.clear()
        self._side_channels.clear()
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

    def _cache_get(self, name: str, family: int, now: float) -> FamilyAnswer | None:
        hit = self._cache.get((name, family))
        if hit is None:
            return None
        answer, expires = hit
        if now >= expires:
            del self._cache[(name, family)]
            return None
        return answer

    def _channel(
        self,
        loop: asyncio.AbstractEventLoop,
        store: dict[asyncio.AbstractEventLoop, aiodns.DNSResolver] | None = None,
    ) -> aiodns.DNSResolver:
        channels = self._channels if store is None else store
        channel = channels.get(loop)
        if channel is None:
            self._drop_closed_loops()
            kwargs: dict[str, Any] = {"timeout": self.timeout, "tries": self.tries}
            channel = aiodns.DNSResolver(loop=loop, **kwargs)
            if self.nameservers:
                channel.nameservers = self.nameservers
            channels[loop] = channel
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
        for loop in [loop for loop in self._side_channels if loop.is_closed()]:
            del self._side_channels[loop]
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
                self._cache[(name, family)] = (
                    as_cached(answer), self._clock() + ttl)
            if not result.done():
                result.set_result(answer)

        query.add_done_callback(done)
        return result

    def _convert(self, name: str, family: int,
                 fut: asyncio.Future[pycares.DNSResult]) -> tuple[FamilyAnswer, float]:
        if fut.cancelled():
            return FamilyAnswer(family, (), None, 0.0, "dns",
                                gaierror_from_ares("ARES_ECANCELLED", host=name)), 0.0
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
                self.negative_ttl)
        ttl = min(max(float(min_ttl or 0), self.min_ttl), self.max_ttl)
        return FamilyAnswer(family, tuple(addresses), canonname, ttl, "dns"), ttl
