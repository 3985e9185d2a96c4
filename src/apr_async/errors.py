"""Exception types, input checks and the mapping of DNS failures to ``socket.gaierror``.

Everything here is pure (no I/O): callers check their input with these helpers before they
open a socket or send a query, so bad input fails fast with a clear ``ValueError`` or
``TypeError``, and name resolution failures surface as the ``socket.gaierror`` codes and
messages the stdlib's ``getaddrinfo`` uses, so existing ``except socket.gaierror`` handlers and
``e.errno == socket.EAI_NONAME`` checks keep working. :func:`describe_error` turns any of
these, or a failed connection race, into one line for people.
"""

from __future__ import annotations

import errno as errno_codes
import functools
import ipaddress
import os
import re
import socket
from typing import Any, NamedTuple

__all__ = [
    "EAI_NODATA",
    "HostSpec",
    "ResolutionError",
    "describe_error",
    "describe_resolution_error",
    "gaierror",
    "gaierror_from_ares",
    "parse_host",
    "validate_port",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: ``EAI_NODATA`` where the platform has it; glibc dropped it from the POSIX set, so fall back
#: to ``EAI_NONAME`` like ``getaddrinfo`` itself does on such systems.
EAI_NODATA: int = getattr(socket, "EAI_NODATA", socket.EAI_NONAME)

# glibc's gai_strerror() texts: what ``socket.gaierror`` shows on Linux.
_MESSAGES: dict[str, str] = {
    "EAI_BADFLAGS": "Bad value for ai_flags",
    "EAI_NONAME": "Name or service not known",
    "EAI_AGAIN": "Temporary failure in name resolution",
    "EAI_FAIL": "Non-recoverable failure in name resolution",
    "EAI_NODATA": "No address associated with hostname",
    "EAI_FAMILY": "ai_family not supported",
    "EAI_SOCKTYPE": "ai_socktype not supported",
    "EAI_SERVICE": "Servname not supported for ai_socktype",
    "EAI_ADDRFAMILY": "Address family for hostname not supported",
    "EAI_MEMORY": "Memory allocation failure",
}
_MESSAGE_BY_CODE: dict[int, str] = {}
for _name, _text in _MESSAGES.items():
    _code = getattr(socket, _name, None)
    if isinstance(_code, int):
        _MESSAGE_BY_CODE.setdefault(_code, _text)


class ResolutionError(socket.gaierror):
    """A ``socket.gaierror`` that also remembers the host and, for DNS, the c-ares status.

    ``str()`` and ``args`` are exactly the stdlib's (``[Errno -2] Name or service not known``).
    """

    host: str | None
    detail: str | None

    def __init__(
        self, code: int, message: str, *, host: str | None = None, detail: str | None = None
    ) -> None:
        super().__init__(code, message)
        self.host = host
        self.detail = detail

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (self.errno, self.strerror, self.host, self.detail))


def _rebuild(code: int, message: str, host: str | None, detail: str | None) -> ResolutionError:
    return ResolutionError(code, message, host=host, detail=detail)


def gaierror(code: int, *, host: str | None = None, detail: str | None = None) -> ResolutionError:
    """A ``socket.gaierror`` for an ``EAI_*`` code with the stdlib's message."""
    return ResolutionError(
        code, _MESSAGE_BY_CODE.get(code, "Unknown error"), host=host, detail=detail
    )


# c-ares status names -> EAI code. NXDOMAIN and malformed names mean "no such name"; a name
# that exists without records of the type is NODATA; anything a retry may fix is EAI_AGAIN.
_ARES_TO_EAI: dict[str, int] = {
    "ARES_ENOTFOUND": socket.EAI_NONAME,
    "ARES_EBADNAME": socket.EAI_NONAME,
    "ARES_ENONAME": socket.EAI_NONAME,
    "ARES_ENODATA": EAI_NODATA,
    "ARES_ESERVFAIL": socket.EAI_AGAIN,
    "ARES_ETIMEOUT": socket.EAI_AGAIN,
    "ARES_EREFUSED": socket.EAI_AGAIN,
    "ARES_ECONNREFUSED": socket.EAI_AGAIN,
    "ARES_ECANCELLED": socket.EAI_AGAIN,
    "ARES_EDESTRUCTION": socket.EAI_AGAIN,
    "ARES_EOF": socket.EAI_AGAIN,
    "ARES_ENOMEM": getattr(socket, "EAI_MEMORY", socket.EAI_FAIL),
    "ARES_EBADFAMILY": socket.EAI_FAMILY,
}


def gaierror_from_ares(status_name: str, *, host: str | None = None) -> ResolutionError:
    """Map a c-ares status name (``"ARES_ENOTFOUND"``...) to the stdlib's gaierror."""
    code = _ARES_TO_EAI.get(status_name, socket.EAI_FAIL)
    return gaierror(code, host=host, detail=status_name)


# --------------------------------------------------------------------------- input checks

MAX_NAME_LENGTH = 253
MAX_LABEL_LENGTH = 63
_BAD_CHARS = re.compile(r"[\x00-\x20\x7f/\\]")
_NUMERIC_V4 = re.compile(r"^(0[xX][0-9a-fA-F]*|[0-9]+)(\.(0[xX][0-9a-fA-F]*|[0-9]+)){0,3}$")


class HostSpec(NamedTuple):
    """A checked host: a literal address (``ip``, ``zone``) or a DNS ``name``.

    ``name`` is the lower-case ASCII (IDNA) form without a trailing dot, ready for a query and
    usable as a cache key; ``text`` is what the caller passed (for messages and canonname).
    """

    text: str
    ip: IPAddress | None
    zone: str | None
    name: str | None

    @property
    def is_literal(self) -> bool:
        """Whether the host is a numeric address (no DNS needed)."""
        return self.ip is not None


def parse_host(host: object) -> HostSpec:
    """Check ``host`` and split it into a literal address (with zone) or an IDNA DNS name.

    Raises ``TypeError`` for a non-string and ``ValueError`` for an empty or over-long name,
    a label longer than 63 octets, an empty label, NUL or other control characters, or a zone
    on anything but an IPv6 address.
    """
    if type(host) is str:
        return _parse_text(host)
    if isinstance(host, (bytes, bytearray)):
        try:
            text = bytes(host).decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"host {host!r}: bytes must be ASCII") from None
    elif isinstance(host, str):
        text = host
    else:
        raise TypeError(f"host must be str or bytes, not {type(host).__name__}")
    return _parse_text(text)


@functools.lru_cache(maxsize=4096)
def _parse_text(text: str) -> HostSpec:
    # Cached: the same few hosts are parsed on every connect, and telling a name from an
    # address literal costs an exception from ipaddress each time.
    if not text:
        raise ValueError("host must not be empty")
    if "\0" in text:
        raise ValueError(f"host {text!r} contains a NUL byte")
    literal = _parse_literal(text)
    if literal is not None:
        return literal
    if _BAD_CHARS.search(text):
        raise ValueError(f"host {text!r} contains whitespace, a control character or a slash")
    return HostSpec(text, None, None, idna_name(text))


def _parse_literal(text: str) -> HostSpec | None:
    address, sep, zone = text.partition("%")
    if sep:
        if ":" not in address:
            raise ValueError(f"host {text!r}: a %zone is only valid on an IPv6 address")
        if not zone or _BAD_CHARS.search(zone):
            raise ValueError(f"host {text!r}: empty or malformed zone")
    if address.startswith("[") and address.endswith("]"):
        address = address[1:-1]
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        if sep:
            raise ValueError(f"host {text!r} is not a valid IPv6 address with a zone") from None
        if _NUMERIC_V4.fullmatch(text):
            # inet_aton forms like "127.1" or "0x7f.1": getaddrinfo treats them as numeric.
            try:
                return HostSpec(text, ipaddress.IPv4Address(socket.inet_aton(text)), None, None)
            except OSError:
                raise ValueError(f"host {text!r} is not a valid IPv4 address") from None
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        # Python keeps a zone inside IPv6Address, which makes equal addresses unequal.
        zone = ip.scope_id
        ip = ipaddress.IPv6Address(ip.packed)
    return HostSpec(text, ip, zone or None, None)


def idna_name(text: str) -> str:
    """The ASCII (IDNA 2003, as the stdlib's ``socket`` uses) lower-case form of a DNS name."""
    name = text[:-1] if text.endswith(".") else text
    if not name:
        raise ValueError(f"host {text!r} is not a valid name")
    if name.isascii():
        ascii_name = name.lower()
    else:
        try:
            ascii_name = name.encode("idna").decode("ascii").lower()
        except UnicodeError as exc:
            raise ValueError(
                f"host {text!r} is not a valid internationalised name: {exc}"
            ) from None
    if len(ascii_name) > MAX_NAME_LENGTH:
        raise ValueError(
            f"host name is {len(ascii_name)} octets long; the DNS limit is {MAX_NAME_LENGTH}"
        )
    for label in ascii_name.split("."):
        if not label:
            raise ValueError(f"host {text!r} has an empty label")
        if len(label) > MAX_LABEL_LENGTH:
            raise ValueError(
                f"host {text!r} has a label of {len(label)} octets; the limit is {MAX_LABEL_LENGTH}"
            )
    return ascii_name


def validate_port(port: object) -> int | str:
    """Check a port: ``None`` -> 0, an int 0-65535, or a numeric or service-name string.

    Returns an ``int``, or a ``str`` service name for the caller to look up (``getservbyname``).
    """
    if port is None:
        return 0
    if isinstance(port, bool):
        raise TypeError("port must be an int or a str, not bool")
    if isinstance(port, int):
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is outside 0-65535")
        return port
    if isinstance(port, (bytes, bytearray)):
        try:
            port = bytes(port).decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"port {port!r}: bytes must be ASCII") from None
    if isinstance(port, str):
        if not port:
            raise ValueError("port must not be an empty string")
        if "\0" in port:
            raise ValueError(f"port {port!r} contains a NUL byte")
        if port.isdecimal() and port.isascii():
            return validate_port(int(port))
        if _BAD_CHARS.search(port):
            raise ValueError(f"port {port!r} is not a number or a service name")
        return port
    raise TypeError(f"port must be an int, a str or None, not {type(port).__name__}")


_FAMILIES = (socket.AF_UNSPEC, socket.AF_INET, socket.AF_INET6)


def validate_family(family: object) -> int:
    """Check an address family: 0 (``AF_UNSPEC``), ``AF_INET`` or ``AF_INET6``."""
    if isinstance(family, bool) or not isinstance(family, int):
        raise TypeError(f"family must be an int, not {type(family).__name__}")
    if family not in _FAMILIES:
        raise ValueError(f"family {family} is not AF_UNSPEC, AF_INET or AF_INET6")
    return int(family)


# --------------------------------------------------------------------------- messages for people

# What a failed attempt to one endpoint means, worded around the endpoint ("{}").
_ATTEMPT_PHRASES: dict[int, str] = {
    errno_codes.ECONNREFUSED: "connection refused by {}",
    errno_codes.ECONNRESET: "connection reset by {}",
    errno_codes.ETIMEDOUT: "no answer from {}",
    errno_codes.EHOSTUNREACH: "host unreachable: {}",
    errno_codes.ENETUNREACH: "network unreachable: {}",
    errno_codes.EADDRNOTAVAIL: "source address not available for {}",
}
_DNS_DETAILS: dict[str, str] = {
    "ARES_ETIMEOUT": "DNS server did not answer",
    "ARES_ECONNREFUSED": "DNS server unreachable",
    "ARES_ESERVFAIL": "DNS server failure (SERVFAIL)",
    "ARES_EREFUSED": "DNS server refused the query (REFUSED)",
}


def describe_resolution_error(exc: socket.gaierror) -> str:
    """A name resolution failure in a few words: ``no such name (NXDOMAIN)``, ``no address``,
    ``DNS server did not answer``..."""
    detail = getattr(exc, "detail", None)
    if exc.errno == socket.EAI_NONAME and isinstance(detail, str):
        if detail.startswith("RFC 6761"):
            return "no such name (special-use .invalid)"
        if detail in ("ARES_ENOTFOUND", "ARES_ENONAME"):
            return "no such name (NXDOMAIN)"
    if exc.errno == EAI_NODATA and EAI_NODATA != socket.EAI_NONAME:
        return "no address (NODATA)"
    if isinstance(detail, str) and detail in _DNS_DETAILS:
        return _DNS_DETAILS[detail]
    return str(exc.strerror or exc)


def _endpoint(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        if len(address) >= 4 and address[3] and "%" not in host:
            host = f"{host}%{address[3]}"
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{address[1]}" if address[1] else host
    return "(kernel's choice)" if address is None else str(address)


def _attempt_template(exc: BaseException) -> str:
    number = getattr(exc, "errno", None)
    if isinstance(number, int) and number in _ATTEMPT_PHRASES:
        return _ATTEMPT_PHRASES[number]
    if isinstance(exc, TimeoutError):
        return _ATTEMPT_PHRASES[errno_codes.ETIMEDOUT]
    return "{}: " + describe_error(exc).replace("{", "{{").replace("}", "}}")


def _describe_attempts(attempts: tuple[tuple[Any, BaseException], ...]) -> str:
    destinations = [_endpoint(getattr(pair, "destination", None)) for pair, _ in attempts]
    repeated = len(set(destinations)) < len(destinations)
    groups: dict[str, list[str]] = {}
    for (pair, exc), destination in zip(attempts, destinations, strict=True):
        where = destination
        source = getattr(pair, "source", None)
        if repeated and isinstance(source, tuple) and source:
            # One destination tried from several sources: say which failure was which.
            where += f" from {_endpoint((source[0], 0, *source[2:]))}"
        groups.setdefault(_attempt_template(exc), []).append(where)
    return "; ".join(template.format(", ".join(places)) for template, places in groups.items())


def describe_error(exc: BaseException) -> str:
    """``exc`` as one line for people, without internal class names or asyncio's wording.

    A failed race (``AllAttemptsFailedError``) lists each endpoint compactly, grouped by what
    went wrong (``connection refused by 127.0.0.1:8080, [::1]:8080``); a resolution failure
    says so (``name resolution failed for nx.example: no such name (NXDOMAIN)``); an
    ``OSError`` gives its errno's text; anything else its message.
    """
    if isinstance(exc, socket.gaierror):
        host = getattr(exc, "host", None)
        what = describe_resolution_error(exc)
        return (
            f"name resolution failed for {host}: {what}"
            if host
            else (f"name resolution failed: {what}")
        )
    attempts = getattr(exc, "attempts", None)
    if isinstance(exc, OSError) and isinstance(attempts, tuple):
        # What ended the race early (its timeout, a rejected certificate) leads the line.
        cause = getattr(exc, "_cause", None)
        lead: str | None = None
        if isinstance(cause, TimeoutError) or (cause is None and isinstance(exc, TimeoutError)):
            lead = "timed out"
        elif isinstance(cause, BaseException):
            lead = describe_error(cause)
        if not attempts:
            return f"{lead} before any attempt" if lead else "no (source, destination) pair to try"
        return f"{lead}: {_describe_attempts(attempts)}" if lead else _describe_attempts(attempts)
    if isinstance(exc, TimeoutError) and not exc.args:
        return "timed out"
    number = getattr(exc, "errno", None)
    if isinstance(exc, OSError) and isinstance(number, int) and number > 0:
        text = os.strerror(number)
        text = text[0].lower() + text[1:]
        return f"{text}: {exc.filename}" if exc.filename is not None else text
    return str(exc) or type(exc).__name__
