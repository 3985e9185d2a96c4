"""The lab DNS server answers as configured, queried with aiodns from the client namespace."""

from __future__ import annotations

import time

import aiodns
import pytest

from apr_async.lab import Lab, Scenario, ZoneEntry

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="module")]


async def lookup(nameservers: list[str], name: str, qtype: str) -> tuple[str, list[str], float]:
    """(status, addresses, seconds) for one query; runs inside the client namespace."""
    resolver = aiodns.DNSResolver(nameservers=nameservers, timeout=2.0, tries=1)
    start = time.monotonic()
    try:
        result = await resolver.query_dns(name, qtype)
        addresses = [record.data.addr for record in result.answer]
        return "ok", addresses, time.monotonic() - start
    except aiodns.error.DNSError as exc:
        code = exc.args[0]
        status = {aiodns.error.ARES_ENOTFOUND: "nxdomain",
                  aiodns.error.ARES_ENODATA: "nodata"}.get(code, f"error {code}")
        return status, [], time.monotonic() - start
    finally:
        await resolver.close()


@pytest.mark.parametrize("over", ["dns_v4", "dns_v6"])
async def test_answers_over_the_lab_network(healthy_lab: Lab, over: str) -> None:
    lab = healthy_lab
    ns = [getattr(lab, over)]
    names, server = lab.names, lab.server
    assert (await lab.run_in("client", lookup, ns, names.dual, "A"))[:2] == (
        "ok", [server.v4[0]])
    assert (await lab.run_in("client", lookup, ns, names.dual, "AAAA"))[:2] == (
        "ok", [server.v6[0]])
    assert (await lab.run_in("client", lookup, ns, names.v4_only, "A"))[:2] == (
        "ok", [server.v4[0]])
    status, addrs, _ = await lab.run_in("client", lookup, ns, names.multi, "AAAA")
    assert (status, sorted(addrs)) == ("ok", sorted(server.v6))
    status, addrs, _ = await lab.run_in("client", lookup, ns, names.multi, "A")
    assert sorted(addrs) == sorted(server.v4)
    assert (await lab.run_in("client", lookup, ns, names.v4_only, "AAAA"))[0] == "nodata"
    assert (await lab.run_in("client", lookup, ns, names.v6_only, "A"))[0] == "nodata"
    assert (await lab.run_in("client", lookup, ns, names.v6_only, "AAAA"))[1] == [server.v6[0]]
    assert (await lab.run_in("client", lookup, ns, names.nxdomain, "A"))[0] == "nxdomain"
    # the query really came over the lab network, from the client's own address (the DNS
    # server's IPv4 is on the link of the client's RFC 1918 address)
    expected = lab.client.private_v4 if over == "dns_v4" else lab.client.gua
    assert lab.dns.queries[-1].peer == expected


async def test_dead_addresses_are_served(healthy_lab: Lab) -> None:
    lab = healthy_lab
    _, addrs, _ = await lab.run_in("client", lookup, lab.dns_servers, lab.names.dead_v6, "AAAA")
    assert sorted(addrs) == sorted(lab.server.dead_v6)
    _, addrs, _ = await lab.run_in("client", lookup, lab.dns_servers, lab.names.part_dead, "A")
    assert set(addrs) == {lab.server.dead_v4[0], lab.server.v4[0]}


async def test_aaaa_answer_is_delayed(healthy_lab: Lab) -> None:
    lab = healthy_lab
    name = lab.names.slow_aaaa
    _, a, a_time = await lab.run_in("client", lookup, lab.dns_servers, name, "A")
    _, aaaa, aaaa_time = await lab.run_in("client", lookup, lab.dns_servers, name, "AAAA")
    assert a == [lab.server.v4[0]] and aaaa == [lab.server.v6[0]]
    assert a_time < 0.1
    assert 0.25 <= aaaa_time < 0.25 + 0.2  # the default zone's AAAA delay


async def test_zone_changes_live_and_dns_survives_blackhole(healthy_lab: Lab) -> None:
    lab = healthy_lab
    lab.dns.update("new.lab.test", ZoneEntry(aaaa=["2001:db8:5::77"], ttl=5))
    # DNS lives on the router: an IPv6 blackhole towards the server does not break it
    await lab.set_scenario(Scenario.v6_blackholed())
    status, addrs, _ = await lab.run_in("client", lookup, [lab.dns_v6], "NEW.lab.test.", "AAAA")
    assert (status, addrs) == ("ok", ["2001:db8:5::77"])
    lab.dns.update("new.lab.test", None)
    status, _, _ = await lab.run_in("client", lookup, [lab.dns_v6], "new.lab.test", "AAAA")
    assert status == "nxdomain"
