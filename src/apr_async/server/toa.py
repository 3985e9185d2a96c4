"""Real client addresses from the TOA (TCP) and UOA (UDP) kernel modules of full-NAT balancers.

Full-NAT load balancers (LVS/DPVS and the cloud balancers built on them) rewrite the source
address, and carry the client's address in a TCP option (TOA) or an IP option / private
protocol (UOA). A kernel module on the real server stores it and gives it back.

* TOA modules in the wild (Alibaba LVS ``kernel/net/toa``, Huawei ``TCP_option_address``,
  DPVS ``kmod/toa``, Tencent CLB) hook ``inet_getname``: ``getpeername()`` itself returns
  the real IPv4/IPv6 client, so the socket-peer fallback of :func:`.real_peername` already
  gives it. For NAT64 (IPv6 client, IPv4 socket) DPVS and Tencent add
  ``getsockopt(fd, IPPROTO_IP, TOA_SO_GET_LOOKUP=4096)`` filling ``struct toa_nat64_peer``
  (:class:`ToaNat64Peer`, DPVS ``kmod/toa/toa.h``).
* ``getsockopt(fd, IPPROTO_IP, 2049)`` filling the 20-byte :class:`ToaData` is the
  interface issue 7 specifies. No public module header defining it was found; it is tried
  first, and the NAT64 lookup after it.
* UOA: ``getsockopt(fd, IPPROTO_IP, UOA_SO_GET_LOOKUP=2048)`` where the buffer is a
  :class:`UoaParamMap` (DPVS ``kmod/uoa/uoa.h``) whose *input* half (the datagram's
  5-tuple as the server saw it) is filled in before the call. Python's
  ``socket.getsockopt`` only passes an empty buffer, so the call goes to libc through
  :mod:`ctypes` (no compiled helper, no build step).

On a kernel without the module these calls fail (``ENOPROTOOPT``; a module with no entry
answers ``ENOENT``, ``EINVAL``, ``EFAULT`` or ``ENOTCONN``), and the functions return
``None``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import ipaddress
import logging
import os
import socket
from collections.abc import Callable
from typing import Any, Final, Protocol

__all__ = [
    "TOA_SO_GET",
    "TOA_SO_GET_NAT64",
    "UOA_SO_GET_LOOKUP",
    "ToaData",
    "ToaNat64Peer",
    "UoaParamMap",
    "decode_toa",
    "decode_toa_nat64",
    "decode_uoa",
    "encode_uoa_query",
    "get_toa",
    "getsockopt_inout",
    "uoa_lookup",
]

log = logging.getLogger(__name__)

#: ``getsockopt`` option (level ``IPPROTO_IP``) of the TOA interface issue 7 specifies.
TOA_SO_GET: Final = 2049
#: ``TOA_SO_GET_LOOKUP`` = ``TOA_BASE_CTL`` (4096): the NAT64 lookup of DPVS/Tencent TOA.
TOA_SO_GET_NAT64: Final = 4096
#: ``UOA_SO_GET_LOOKUP`` = ``UOA_BASE_CTL`` (2048) in DPVS ``kmod/uoa/uoa.h``.
UOA_SO_GET_LOOKUP: Final = 2048


class ToaData(ctypes.BigEndianStructure):
    """The answer to ``getsockopt(IPPROTO_IP, 2049)``, laid out as issue 7 specifies::

    struct toa_data {
        union { __be32 ip; struct in6_addr ip6; } addr;  /* offset 0, 16 bytes  */
        __be16 port;                                     /* offset 16           */
        __u8   family;                                   /* offset 18, AF_INET/6 */
        __u8   set;                                      /* offset 19, 1 = valid */
    } __attribute__((packed));                           /* 20 bytes            */
    """

    _pack_ = 1
    _fields_ = (
        ("addr", ctypes.c_uint8 * 16),
        ("port", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("set", ctypes.c_uint8),
    )


class ToaNat64Peer(ctypes.Structure):
    """``struct toa_nat64_peer`` of DPVS ``kmod/toa/toa.h`` (also Tencent CLB's TOA)::

        struct toa_nat64_peer {
            struct in6_addr saddr;   /* offset 0, 16 bytes */
            __u16 port;              /* offset 16, network order (the TCP option's bytes) */
        };                           /* 20 bytes: in6_addr's 4-byte alignment pads it */

    Not packed: the module rejects a buffer shorter than its ``sizeof``, which is 20.
    ``saddr`` is declared as four ``uint32`` to give the struct that same alignment.
    """

    _fields_ = (
        ("saddr", ctypes.c_uint32 * 4),
        ("port", ctypes.c_uint8 * 2),
    )


class UoaParamMap(ctypes.Structure):
    """``struct uoa_param_map`` of DPVS ``kmod/uoa/uoa.h`` (iqiyi/dpvs)::

        union inet_addr { struct in_addr in; struct in6_addr in6; };   /* 16 bytes */
        struct uoa_param_map {
            /* input */
            __be16           af;          /* offset 0  */
            union inet_addr  saddr;       /* offset 2  */
            union inet_addr  daddr;       /* offset 18 */
            __be16           sport;       /* offset 34 */
            __be16           dport;       /* offset 36 */
            /* output */
            __be16           real_af;     /* offset 38 */
            union inet_addr  real_saddr;  /* offset 40 */
            __be16           real_sport;  /* offset 56 */
        } __attribute__((__packed__));    /* 58 bytes  */

    ``af``/``real_af`` are declared ``__be16`` but hold the host-order ``AF_*`` value: the
    module compares ``map.af == AF_INET`` and DPVS's own example server assigns
    ``map.af = af`` without ``htons``. So they are native ``uint16`` here, while the ports
    are network order (the module copies them from the packet).
    """

    _pack_ = 1
    _fields_ = (
        ("af", ctypes.c_uint16),
        ("saddr", ctypes.c_uint8 * 16),
        ("daddr", ctypes.c_uint8 * 16),
        ("sport", ctypes.c_uint8 * 2),
        ("dport", ctypes.c_uint8 * 2),
        ("real_af", ctypes.c_uint16),
        ("real_saddr", ctypes.c_uint8 * 16),
        ("real_sport", ctypes.c_uint8 * 2),
    )


class _SocketLike(Protocol):
    def fileno(self) -> int: ...

    def getsockname(self) -> Any: ...


# Errors that mean "no module / no entry for this socket", not a bug in the caller.
_NO_ANSWER: Final = frozenset(
    {
        errno.ENOPROTOOPT,
        errno.EOPNOTSUPP,
        errno.ENOENT,
        errno.EINVAL,
        errno.ENOTCONN,
        errno.EFAULT,
        errno.EPERM,
        errno.EACCES,
    }
)

_libc: ctypes.CDLL | None = None


def _getsockopt_fn() -> Callable[..., int]:
    global _libc  # noqa: PLW0603 - loaded once, lazily: importing the module stays cheap
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = _libc.getsockopt
        fn.argtypes = (
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_uint32),
        )
        fn.restype = ctypes.c_int
    fn_: Callable[..., int] = _libc.getsockopt
    return fn_


def _fd(sock: _SocketLike) -> int:
    fd = sock.fileno()
    if not isinstance(fd, int) or fd < 0:
        raise ValueError("the socket is closed")
    return fd


def getsockopt_inout(
    sock: _SocketLike, level: int, optname: int, buf: ctypes.Array[ctypes.c_char] | ctypes.Structure
) -> tuple[int, int]:
    """Call libc ``getsockopt`` with ``buf`` as both input and output.

    Returns ``(err, optlen)``: ``err`` is 0 on success, else the ``errno`` value; ``optlen``
    is the length the kernel reported. ``buf`` is updated in place.
    """
    fd = _fd(sock)
    optlen = ctypes.c_uint32(ctypes.sizeof(buf))
    ctypes.set_errno(0)
    rc = _getsockopt_fn()(fd, level, optname, ctypes.addressof(buf), ctypes.byref(optlen))
    if rc == 0:
        return 0, optlen.value
    return ctypes.get_errno() or errno.EIO, optlen.value


def decode_toa(raw: bytes) -> tuple[str, int] | None:
    """Decode a :class:`ToaData` buffer; None unless the set flag is on and the family known."""
    if len(raw) < ctypes.sizeof(ToaData):
        return None
    data = ToaData.from_buffer_copy(raw[: ctypes.sizeof(ToaData)])
    if not data.set:
        return None
    addr = bytes(data.addr)
    if data.family == socket.AF_INET:
        return (str(ipaddress.IPv4Address(addr[:4])), int(data.port))
    if data.family == socket.AF_INET6:
        return (str(ipaddress.IPv6Address(addr)), int(data.port))
    return None


def decode_toa_nat64(raw: bytes) -> tuple[str, int] | None:
    """Decode a :class:`ToaNat64Peer` buffer; None if it is short or the address unset."""
    if len(raw) < ctypes.sizeof(ToaNat64Peer):
        return None
    address, port = raw[:16], raw[16:18]
    if not any(address):
        return None
    return (str(ipaddress.IPv6Address(address)), int.from_bytes(port, "big"))


def _lookup(sock: _SocketLike, optname: int, buf: ctypes.Structure) -> bytes | None:
    err, optlen = getsockopt_inout(sock, socket.IPPROTO_IP, optname, buf)
    if err:
        if err not in _NO_ANSWER:
            log.debug("getsockopt(IPPROTO_IP, %d) failed: %s", optname, os.strerror(err))
        return None
    return bytes(buf)[: min(optlen, ctypes.sizeof(buf))]


def get_toa(sock: _SocketLike) -> tuple[str, int] | None:
    """Real client ``(address, port)`` of a TCP connection from a TOA module, or None.

    ``sock`` is a connected TCP socket (a :class:`socket.socket`, or the ``"socket"`` extra of
    an asyncio transport). Asks the 2049 interface (:class:`ToaData`), then the DPVS/Tencent
    NAT64 lookup (:class:`ToaNat64Peer`). Returns None when no module answers or the
    connection carried no TOA option; never raises for that. (Modules that rewrite
    ``getpeername()`` need no call: the socket's peer is already the client.)
    """
    raw = _lookup(sock, TOA_SO_GET, ToaData())
    found = decode_toa(raw) if raw is not None else None
    if found is None:
        raw = _lookup(sock, TOA_SO_GET_NAT64, ToaNat64Peer())
        found = decode_toa_nat64(raw) if raw is not None else None
    return found


def _unmapped(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _put_port(field: ctypes.Array[ctypes.c_uint8], port: int) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"port must be an int in 0..65535, not {port!r}")
    field[0], field[1] = port >> 8, port & 0xFF


def encode_uoa_query(
    peer: tuple[str, int] | tuple[str, int, int, int],
    local: tuple[str, int] | tuple[str, int, int, int],
) -> UoaParamMap:
    """Fill the input half of a :class:`UoaParamMap` for a datagram ``peer`` -> ``local``.

    IPv4-mapped IPv6 addresses (a dual-stack socket) are looked up as IPv4, which is what the
    module stored. A wildcard ``local`` address is allowed (the module matches any).
    """
    src, dst = _unmapped(peer[0]), _unmapped(local[0])
    if src.version != dst.version:
        if dst.is_unspecified:
            dst = ipaddress.ip_address("0.0.0.0" if src.version == 4 else "::")
        else:
            raise ValueError("peer and local address must be the same family")
    param = UoaParamMap()
    param.af = socket.AF_INET if src.version == 4 else socket.AF_INET6
    ctypes.memmove(param.saddr, src.packed, len(src.packed))
    ctypes.memmove(param.daddr, dst.packed, len(dst.packed))
    _put_port(param.sport, peer[1])
    _put_port(param.dport, local[1])
    return param


def decode_uoa(param: UoaParamMap) -> tuple[str, int] | None:
    """The output half of a :class:`UoaParamMap`: real client ``(address, port)`` or None."""
    port = (param.real_sport[0] << 8) | param.real_sport[1]
    raw = bytes(param.real_saddr)
    family = param.real_af
    if family == 0 and any(raw):
        # Older DPVS modules (uoa_so_get before real_af existed in its answer) fill only
        # real_saddr/real_sport: an IPv4 answer leaves the last 12 bytes at zero.
        family = socket.AF_INET6 if any(raw[4:]) else socket.AF_INET
    if family == socket.AF_INET:
        return (str(ipaddress.IPv4Address(raw[:4])), port)
    if family == socket.AF_INET6:
        return (str(ipaddress.IPv6Address(raw)), port)
    return None


def uoa_lookup(
    sock: _SocketLike,
    peer: tuple[str, int] | tuple[str, int, int, int],
    local: tuple[str, int] | tuple[str, int, int, int] | None = None,
) -> tuple[str, int] | None:
    """Real client ``(address, port)`` of a UDP datagram from the UOA module, or None.

    ``peer`` is the address ``recvfrom`` returned; ``local`` the address the datagram was
    sent to (defaults to the socket's own address). Returns None when the module is absent or
    has no entry; never raises for that. Bad addresses raise :class:`ValueError` before the
    call.
    """
    if local is None:
        local = sock.getsockname()
    param = encode_uoa_query(peer, local)
    if _lookup(sock, UOA_SO_GET_LOOKUP, param) is None:
        return None
    return decode_uoa(param)
