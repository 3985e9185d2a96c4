"""The policy table of draft-ietf-6man-rfc6724-update, and the orderings it changes."""

from __future__ import annotations

import ipaddress

import pytest

import apr_async
from apr_async.core.policy_table import (
    DEFAULT_POLICY_TABLE,
    RFC6724_UPDATE_POLICY_TABLE,
    PolicyTable,
    rfc6724_update_policy_table,
)
from apr_async.core.rfc6724 import SourceAddress, sort_destinations

ip = ipaddress.ip_address
S = SourceAddress


def order(dests: list[str], sources: list[str], policy: PolicyTable, **kw: object) -> list[str]:
    return [str(d) for d, _ in sort_destinations(dests, sources, policy=policy, **kw)]


def test_update_table_rows_are_the_drafts() -> None:
    rows = {(str(e.prefix), e.precedence, e.label) for e in RFC6724_UPDATE_POLICY_TABLE.entries}
    assert rows == {
        ("::1/128", 50, 0), ("::/0", 40, 1), ("::ffff:0:0/96", 20, 4), ("2002::/16", 5, 2),
        ("2001::/32", 5, 5), ("fc00::/7", 30, 13), ("::/96", 1, 3), ("fec0::/10", 1, 11),
        ("3ffe::/16", 1, 12),
    }
    assert apr_async.RFC6724_UPDATE_POLICY_TABLE is RFC6724_UPDATE_POLICY_TABLE


def test_ula_destination_now_sorts_before_ipv4() -> None:
    dests = ["198.51.100.1", "fd00:2::1"]
    sources = ["192.0.2.10", "fd00:1::10"]
    assert order(dests, sources, DEFAULT_POLICY_TABLE) == ["198.51.100.1", "fd00:2::1"]
    assert order(dests, sources, RFC6724_UPDATE_POLICY_TABLE) == ["fd00:2::1", "198.51.100.1"]


def test_6to4_now_sorts_below_ipv4_and_ula() -> None:
    sources = ["192.0.2.10", "2002:c000:20a::10", "fd00:1::10"]
    assert RFC6724_UPDATE_POLICY_TABLE.precedence(ip("2002:c000:201::1")) < (
        RFC6724_UPDATE_POLICY_TABLE.precedence(ip("198.51.100.1")))
    assert order(["2002:c633:6401::1", "198.51.100.1"], sources, RFC6724_UPDATE_POLICY_TABLE) == [
        "198.51.100.1", "2002:c633:6401::1"]
    dests = ["2002:c633:6401::1", "fd00:2::1"]
    assert order(dests, sources, DEFAULT_POLICY_TABLE) == dests
    assert order(dests, sources, RFC6724_UPDATE_POLICY_TABLE) == ["fd00:2::1", "2002:c633:6401::1"]


def test_local_ula_48_sorts_above_other_ulas_and_gua() -> None:
    local = rfc6724_update_policy_table(["fd00:1::/48"])
    assert local.lookup(ip("fd00:1:0:5::1")) == (45, 14)
    assert local.lookup(ip("fd00:2::1")) == (30, 13)
    # rule 9 switched off for ULAs so only the table decides between the two ULAs
    skip = {"skip_rule9_prefixes": ["fc00::/7"]}
    dests = ["fd00:2::1", "fd00:1::1"]
    sources = ["fd00:1::10", "fd00:2::10"]
    assert order(dests, sources, RFC6724_UPDATE_POLICY_TABLE, **skip) == dests
    assert order(dests, sources, local, **skip) == ["fd00:1::1", "fd00:2::1"]
    dests = ["2001:db8::1", "fd00:1::1"]
    sources = ["2001:db8:1::10", "fd00:1::10"]
    assert order(dests, sources, RFC6724_UPDATE_POLICY_TABLE) == dests
    assert order(dests, sources, local) == ["fd00:1::1", "2001:db8::1"]


def test_local_ula_prefixes_accept_addresses_and_longer_prefixes_once() -> None:
    table = rfc6724_update_policy_table(
        [S("fd00:1::10").address, "fd00:1:0:1::/64", "fd00:1::20%eth0", "fd00:3::/48"])
    local = sorted(str(e.prefix) for e in table.entries if e.label == 14)
    assert local == ["fd00:1::/48", "fd00:3::/48"]
    assert rfc6724_update_policy_table("fd00:1::/48") == rfc6724_update_policy_table(
        ["fd00:1::/48"])


@pytest.mark.parametrize("bad", ["2001:db8::/48", "fd00::/40", "10.0.0.0/8", "nonsense"])
def test_local_ula_prefixes_reject_what_is_no_ula_48(bad: str) -> None:
    with pytest.raises(ValueError):
        rfc6724_update_policy_table([bad])
