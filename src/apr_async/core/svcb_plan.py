"""What the HTTPS records of a name mean for one connection (RFC 9460, HEv3). Sans-IO.

:func:`plan` takes the records found at a name (already checked by
:func:`apr_async.core.svcb.parse_record`, or the errors found while checking them) and
answers one of three things: follow an alias to another name, use these endpoints in this
order, or nothing usable here (connect to the origin with A/AAAA as if no record existed).
Every decision carries words for logs and ``explain``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from apr_async.core.svcb import (
    MAX_ALIAS_CHAIN,
    QUIC_ALPN_PREFIX,
    SUPPORTED_KEYS,
    SvcbRecord,
)

__all__ = ["SvcbEndpoint", "SvcbPlan", "plan", "usable_alpn"]


@dataclass(frozen=True, slots=True)
class SvcbEndpoint:
    """One ServiceMode endpoint to connect to: ``target``:``port`` speaking one of ``alpn``.

    ``record`` is the record it came from (its text in ``record.describe()``), ``rank`` its
    place in SvcPriority order (0 first) and ``reason`` why it is there.
    """

    target: str
    port: int
    alpn: tuple[str, ...]
    record: SvcbRecord
    rank: int
    reason: str

    @property
    def hints(self) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
        """The record's address hints, IPv6 first."""
        return (*self.record.ipv6hint, *self.record.ipv4hint)

    @property
    def ech(self) -> bytes | None:
        """The ECHConfigList, kept for callers; not used (Python's ssl has no ECH)."""
        return self.record.ech


@dataclass(frozen=True, slots=True)
class SvcbPlan:
    """The decision for one name: ``alias`` (follow it), else ``endpoints`` (maybe none).

    ``skipped`` lists ``(record text, reason)`` of records that were not used.
    """

    name: str
    alias: str | None
    endpoints: tuple[SvcbEndpoint, ...]
    skipped: tuple[tuple[str, str], ...]


def usable_alpn(offered: Sequence[str], spoken: Sequence[str]) -> tuple[str, ...]:
    """The ids of ``offered`` this client can use: those in ``spoken`` that do not need QUIC,
    in the endpoint's order (RFC 9460 section 7.1.2 leaves the choice to the client)."""
    return tuple(a for a in offered if a in spoken and not a.startswith(QUIC_ALPN_PREFIX))


def plan(
    name: str,
    records: Sequence[SvcbRecord],
    *,
    port: int,
    spoken: Sequence[str],
    errors: Sequence[tuple[str, str]] = (),
    chain: Sequence[str] = (),
) -> SvcbPlan:
    """Decide what the records at ``name`` mean.

    ``port`` is the port asked for (used when a record has no ``port``), ``spoken`` the ALPN
    ids the client's TLS can offer, ``errors`` the ``(record text, reason)`` of records that
    failed :func:`~apr_async.core.svcb.parse_record` and ``chain`` the names already
    visited through aliases. RFC 9460 section 2.4.1: a set mixing AliasMode and ServiceMode
    keeps the ServiceMode records; an alias back to a visited name or past
    :data:`~apr_async.core.svcb.MAX_ALIAS_CHAIN` ends the chain with no endpoints.
    """
    skipped = list(errors)
    service = [r for r in records if not r.alias]
    aliases = [r for r in records if r.alias]
    if not service and aliases:
        target = aliases[0].target
        for extra in aliases[1:]:
            skipped.append((extra.describe(), "a second AliasMode record is ignored"))
        if not target:
            skipped.append((aliases[0].describe(), "AliasMode '.': the service says it does "
                            "not exist (advisory: A/AAAA are used)"))
            return SvcbPlan(name, None, (), tuple(skipped))
        if target in chain or target == name:
            skipped.append((aliases[0].describe(), "alias loop"))
            return SvcbPlan(name, None, (), tuple(skipped))
        if len(chain) + 1 >= MAX_ALIAS_CHAIN:
            skipped.append((aliases[0].describe(), f"alias chain longer than {MAX_ALIAS_CHAIN}"))
            return SvcbPlan(name, None, (), tuple(skipped))
        return SvcbPlan(name, target, (), tuple(skipped))
    for extra in aliases:
        skipped.append((extra.describe(), "AliasMode beside ServiceMode records is ignored"))
    endpoints: list[SvcbEndpoint] = []
    # Sorted is stable: equal priorities keep the server's order (the RFC says to pick at
    # random among them; keeping the order makes runs reproducible and tests deterministic).
    for record in sorted(service, key=lambda r: r.priority):
        unknown = [k for k in record.mandatory if k not in SUPPORTED_KEYS]
        if unknown:
            skipped.append((record.describe(),
                            "unknown mandatory key(s) " + ",".join(f"key{k}" for k in unknown)))
            continue
        alpn = usable_alpn(record.protocols(), spoken)
        if not alpn:
            skipped.append((record.describe(), "no ALPN we speak among "
                            + ",".join(record.protocols()) + " (h3 needs QUIC)"))
            continue
        where = record.port if record.port is not None else port
        reason = (f"HTTPS priority {record.priority}"
                  + (f", port {record.port} from the record" if record.port is not None else "")
                  + f", alpn {','.join(alpn)}")
        endpoints.append(SvcbEndpoint(record.target, where, alpn, record, len(endpoints), reason))
    return SvcbPlan(name, None, tuple(endpoints), tuple(skipped))
