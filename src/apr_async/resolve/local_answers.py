"""The answers a lookup gets without DNS: numeric hosts and ``addr%zone`` literals, RFC 6761
``.invalid`` names (NXDOMAIN at once) and ``localhost`` names (loopback), and hosts-file names."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

from apr_async.errors import HostSpec, gaierror
from apr_async.resolve.answers import FamilyAnswer
from apr_async.resolve.hostsfile import HostsFile, is_invalid, is_localhost

__all__ = ["local_answers"]


def local_answers(
    spec: HostSpec, families: tuple[int, ...], hosts: HostsFile, clock: Callable[[], float]
) -> list[FamilyAnswer] | None:
    """The answers for *spec* that need no DNS (literal, ``.invalid``, hosts file,
    ``localhost``), or ``None`` when it must be asked."""
    if spec.ip is not None:
        fam = int(socket.AF_INET6 if spec.ip.version == 6 else socket.AF_INET)
        return [
            FamilyAnswer(f, ((spec.ip, spec.zone),) if f == fam else (), None, 0.0,
                         "literal", None if f == fam else gaierror(
                             socket.EAI_ADDRFAMILY if hasattr(socket, "EAI_ADDRFAMILY")
                             else socket.EAI_NONAME, host=spec.text))
            for f in families
        ]
    assert spec.name is not None
    if is_invalid(spec.name):
        # RFC 6761 6.4: "invalid" names get an immediate negative answer, hosts file or
        # not; a query would only leak the name to the resolver's operator.
        return [
            FamilyAnswer(fam, (), None, 0.0, "invalid",
                         gaierror(socket.EAI_NONAME, host=spec.text,
                                  detail="RFC 6761 special-use name .invalid"))
            for fam in families
        ]
    entries = hosts.lookup(spec.name, clock())
    origin = "hosts"
    if entries is None and is_localhost(spec.name):
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
        out.append(FamilyAnswer(fam, found, None, 0.0, origin,
                                None if found else gaierror(socket.EAI_NONAME,
                                                            host=spec.text)))
    return out
