"""RIPE Atlas anchors: parsing the API's JSON shape and fetching it from a local server."""

from __future__ import annotations

import contextlib
import ipaddress
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from apr_async.probe.atlas import (
    Anchor,
    AnchorRotation,
    choose_anchors,
    connected_probe_ids,
    fetch_anchors,
    parse_anchors,
)


def anchor_json(i: int, *, v4: str | None = None, v6: str | None = None,
                disabled: bool = False, decommissioned: str | None = None) -> dict[str, Any]:
    # the fields and types of a real /api/v2/anchors/ entry
    return {
        "id": i, "type": "Anchor", "hostname": f"xx-test-as{i}",
        "fqdn": f"xx-test-as{i}.anchors.atlas.ripe.net", "probe": 6000 + i,
        "is_ipv4_only": v6 is None, "ip_v4": v4 or "", "as_v4": 64500, "ip_v4_gateway": "",
        "ip_v4_netmask": "", "ip_v6": v6 or "", "as_v6": 64500, "ip_v6_gateway": "",
        "ip_v6_prefix": 64, "city": "Test", "country": "ZZ", "company": "Lab",
        "nic_handle": "", "geometry": {"type": "Point", "coordinates": [4.9, 52.3]},
        "tlsa_record": "", "is_disabled": disabled, "is_replacement": False,
        "replaces_anchor": None, "date_live": "2020-01-01T00:00:00",
        "date_decommissioned": decommissioned, "hardware_version": 99,
    }


ANCHORS = [
    anchor_json(1, v4="198.51.100.10", v6="2001:db8:5::10"),
    anchor_json(2, v4="198.51.100.11", v6="2001:db8:5::11"),
    anchor_json(3, v4="203.0.113.10"),
    anchor_json(4, v4="203.0.113.11", v6="2001:db8:55::11", disabled=True),
    anchor_json(5, v4="203.0.113.12", decommissioned="2022-04-07T13:29:50"),
    anchor_json(6, v4="10.1.1.1", v6="fe80::1"),  # not a public target: skipped
    anchor_json(7, v4="203.0.113.13", v6="2001:db8:55::13"),  # probe not connected
    {"id": "bogus"},
]


def test_parse_anchors_keeps_live_public_ones() -> None:
    anchors = parse_anchors({"count": len(ANCHORS), "next": None, "results": ANCHORS})
    assert [a.id for a in anchors] == [1, 2, 3, 7]
    assert anchors[0] == Anchor(1, "xx-test-as1.anchors.atlas.ripe.net", 6001,
                                ipaddress.IPv4Address("198.51.100.10"),
                                ipaddress.IPv6Address("2001:db8:5::10"))
    assert anchors[2].ip_v6 is None
    with pytest.raises(ValueError):
        parse_anchors({"detail": "throttled"})


def test_connected_probe_ids() -> None:
    page = {"results": [{"id": 6001, "status": {"id": 1, "name": "Connected"}},
                        {"id": 6007, "status": {"id": 2, "name": "Disconnected"}},
                        {"id": 6003, "status": 1}, {"id": "x"}]}
    assert connected_probe_ids(page) == {6001, 6003}


def test_choose_per_family_distinct_and_rotating() -> None:
    anchors = parse_anchors({"results": ANCHORS})
    picked = choose_anchors(anchors, 2, random.Random(1))
    assert sum(ip.version == 6 for ip in picked) == 2
    assert sum(ip.version == 4 for ip in picked) == 2
    assert len(set(picked)) == 4
    rot = AnchorRotation(per_family=1, interval=600.0, rng=random.Random(3))
    assert rot.targets(0.0) == []
    rot.update(anchors, now=0.0)
    first = rot.targets(10.0)
    assert len(first) == 2
    assert rot.targets(599.0) == first  # not due yet
    seen = {tuple(rot.targets(600.0 * k)) for k in range(1, 30)}
    assert len(seen) > 1  # it does rotate


def atlas_app(requests: list[str], *, with_probes: bool = True) -> web.Application:
    app = web.Application()

    async def anchors(request: web.Request) -> web.Response:
        requests.append(str(request.rel_url))
        page = int(request.query.get("page", "1"))
        base = f"http://{request.host}/api/v2/anchors/?format=json&page_size=500"
        if page == 1:
            return web.json_response({"count": len(ANCHORS), "next": base + "&page=2",
                                      "previous": None, "results": ANCHORS[:4]})
        return web.json_response({"count": len(ANCHORS), "next": None,
                                  "previous": base, "results": ANCHORS[4:]})

    async def probes(request: web.Request) -> web.Response:
        requests.append(str(request.rel_url))
        assert request.query["is_anchor"] == "true"
        return web.json_response({"count": 3, "next": None, "previous": None, "results": [
            {"id": 6001, "is_anchor": True, "status": {"id": 1, "name": "Connected"}},
            {"id": 6002, "is_anchor": True, "status": {"id": 1, "name": "Connected"}},
            {"id": 6003, "is_anchor": True, "status": {"id": 1, "name": "Connected"}},
        ]})

    app.router.add_get("/api/v2/anchors/", anchors)
    if with_probes:
        app.router.add_get("/api/v2/probes/", probes)
    return app


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/api/v2/"
    finally:
        await runner.cleanup()


async def test_fetch_follows_pages_and_keeps_connected() -> None:
    requests: list[str] = []
    async with serve(atlas_app(requests)) as url:
        anchors = await fetch_anchors(url, max_wait=5)
    assert [a.id for a in anchors] == [1, 2, 3]  # 7's probe is not connected
    assert len([r for r in requests if "anchors" in r]) == 2
    assert len([r for r in requests if "probes" in r]) == 1


async def test_fetch_without_probe_endpoint_uses_anchor_list() -> None:
    async with serve(atlas_app([], with_probes=False)) as url:
        anchors = await fetch_anchors(url, max_wait=5)
    assert [a.id for a in anchors] == [1, 2, 3, 7]


async def test_fetch_refuses_foreign_next_link() -> None:
    app = web.Application()

    async def anchors(request: web.Request) -> web.Response:
        return web.json_response({"next": "http://203.0.113.1/api/v2/anchors/?page=2",
                                  "results": ANCHORS[:1]})

    app.router.add_get("/api/v2/anchors/", anchors)
    async with serve(app) as url:
        found = await fetch_anchors(url, max_wait=5)
    assert [a.id for a in found] == [1]


async def test_fetch_server_error_raises() -> None:
    app = web.Application()

    async def anchors(request: web.Request) -> web.Response:
        return web.Response(status=503)

    app.router.add_get("/api/v2/anchors/", anchors)
    async with serve(app) as url:
        with pytest.raises(Exception, match="503"):
            await fetch_anchors(url, max_wait=5)


async def test_fetch_bad_url_rejected_before_io() -> None:
    with pytest.raises(ValueError):
        await fetch_anchors("ftp://atlas.example/api/v2/")
