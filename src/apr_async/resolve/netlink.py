"""Raw rtnetlink through the stdlib ``socket`` module: links, addresses, routes (Linux).

One dump of links, addresses and routes gives what RFC 6724 needs and ``getifaddrs`` lacks
(address flags, prefix lengths, interface indexes) plus the default gateways, and
``RTM_GETROUTE`` for a destination gives the kernel's own source and outgoing interface.
Every socket is created in the calling thread, which may have entered another network
namespace (the test lab does).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from apr_async.core.addresses import IPAddress
from apr_async.resolve.host import Gateway, Interface, RouteChoice

__all__ = [
    "IFA_F_DADFAILED",
    "IFA_F_DEPRECATED",
    "IFA_F_HOMEADDRESS",
    "IFA_F_TEMPORARY",
    "IFA_F_TENTATIVE",
    "Netlink",
    "RawAddress",
    "netlink_route_choices",
    "read_addresses",
    "read_gateways",
    "read_links",
]


_NLMSG_HDR = struct.Struct("=LHHLL")
_RTATTR = struct.Struct("=HH")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTNEXTHOP = struct.Struct("=HBBi")
_U32 = struct.Struct("=I")

_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_NLM_F_REQUEST = 0x1
_NLM_F_DUMP = 0x300
_RTM_NEWLINK = 16
_RTM_GETLINK = 18
_RTM_NEWADDR = 20
_RTM_GETADDR = 22
_RTM_NEWROUTE = 24
_RTM_GETROUTE = 26

_IFLA_IFNAME = 3
_IFA_ADDRESS = 1
_IFA_LOCAL = 2
_IFA_FLAGS = 8
_RTA_DST = 1
_RTA_OIF = 4
_RTA_GATEWAY = 5
_RTA_PRIORITY = 6
_RTA_PREFSRC = 7
_RTA_MULTIPATH = 9
_RTA_TABLE = 15
_RTA_VIA = 18
_RTN_UNICAST = 1
_RT_TABLE_MAIN = 254

_IFF_UP = 0x1
_IFF_LOOPBACK = 0x8
_IFF_RUNNING = 0x40

IFA_F_TEMPORARY = 0x01
IFA_F_DADFAILED = 0x08
IFA_F_HOMEADDRESS = 0x10
IFA_F_DEPRECATED = 0x20
IFA_F_TENTATIVE = 0x40

_NETLINK_ROUTE = 0
_RECV_SIZE = 65536


def _align4(n: int) -> int:
    return (n + 3) & ~3


def _attrs(data: bytes | memoryview, offset: int, end: int) -> Iterator[tuple[int, memoryview]]:
    view = memoryview(data)
    while offset + _RTATTR.size <= end:
        length, kind = _RTATTR.unpack_from(view, offset)
        if length < _RTATTR.size or offset + length > end:
            return
        # Bit 15 is NLA_F_NESTED and bit 14 NLA_F_NET_BYTEORDER: neither changes the type.
        yield kind & 0x3FFF, view[offset + _RTATTR.size : offset + length]
        offset += _align4(length)


def _attr(kind: int, payload: bytes) -> bytes:
    length = _RTATTR.size + len(payload)
    return _RTATTR.pack(length, kind) + payload + b"\0" * (_align4(length) - length)


def _ip_from(family: int, raw: memoryview) -> IPAddress | None:
    if family == socket.AF_INET and len(raw) == 4:
        return ipaddress.IPv4Address(bytes(raw))
    if family == socket.AF_INET6 and len(raw) == 16:
        return ipaddress.IPv6Address(bytes(raw))
    return None


class Netlink:
    """A NETLINK_ROUTE socket of the calling thread's network namespace."""

    def __init__(self) -> None:
        self._sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, _NETLINK_ROUTE
        )
        self._seq = 0
        try:
            self._sock.bind((0, 0))
        except BaseException:
            self._sock.close()
            raise

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, msg_type: int, flags: int, body: bytes) -> int:
        self._seq += 1
        header = _NLMSG_HDR.pack(_NLMSG_HDR.size + len(body), msg_type, flags, self._seq, 0)
        self._sock.send(header + body)
        return self._seq

    def dump(
        self, msg_type: int, body: bytes, keep: Callable[[memoryview], bool] | None = None
    ) -> list[tuple[int, memoryview]]:
        """Send a dump request; return (type, payload) of every reply message *keep* accepts.

        *keep* sees each payload before anything else is done with it, so that a dump of a
        large table (a full BGP table is a million routes) costs one header check per entry.
        """
        seq = self.send(msg_type, _NLM_F_REQUEST | _NLM_F_DUMP, body)
        out: list[tuple[int, memoryview]] = []
        while True:
            for kind, msg_seq, payload in self._messages():
                if msg_seq != seq:
                    continue
                if kind == _NLMSG_DONE:
                    return out
                if kind == _NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code:
                        raise OSError(code, os.strerror(code))
                    return out
                if keep is None or keep(payload):
                    out.append((kind, payload))

    def replies(self, seqs: Iterable[int]) -> dict[int, tuple[int, memoryview]]:
        """Collect one reply (a message or an error) for each sequence number."""
        pending = set(seqs)
        out: dict[int, tuple[int, memoryview]] = {}
        while pending:
            for kind, msg_seq, payload in self._messages():
                if msg_seq in pending:
                    pending.discard(msg_seq)
                    out[msg_seq] = (kind, payload)
        return out

    def _messages(self) -> Iterator[tuple[int, int, memoryview]]:
        data = memoryview(self._sock.recv(_RECV_SIZE))
        offset = 0
        while offset + _NLMSG_HDR.size <= len(data):
            length, kind, _flags, seq, _pid = _NLMSG_HDR.unpack_from(data, offset)
            if length < _NLMSG_HDR.size or offset + length > len(data):
                break
            yield kind, seq, data[offset + _NLMSG_HDR.size : offset + length]
            offset += _align4(length)


def read_links(nl: Netlink) -> dict[int, Interface]:
    links: dict[int, Interface] = {}
    for kind, payload in nl.dump(_RTM_GETLINK, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
        if kind != _RTM_NEWLINK:
            continue
        _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(payload)
        name = f"if{index}"
        for attr, value in _attrs(payload, _IFINFOMSG.size, len(payload)):
            if attr == _IFLA_IFNAME:
                name = bytes(value).split(b"\0", 1)[0].decode("utf-8", "replace")
                # The name is all we read, and the kernel puts it first: the rest of a link
                # message (statistics, queues, ~40 attributes) costs a fresh process's first
                # ranking a parse of every attribute otherwise.
                break
        links[index] = Interface(
            index=index,
            name=name,
            up=bool(flags & _IFF_UP),
            running=bool(flags & _IFF_RUNNING),
            loopback=bool(flags & _IFF_LOOPBACK),
        )
    return links


@dataclass(frozen=True, slots=True)
class RawAddress:
    address: IPAddress
    prefixlen: int
    flags: int
    ifindex: int


def read_addresses(nl: Netlink) -> list[RawAddress]:
    out: list[RawAddress] = []
    for kind, payload in nl.dump(_RTM_GETADDR, _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
        if kind != _RTM_NEWADDR:
            continue
        family, prefixlen, flags8, _scope, index = _IFADDRMSG.unpack_from(payload)
        flags = flags8
        local: IPAddress | None = None
        address: IPAddress | None = None
        for attr, value in _attrs(payload, _IFADDRMSG.size, len(payload)):
            if attr == _IFA_LOCAL:
                local = _ip_from(family, value)
            elif attr == _IFA_ADDRESS:
                address = _ip_from(family, value)
            elif attr == _IFA_FLAGS and len(value) >= 4:
                # The 8-bit ifa_flags cannot hold the newer flags; IFA_FLAGS has them all.
                flags = _U32.unpack_from(value)[0]
        # On point-to-point links IFA_ADDRESS is the peer and IFA_LOCAL ours.
        ip = local or address
        if ip is not None:
            out.append(RawAddress(ip, prefixlen, flags, index))
    return out


def _parse_route(payload: memoryview) -> tuple[int, int, int, int, dict[int, memoryview]]:
    family, dst_len, _src_len, _tos, table, _proto, _scope, rtype, _flags = (
        _RTMSG.unpack_from(payload)
    )
    attrs: dict[int, memoryview] = {}
    for attr, value in _attrs(payload, _RTMSG.size, len(payload)):
        attrs[attr] = value
    if _RTA_TABLE in attrs and len(attrs[_RTA_TABLE]) >= 4:
        table = _U32.unpack_from(attrs[_RTA_TABLE])[0]
    return family, dst_len, table, rtype, attrs


def _next_hops(
    family: int, attrs: Mapping[int, memoryview]
) -> list[tuple[IPAddress | None, int | None]]:
    """(gateway, ifindex) of a route: its single next hop or each of a multipath route's."""
    if _RTA_MULTIPATH in attrs:
        hops: list[tuple[IPAddress | None, int | None]] = []
        data = attrs[_RTA_MULTIPATH]
        offset = 0
        while offset + _RTNEXTHOP.size <= len(data):
            length, _flags, _hops, ifindex = _RTNEXTHOP.unpack_from(data, offset)
            if length < _RTNEXTHOP.size:
                break
            sub = dict(_attrs(data, offset + _RTNEXTHOP.size, offset + length))
            hops.append((_gateway_of(family, sub), ifindex or None))
            offset += _align4(length)
        return hops
    oif = _U32.unpack_from(attrs[_RTA_OIF])[0] if _RTA_OIF in attrs else None
    return [(_gateway_of(family, attrs), oif or None)]


def _gateway_of(family: int, attrs: Mapping[int, memoryview]) -> IPAddress | None:
    if _RTA_GATEWAY in attrs:
        return _ip_from(family, attrs[_RTA_GATEWAY])
    if _RTA_VIA in attrs and len(attrs[_RTA_VIA]) >= 2:
        # An IPv4 route via an IPv6 next hop (RFC 5549): struct rtvia {family; addr}.
        via_family = struct.unpack_from("=H", attrs[_RTA_VIA])[0]
        return _ip_from(via_family, attrs[_RTA_VIA][2:])
    return None


def _is_main_default(payload: memoryview) -> bool:
    """A unicast default route of the main table, judged from the fixed header alone.

    Policy routing can hold defaults in other tables; the main table is what an unmarked
    connection uses, so only its default routes are "the" gateways.
    """
    # rtm_table holds the table id when it fits in 8 bits (254 for main); larger ids put
    # RT_TABLE_COMPAT there, so the header check never drops a main-table route.
    return (
        len(payload) >= _RTMSG.size
        and payload[1] == 0  # rtm_dst_len
        and payload[4] == _RT_TABLE_MAIN  # rtm_table
        and payload[7] == _RTN_UNICAST  # rtm_type
    )


def read_gateways(nl: Netlink, links: Mapping[int, Interface]) -> list[Gateway]:
    gateways: list[Gateway] = []
    body = _RTMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0, 0, 0, 0, 0)
    for kind, payload in nl.dump(_RTM_GETROUTE, body, _is_main_default):
        if kind != _RTM_NEWROUTE:
            continue
        family, _dst_len, _table, _rtype, attrs = _parse_route(payload)
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        metric = _U32.unpack_from(attrs[_RTA_PRIORITY])[0] if _RTA_PRIORITY in attrs else 0
        for gateway, ifindex in _next_hops(family, attrs):
            iface = links.get(ifindex) if ifindex is not None else None
            gateways.append(
                Gateway(
                    family=family,
                    address=gateway,
                    interface=iface.name if iface else None,
                    ifindex=ifindex,
                    metric=metric,
                )
            )
    return gateways


# --------------------------------------------------------------------------- route lookup


def _route_request(destination: IPAddress, ifindex: int | None) -> bytes:
    family = socket.AF_INET6 if destination.version == 6 else socket.AF_INET
    body = _RTMSG.pack(family, destination.max_prefixlen, 0, 0, 0, 0, 0, 0, 0)
    body += _attr(_RTA_DST, destination.packed)
    if ifindex:
        body += _attr(_RTA_OIF, _U32.pack(ifindex))
    return body


def netlink_route_choices(
    requests: list[tuple[IPAddress, int | None]], links: Mapping[int, Interface] | None
) -> dict[tuple[IPAddress, int | None], RouteChoice | None]:
    out: dict[tuple[IPAddress, int | None], RouteChoice | None] = {}
    with Netlink() as nl:
        seqs = {nl.send(_RTM_GETROUTE, _NLM_F_REQUEST, _route_request(d, i)): (d, i)
                for d, i in requests}
        for seq, (kind, payload) in nl.replies(seqs).items():
            destination, ifindex = seqs[seq]
            if kind != _RTM_NEWROUTE:
                # An NLMSG_ERROR: ENETUNREACH, EHOSTUNREACH, EINVAL (bad ifindex)... no route.
                out[(destination, ifindex)] = None
                continue
            family, _dst_len, _table, _rtype, attrs = _parse_route(payload)
            source = _ip_from(family, attrs[_RTA_PREFSRC]) if _RTA_PREFSRC in attrs else None
            hops = _next_hops(family, attrs)
            gateway, oif = hops[0] if hops else (None, None)
            if source is not None and source.is_unspecified:
                source = None
            iface = links.get(oif) if links is not None and oif is not None else None
            out[(destination, ifindex)] = RouteChoice(
                destination=destination,
                source=source,
                interface=iface.name if iface else None,
                ifindex=oif,
                gateway=gateway,
            )
    return out
