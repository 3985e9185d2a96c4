"""Server side: dual-stack listeners and the real client address behind load balancers.

* :func:`start_server`: :func:`asyncio.start_server` on IPv6 and IPv4 at once, optionally
  reading a PROXY protocol header (v1/v2) from trusted proxies before the callback runs,
  with or without TLS terminated by the server itself.
* :func:`real_peername`: the real client ``(address, port)`` of a connection (PROXY header,
  TOA module, or the socket's peer); :func:`proxy_header` gives the whole header with its
  TLVs.
* :mod:`.proxy_protocol`: the sans-IO PROXY protocol parser and builder.
* :mod:`.toa`: TOA/UOA kernel-module lookups through ``getsockopt``.
"""

from __future__ import annotations

from .listener import DEFAULT_HEADER_TIMEOUT, start_server
from .peers import proxy_header, real_peername
from .proxy_header import (
    Command,
    HeaderTooLargeError,
    IncompleteHeaderError,
    ProxyFamily,
    ProxyHeader,
    ProxyProtocolError,
    Transport,
)
from .proxy_protocol import HeaderParser, parse_header
from .proxy_v1 import build_v1
from .proxy_v2 import build_v2
from .toa import get_toa, uoa_lookup

__all__ = [
    "DEFAULT_HEADER_TIMEOUT",
    "Command",
    "HeaderParser",
    "HeaderTooLargeError",
    "IncompleteHeaderError",
    "ProxyFamily",
    "ProxyHeader",
    "ProxyProtocolError",
    "Transport",
    "build_v1",
    "build_v2",
    "get_toa",
    "parse_header",
    "proxy_header",
    "real_peername",
    "start_server",
    "uoa_lookup",
]
