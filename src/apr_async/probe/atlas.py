"""Optional probe targets from RIPE Atlas anchors (off by default; needs ``aiohttp``).

RIPE Atlas anchors are well-connected hosts that exist to be measured against. When
``Config.atlas`` is on, the service fetches the anchor list from the Atlas REST API
(``<atlas_url>anchors/``, following the paginated ``next`` links on the same server only),
keeps the anchors that are live (not disabled nor decommissioned; when the API also answers
``probes/?is_anchor=true&status=1`` only the anchors whose probe is *Connected*), and picks a
few at random per address family, rotated every ``atlas_rotate_interval`` seconds.

Fetching uses aiohttp with the aiodns resolver, so no thread is involved. Parsing and the
random choice are pure functions, tested against the API's JSON shape served locally.
"""

from __future__ import annotations

import ipaddress
import logging
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from apr_async.core.addresses import AddressKind, kind_of

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "Anchor",
    "AnchorRotation",
    "choose_anchors",
    "connected_probe_ids",
    "fetch_anchors",
    "parse_anchors",
]

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Atlas probe status id meaning "Connected".
_CONNECTED = 1
_MAX_PAGES = 20


@dataclass(frozen=True, slots=True)
class Anchor:
    """One live RIPE Atlas anchor and its addresses (either may be missing)."""

    id: int
    fqdn: str
    probe: int | None
    ip_v4: ipaddress.IPv4Address | None
    ip_v6: ipaddress.IPv6Address | None


def _ip(value: Any) -> IPAddress | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None
    # an anchor is a public target: a private or local address in the list is a data error
    if kind_of(ip) not in (AddressKind.PUBLIC_IPV4, AddressKind.GUA):
        return None
    return ip


def parse_anchors(page: Mapping[str, Any]) -> list[Anchor]:
    """The live anchors of one ``anchors/`` API page (``{"results": [...], ...}``).

    Disabled or decommissioned anchors and malformed entries are skipped; raises
    ``ValueError`` if the page itself does not have the API's shape.
    """
    results = page.get("results") if isinstance(page, Mapping) else None
    if not isinstance(results, list):
        raise ValueError("not an Atlas anchors page: no results list")
    out: list[Anchor] = []
    for item in results:
        if not isinstance(item, Mapping):
            continue
        if item.get("is_disabled") or item.get("date_decommissioned"):
            continue
        anchor_id = item.get("id")
        if not isinstance(anchor_id, int) or isinstance(anchor_id, bool):
            continue
        probe = item.get("probe")
        v4, v6 = _ip(item.get("ip_v4")), _ip(item.get("ip_v6"))
        if not isinstance(v4, ipaddress.IPv4Address):
            v4 = None
        if not isinstance(v6, ipaddress.IPv6Address):
            v6 = None
        if v4 is None and v6 is None:
            continue
        out.append(
            Anchor(
                id=anchor_id,
                fqdn=str(item.get("fqdn") or ""),
                probe=probe if isinstance(probe, int) and not isinstance(probe, bool) else None,
                ip_v4=v4,
                ip_v6=v6,
            )
        )
    return out


def connected_probe_ids(page: Mapping[str, Any]) -> set[int]:
    """Ids of the probes marked Connected in one ``probes/`` API page."""
    results = page.get("results") if isinstance(page, Mapping) else None
    if not isinstance(results, list):
        raise ValueError("not an Atlas probes page: no results list")
    ids: set[int] = set()
    for item in results:
        if not isinstance(item, Mapping) or not isinstance(item.get("id"), int):
            continue
        status = item.get("status")
        status_id = status.get("id") if isinstance(status, Mapping) else status
        if status_id == _CONNECTED:
            ids.add(item["id"])
    return ids


def choose_anchors(
    anchors: Sequence[Anchor], per_family: int = 2, rng: random.Random | None = None
) -> list[IPAddress]:
    """Pick ``per_family`` random anchor addresses of each family (distinct anchors)."""
    if per_family < 1:
        raise ValueError("per_family must be >= 1")
    rng = rng or random.Random()
    chosen: list[IPAddress] = []
    v4: list[IPAddress] = [a.ip_v4 for a in anchors if a.ip_v4 is not None]
    v6: list[IPAddress] = [a.ip_v6 for a in anchors if a.ip_v6 is not None]
    for pool in (v6, v4):
        unique = list(dict.fromkeys(pool))
        chosen += rng.sample(unique, min(per_family, len(unique)))
    return chosen


class AnchorRotation:
    """The anchors currently used as targets, re-chosen every ``interval`` seconds (pure).

    Call :meth:`update` with a freshly fetched list; :meth:`targets` returns the current
    choice and rotates it when ``now`` has moved ``interval`` past the last choice.
    """

    def __init__(
        self, *, per_family: int = 2, interval: float = 600.0, rng: random.Random | None = None
    ) -> None:
        if not interval > 0:
            raise ValueError("interval must be > 0")
        self.per_family = per_family
        self.interval = interval
        self._rng = rng or random.Random()
        self._anchors: list[Anchor] = []
        self._chosen: list[IPAddress] = []
        self._chosen_at: float | None = None

    @property
    def anchors(self) -> list[Anchor]:
        """The last fetched list."""
        return list(self._anchors)

    def update(self, anchors: Iterable[Anchor], now: float) -> None:
        """Replace the anchor list and choose again at once."""
        self._anchors = list(anchors)
        self._choose(now)

    def due(self, now: float) -> bool:
        """True when the choice is older than ``interval`` (or there is none)."""
        return self._chosen_at is None or now - self._chosen_at >= self.interval

    def targets(self, now: float) -> list[IPAddress]:
        """The current choice, rotated first if it is due."""
        if self._anchors and self.due(now):
            self._choose(now)
        return list(self._chosen)

    def _choose(self, now: float) -> None:
        self._chosen = choose_anchors(self._anchors, self.per_family, self._rng)
        self._chosen_at = now


def _same_origin(url: str, base: str) -> bool:
    a, b = urlsplit(url), urlsplit(base)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)


async def _pages(session: aiohttp.ClientSession, first: str, base: str) -> list[Mapping[str, Any]]:
    pages: list[Mapping[str, Any]] = []
    url: str | None = first
    while url and len(pages) < _MAX_PAGES:
        if not _same_origin(url, base):
            log.warning("Atlas API pointed to another server (%s): not followed", url)
            break
        async with session.get(url, headers={"Accept": "application/json"}) as resp:
            resp.raise_for_status()
            page = await resp.json(content_type=None)
        if not isinstance(page, Mapping):
            raise ValueError("Atlas API answer is not a JSON object")
        pages.append(page)
        nxt = page.get("next")
        url = nxt if isinstance(nxt, str) and nxt else None
    return pages


async def fetch_anchors(
    base_url: str,
    *,
    max_wait: float = 20.0,
    nameservers: Sequence[str] = (),
    session: aiohttp.ClientSession | None = None,
) -> list[Anchor]:
    """Fetch the live anchors from the Atlas REST API at ``base_url`` (``.../api/v2/``).

    Raises ``ImportError`` without aiohttp, ``aiohttp.ClientError`` / ``TimeoutError`` /
    ``ValueError`` when the API cannot be read. ``nameservers`` go to the aiodns resolver.
    """
    import aiohttp  # noqa: PLC0415 - optional dependency, only needed when Atlas is on

    if not base_url.startswith(("http://", "https://")):
        raise ValueError(f"Atlas base URL must be http(s): {base_url!r}")
    base = base_url if base_url.endswith("/") else base_url + "/"
    own = session is None
    if session is None:
        resolver = aiohttp.AsyncResolver(nameservers=list(nameservers) or None)
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(resolver=resolver),
            timeout=aiohttp.ClientTimeout(total=max_wait),
        )
    try:
        pages = await _pages(session, urljoin(base, "anchors/?format=json&page_size=500"), base)
        anchors = [a for page in pages for a in parse_anchors(page)]
        try:
            probe_pages = await _pages(
                session,
                urljoin(base, "probes/?format=json&is_anchor=true&status=1&page_size=500"),
                base,
            )
            connected = set().union(*(connected_probe_ids(p) for p in probe_pages))
        except (aiohttp.ClientError, ValueError) as exc:
            log.info("Atlas probe status unavailable (%s): using the anchor list alone", exc)
        else:
            anchors = [a for a in anchors if a.probe is None or a.probe in connected]
        return anchors
    finally:
        if own:
            await session.close()
