"""Names answered without DNS: the hosts file, RFC 6761 special-use names; nameserver text.

Split from :mod:`apr_async.resolve.resolver`, which consults these before sending a query.
"""

from __future__ import annotations

import ipaddress
import os

from apr_async.errors import parse_host

__all__ = ["HostsFile", "is_invalid", "is_localhost", "server_text"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Address = tuple[IPAddress, str | None]
_HOSTS_RECHECK = 5.0


class HostsFile:
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


def is_localhost(name: str) -> bool:
    return name == "localhost" or name.endswith(".localhost")


def is_invalid(name: str) -> bool:
    return name == "invalid" or name.endswith(".invalid")


def server_text(server: str | tuple[str, int]) -> str:
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
        raise ValueError(f"nameserver {server!r} is not an IP address (with optional port)") \
            from None
    if port_text is not None and not (port_text.isdigit() and 0 < int(port_text) <= 65535):
        raise ValueError(f"nameserver {server!r} has an invalid port")
    return server
