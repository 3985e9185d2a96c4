"""The relay's endpoints and records: :class:`Endpoint` and :func:`parse_endpoint` (``host:port``,
``[v6]:port``, ``unix:/path``), whether a Unix socket path is still listened on, and what one
relayed connection (:class:`RelayRecord`) and all of them (:class:`ForwarderStats`) did."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import stat
import time
from dataclasses import dataclass, field

__all__ = [
    "Endpoint",
    "ForwarderStats",
    "RelayRecord",
    "is_live_socket",
    "parse_endpoint",
    "peer_text",
]


@dataclass(frozen=True)
class Endpoint:
    """A TCP ``host``/``port`` (``host`` None means every local address) or a Unix socket path."""

    host: str | None = None
    port: int = 0
    path: str | None = None

    @property
    def is_unix(self) -> bool:
        """True for a Unix-domain socket endpoint."""
        return self.path is not None

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        host = self.host or "*"
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{self.port}"


def parse_endpoint(text: str, *, listen: bool = False) -> Endpoint:
    """Parse ``host:port``, ``[v6]:port``, ``unix:/path`` (and for ``listen``, ``port``/``:port``).

    A listen endpoint without a host binds every address of both families. Raises
    ``ValueError`` with a message meant for people on malformed input.
    """
    if not isinstance(text, str):
        raise TypeError(f"endpoint must be a str, not {type(text).__name__}")
    text = text.strip()
    if not text:
        raise ValueError("empty endpoint")
    if "\x00" in text:
        raise ValueError("endpoint contains a NUL byte")
    if text.startswith("unix:"):
        path = text[5:]
        if not path:
            raise ValueError("unix: endpoint needs a path, e.g. unix:/run/app.sock")
        return Endpoint(path=path)
    host: str | None
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise ValueError(f"bad endpoint {text!r}: expected [IPv6]:PORT")
        host, port_text = text[1:end], text[end + 2 :]
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise ValueError(f"bad endpoint {text!r}: {host!r} is not an IPv6 address") from None
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
        if ":" in host:
            raise ValueError(f"bad endpoint {text!r}: write IPv6 addresses as [ADDR]:PORT")
    elif listen:
        host, port_text = None, text
    else:
        raise ValueError(f"bad endpoint {text!r}: expected HOST:PORT or unix:/path")
    if not host:
        if not listen:
            raise ValueError(f"bad endpoint {text!r}: missing host")
        host = None
    if not port_text.isdigit():
        raise ValueError(f"bad endpoint {text!r}: port {port_text!r} is not a number")
    port = int(port_text)
    if not 0 <= port <= 65535 or (port == 0 and not listen):
        raise ValueError(f"bad endpoint {text!r}: port {port} out of range")
    return Endpoint(host=host, port=port)


@dataclass
class RelayRecord:
    """What happened to one relayed connection (passed to ``on_close`` when it ends).

    ``error`` is ``None`` when the relay ended cleanly, else one line for people saying why
    (``connection refused by 127.0.0.1:8080``, ``cancelled``).
    """

    id: int
    peer: str
    started: float
    upstream: str = ""
    bytes_up: int = 0
    bytes_down: int = 0
    ended: float | None = None
    error: str | None = None

    @property
    def duration(self) -> float:
        """Seconds from accept to close (so far, while open)."""
        return (self.ended if self.ended is not None else time.monotonic()) - self.started

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "id": self.id,
            "peer": self.peer,
            "upstream": self.upstream,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "duration": round(self.duration, 6),
            "error": self.error,
        }


@dataclass
class ForwarderStats:
    """Counters across every relay of one :class:`Forwarder`."""

    accepted: int = 0
    completed: int = 0
    failed: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    active: set[int] = field(default_factory=set)


def peer_text(writer: asyncio.StreamWriter) -> str:
    """The peer of *writer* as ``host:port`` (``[v6]:port``), or ``unix``."""
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return "unix" if not peer else str(peer)


def is_live_socket(path: str) -> bool:
    """True if ``path`` is a Unix socket that something still listens on."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return False
    except OSError:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True
