"""Input checks, gaierror mapping and the aiodns resolver against a real DNS server on loopback."""

from __future__ import annotations

import ipaddress
import pickle
import socket

import pytest

from apr_async.errors import (
    EAI_NODATA,
    gaierror,
    gaierror_from_ares,
    parse_host,
    validate_family,
    validate_port,
)

# --------------------------------------------------------------------------- input checks


@pytest.mark.parametrize(
    ("host", "exc", "match"),
    [
        ("", ValueError, "empty"),
        ("a\0b.example", ValueError, "NUL"),
        (b"a\0b", ValueError, "NUL"),
        ("a" * 64 + ".example", ValueError, "label of 64"),
        (".".join(["abcdefghi"] * 26), ValueError, "253"),
        ("a..example", ValueError, "empty label"),
        (".", ValueError, "not a valid name"),
        ("exa mple.com", ValueError, "whitespace"),
        ("127.0.0.1%lo", ValueError, "only valid on an IPv6"),
        ("fe80::1%", ValueError, "zone"),
        ("fe80::zz%eth0", ValueError, "not a valid IPv6"),
        (b"\xff.example", ValueError, "ASCII"),
        (None, TypeError, "str or bytes"),
        (12, TypeError, "str or bytes"),
        (["example.com"], TypeError, "str or bytes"),
    ],
)
def test_bad_hosts_are_rejected_clearly(host: object, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        parse_host(host)


def test_longest_legal_name_is_accepted() -> None:
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(name) == 253
    assert parse_host(name + ".").name == name


@pytest.mark.parametrize(
    ("host", "ip", "zone"),
    [
        ("192.0.2.7", "192.0.2.7", None),
        ("127.1", "127.0.0.1", None),
        ("2001:db8::1", "2001:db8::1", None),
        ("[2001:db8::1]", "2001:db8::1", None),
        ("fe80::1%eth0", "fe80::1", "eth0"),
        ("fe80::1%3", "fe80::1", "3"),
        (b"10.0.0.1", "10.0.0.1", None),
    ],
)
def test_literals_need_no_dns(host: str | bytes, ip: str, zone: str | None) -> None:
    spec = parse_host(host)
    assert spec.is_literal
    assert spec.ip == ipaddress.ip_address(ip)
    # The zone is kept apart: an IPv6Address carrying it would not equal the plain address.
    assert spec.ip is not None and str(spec.ip) == ip
    assert spec.zone == zone
    assert spec.name is None


def test_names_are_lowercased_idna_without_trailing_dot() -> None:
    assert parse_host("WWW.Example.COM.").name == "www.example.com"
    assert parse_host("bücher.example").name == "xn--bcher-kva.example"
    assert parse_host("bücher.example").text == "bücher.example"


@pytest.mark.parametrize(
    ("port", "expected"),
    [(None, 0), (0, 0), (443, 443), (65535, 65535), ("8080", 8080), (b"53", 53),
     ("https", "https")],
)
def test_ports(port: object, expected: int | str) -> None:
    assert validate_port(port) == expected


@pytest.mark.parametrize(
    ("port", "exc"),
    [(-1, ValueError), (65536, ValueError), ("70000", ValueError), ("", ValueError),
     ("ht\0tp", ValueError), (True, TypeError), (1.5, TypeError), ([80], TypeError)],
)
def test_bad_ports(port: object, exc: type[Exception]) -> None:
    with pytest.raises(exc, match="port"):
        validate_port(port)


def test_family_checks() -> None:
    assert validate_family(socket.AF_INET6) == socket.AF_INET6
    with pytest.raises(ValueError, match="AF_UNSPEC"):
        validate_family(socket.AF_UNIX)
    with pytest.raises(TypeError):
        validate_family("inet")


# --------------------------------------------------------------------------- gaierror mapping


@pytest.mark.parametrize(
    ("status", "code"),
    [
        ("ARES_ENOTFOUND", socket.EAI_NONAME),
        ("ARES_ENODATA", EAI_NODATA),
        ("ARES_ESERVFAIL", socket.EAI_AGAIN),
        ("ARES_ETIMEOUT", socket.EAI_AGAIN),
        ("ARES_EREFUSED", socket.EAI_AGAIN),
        ("ARES_ECONNREFUSED", socket.EAI_AGAIN),
        ("ARES_EBADRESP", socket.EAI_FAIL),
    ],
)
def test_ares_status_maps_to_stdlib_code(status: str, code: int) -> None:
    err = gaierror_from_ares(status, host="h.example")
    assert isinstance(err, socket.gaierror)
    assert err.errno == code
    assert err.host == "h.example"
    assert err.detail == status


def test_gaierror_looks_like_the_stdlibs() -> None:
    with pytest.raises(socket.gaierror) as real:
        socket.getaddrinfo("x.invalid", 80, flags=socket.AI_NUMERICHOST)
    ours = gaierror(real.value.errno)
    assert ours.args == real.value.args
    assert str(ours) == str(real.value)
    clone = pickle.loads(pickle.dumps(gaierror(socket.EAI_AGAIN, host="h", detail="d")))
    assert (clone.errno, clone.host, clone.detail) == (socket.EAI_AGAIN, "h", "d")
