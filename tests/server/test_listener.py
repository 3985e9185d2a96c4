"""start_server on real loopback sockets: dual-stack, trust, header reading, abuse."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import ssl
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apr_async.server import build_v1, build_v2, proxy_header, real_peername, start_server
from apr_async.server.header_phase import LogLimiter
from apr_async.server.proxy_header import ProxyProtocolError, TLVType
from apr_async.server.proxy_protocol import parse_header

from .conftest import (
    needs_v6,
    open_fds,
    send_and_half_close,
    serving,
    wait_closed_by_server,
)


async def _connect(
    port: int, host: str = "127.0.0.1", source: str | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    local = (source, 0) if source else None
    reader, writer = await asyncio.open_connection(host, port, local_addr=local)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


async def _finish(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def _exchange(port: int, payload: bytes, host: str = "127.0.0.1") -> bytes:
    """Send ``payload``, half-close, return everything the server sent until it closed."""
    reader, writer = await _connect(port, host)
    try:
        send_and_half_close(writer, payload)
        return await wait_closed_by_server(reader, within=5)
    finally:
        await _finish(writer)


# --- dual stack -------------------------------------------------------------------------


@needs_v6
async def test_one_call_listens_on_ipv6_and_ipv4() -> None:
    async with serving(host=None) as (server, port, rec):
        socks = server.sockets
        assert len(socks) == 1 and socks[0].family == socket.AF_INET6
        assert socks[0].getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        for host in ("127.0.0.1", "::1"):
            reader, writer = await _connect(port, host)
            client = writer.get_extra_info("sockname")[:2]
            writer.write_eof()
            # The v4 client is reported as plain IPv4, not ::ffff:127.0.0.1.
            assert await wait_closed_by_server(reader, 5) == f"{client[0]} {client[1]}\n".encode()
            await _finish(writer)
        assert [s.peer[0] for s in rec.seen] == ["127.0.0.1", "::1"]
        assert rec.seen[0].socket_peer[0] == "::ffff:127.0.0.1"


@needs_v6
async def test_split_stack_fallback_uses_one_port_for_both(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Force the path taken on systems without IPV6_V6ONLY=0 support; real sockets throughout.
    monkeypatch.setattr(socket, "has_dualstack_ipv6", lambda: False)
    async with serving(host=None) as (server, port, _rec):
        families = sorted(s.family for s in server.sockets)
        assert families == [socket.AF_INET, socket.AF_INET6]
        assert {s.getsockname()[1] for s in server.sockets} == {port}
        for host in ("127.0.0.1", "::1"):
            assert (await _exchange(port, b"x", host)).endswith(b"\nx")


async def test_specific_host_is_passed_through() -> None:
    async with serving(host="127.0.0.1", dualstack=True) as (server, port, _rec):
        assert [s.family for s in server.sockets] == [socket.AF_INET]
        assert (await _exchange(port, b"hi")).endswith(b"hi")


async def test_bad_arguments_fail_before_any_socket() -> None:
    async def cb(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise AssertionError("never called")

    before = open_fds()
    bad: list[dict[str, object]] = [
        {"proxy_protocol": "v3", "trusted_proxies": ["127.0.0.1"]},
        {"proxy_protocol": "v1"},  # nobody trusted: every connection would be refused
        {"trusted_proxies": ["127.0.0.1"]},  # without proxy_protocol
        {"proxy_protocol": "v1", "trusted_proxies": ["not-a-network"]},
        {"proxy_protocol": "v1", "trusted_proxies": [42]},
        {"proxy_protocol": "v1", "trusted_proxies": ["127.0.0.1"], "header_timeout": 0},
        {"proxy_protocol": "v1", "trusted_proxies": ["127.0.0.1"], "header_timeout": "5"},
        {"proxy_protocol": "v1", "trusted_proxies": ["127.0.0.1"], "max_header_size": 10},
        {"proxy_protocol": "v1", "trusted_proxies": ["127.0.0.1"], "max_pending_headers": 0},
        {"port": 70000},
        {"limit": 0},
        {"proxy_protocol": "v1", "trusted_proxies": ["127.0.0.1"], "ssl": True},
        {"proxy_protocol": "v1", "trusted_proxies": ["127.0.0.1"], "ssl_handshake_timeout": 5},
        {
            "proxy_protocol": "v1",
            "trusted_proxies": ["127.0.0.1"],
            "ssl": ssl.create_default_context(ssl.Purpose.CLIENT_AUTH),
            "ssl_handshake_timeout": -1,
        },
    ]
    for kwargs in bad:
        with pytest.raises((ValueError, TypeError)):
            await start_server(cb, "127.0.0.1", **kwargs)  # type: ignore[arg-type]
    assert open_fds() == before


# --- PROXY headers ----------------------------------------------------------------------

TRUST_LOOPBACK = {"trusted_proxies": ["127.0.0.0/8", "::1"]}


@pytest.mark.parametrize("version", ["v1", "v2", "auto"])
async def test_header_gives_the_real_peer_and_data_is_preserved(version: str) -> None:
    payload = os.urandom(200_000) + build_v1(("1.1.1.1", 1), ("2.2.2.2", 2))
    header = (
        build_v1(("203.0.113.7", 40001), ("198.51.100.1", 443))
        if version == "v1"
        else build_v2(("203.0.113.7", 40001), ("198.51.100.1", 443), tlvs=[(0xE0, b"t")])
    )
    async with serving(proxy_protocol=version, **TRUST_LOOPBACK) as (_s, port, rec):
        echoed = await _exchange(port, header + payload)
    assert echoed == b"203.0.113.7 40001\n" + payload
    (seen,) = rec.seen
    assert seen.peer == ("203.0.113.7", 40001) and seen.data == payload
    assert seen.header is not None and seen.header.destination == ("198.51.100.1", 443)
    if version != "v1":
        assert seen.header.get_tlv(0xE0) == b"t"


async def test_header_split_across_segments() -> None:
    header = build_v2(
        ("2001:db8::7", 5555), ("2001:db8::1", 80), tlvs=[(TLVType.AUTHORITY, b"a.example")]
    )
    async with serving(proxy_protocol="auto", **TRUST_LOOPBACK) as (_s, port, rec):
        reader, writer = await _connect(port)
        for i in range(0, len(header), 5):  # 5-byte segments with a pause between them
            writer.write(header[i : i + 5])
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        writer.write_eof()
        assert await wait_closed_by_server(reader, 5) == (
            b"2001:db8::7 5555\nGET / HTTP/1.0\r\n\r\n"
        )
        await _finish(writer)
    assert rec.seen[0].header is not None and rec.seen[0].header.authority == "a.example"


@pytest.mark.parametrize(
    "header",
    [
        build_v1(None, None),
        build_v2(None, None),
        build_v2(("1.2.3.4", 1), ("5.6.7.8", 2), command=0),  # type: ignore[arg-type]
    ],
    ids=["v1-unknown", "v2-unspec", "v2-local"],
)
async def test_local_and_unknown_fall_back_to_the_socket_peer(header: bytes) -> None:
    async with serving(proxy_protocol="auto", **TRUST_LOOPBACK) as (_s, port, rec):
        echoed = await _exchange(port, header + b"data")
    assert rec.seen[0].peer == rec.seen[0].socket_peer
    assert echoed.startswith(f"127.0.0.1 {rec.seen[0].socket_peer[1]}\n".encode())


async def test_forged_header_from_untrusted_peer_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    forged = build_v1(("8.8.8.8", 53), ("127.0.0.1", 80)) + b"payload"
    kwargs = {"proxy_protocol": "v1", "trusted_proxies": ["127.0.0.2"]}
    async with serving(**kwargs) as (_s, port, rec):
        with caplog.at_level(logging.WARNING, logger="apr_async.server"):
            assert await _exchange(port, forged) == b""
        assert rec.seen == []
        assert "untrusted peer" in caplog.text
        # The same header from the trusted source is accepted.
        reader, writer = await _connect(port, source="127.0.0.2")
        writer.write(forged)
        writer.write_eof()
        assert await wait_closed_by_server(reader, 5) == b"8.8.8.8 53\npayload"
        await _finish(writer)
    assert len(rec.seen) == 1


@needs_v6
async def test_ipv4_mapped_peer_matches_ipv4_networks() -> None:
    header = build_v1(("192.0.2.9", 9), ("192.0.2.1", 1))
    kwargs = {"proxy_protocol": "v1", "trusted_proxies": ["127.0.0.1/32"]}
    async with serving(host=None, **kwargs) as (_s, port, rec):
        # 127.0.0.1 arrives as ::ffff:127.0.0.1 on the dual-stack socket: trusted.
        assert await _exchange(port, header, "127.0.0.1") == b"192.0.2.9 9\n"
        # ::1 is not in the list: refused.
        assert await _exchange(port, header, "::1") == b""
    assert len(rec.seen) == 1


@pytest.mark.parametrize(
    "junk",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # no header at all
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  # malformed
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2" + b" " * 200,  # oversized v1
        build_v2(("1.2.3.4", 1), ("5.6.7.8", 2), tlvs=[(0xE0, bytes(5000))]),  # oversized v2
        build_v2(("1.2.3.4", 1), ("5.6.7.8", 2))[:-3],  # truncated, then EOF
    ],
    ids=["http", "bare-lf", "v1-too-long", "v2-too-long", "truncated"],
)
async def test_bad_headers_close_without_callback(junk: bytes) -> None:
    async with serving(proxy_protocol="auto", **TRUST_LOOPBACK) as (_s, port, rec):
        assert await _exchange(port, junk) == b""
    assert rec.seen == []


async def test_callback_errors_are_logged_and_close(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    async def cb(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("boom")

    server = await start_server(cb, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        with caplog.at_level(logging.ERROR, logger="apr_async.server"):
            assert await _exchange(port, b"x") == b""
            assert await _exchange(port, b"y") == b""  # the server keeps serving
    assert calls == 2 and "boom" in caplog.text


async def test_plain_function_callback() -> None:
    seen: list[tuple[str, int]] = []

    def cb(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(real_peername(writer))
        assert proxy_header(writer) is None
        writer.close()

    server = await start_server(cb, "127.0.0.1", 0)
    async with server:
        assert await _exchange(server.sockets[0].getsockname()[1], b"") == b""
    assert seen and seen[0][0] == "127.0.0.1"


# --- time and load ----------------------------------------------------------------------


async def test_incomplete_header_times_out() -> None:
    async with serving(proxy_protocol="v2", header_timeout=0.3, **TRUST_LOOPBACK) as (_s, p, r):
        reader, writer = await _connect(p)
        writer.write(build_v2(("1.2.3.4", 1), ("5.6.7.8", 2))[:20])  # and then nothing
        start = time.monotonic()
        assert await wait_closed_by_server(reader, 5) == b""
        elapsed = time.monotonic() - start
        await _finish(writer)
    assert 0.2 < elapsed < 3 and r.seen == []


async def test_slow_header_one_byte_at_a_time_is_cut_off() -> None:
    """Slowloris: a byte every 0.2 s never completes within a 1 s header timeout."""
    header = build_v1(("203.0.113.1", 1), ("203.0.113.2", 2))
    async with serving(proxy_protocol="v1", header_timeout=1.0, **TRUST_LOOPBACK) as (_s, p, r):
        reader, writer = await _connect(p)
        start, sent, closed = time.monotonic(), 0, False
        for byte in header:
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                closed = True
                break
            sent += 1
            try:
                async with asyncio.timeout(0.2):
                    if not await reader.read(1):
                        closed = True
                        break
            except TimeoutError:
                continue
            except ConnectionError:  # closed with our unread byte pending: an RST
                closed = True
                break
        elapsed = time.monotonic() - start
        await _finish(writer)
    assert closed and r.seen == []
    assert sent < len(header) and 0.8 < elapsed < 3


async def test_slow_but_timely_header_is_accepted() -> None:
    header = build_v2(("203.0.113.1", 1), ("203.0.113.2", 2))
    async with serving(proxy_protocol="v2", header_timeout=5, **TRUST_LOOPBACK) as (_s, p, r):
        reader, writer = await _connect(p)
        for byte in header:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.write(b"ok")
        writer.write_eof()
        assert await wait_closed_by_server(reader, 5) == b"203.0.113.1 1\nok"
        await _finish(writer)
    assert len(r.seen) == 1


async def test_flood_of_idle_connections_is_bounded() -> None:
    """200 connections that never send a header: at most 50 wait, all are gone in time."""
    before = open_fds()
    opts = {"header_timeout": 0.5, "max_pending_headers": 50, **TRUST_LOOPBACK}
    async with serving(proxy_protocol="auto", **opts) as (_server, port, rec):
        conns = [await _connect(port) for _ in range(200)]
        start = time.monotonic()

        async def closed_after(reader: asyncio.StreamReader) -> float:
            await wait_closed_by_server(reader, 5)
            return time.monotonic() - start

        delays = await asyncio.gather(*(closed_after(r) for r, _w in conns))
        for _r, w in conns:
            await _finish(w)
    # The 150 over the limit are closed at once; the rest when their header time is up.
    assert sum(d < 0.4 for d in delays) >= 150
    assert max(delays) < 3
    assert rec.seen == []
    await asyncio.sleep(0)  # let the transports' connection_lost callbacks run
    assert open_fds() == before


async def test_flood_of_valid_connections_all_served() -> None:
    async with serving(proxy_protocol="auto", **TRUST_LOOPBACK) as (_s, port, rec):

        async def one(i: int) -> bytes:
            src = (f"10.0.{i // 250}.{i % 250 + 1}", 1000 + i)
            maker = build_v1 if i % 2 else build_v2
            return await _exchange(port, maker(src, ("10.255.0.1", 443)) + str(i).encode())

        replies = await asyncio.gather(*(one(i) for i in range(200)))
    for i, reply in enumerate(replies):
        assert reply == f"10.0.{i // 250}.{i % 250 + 1} {1000 + i}\n{i}".encode()
    assert len(rec.seen) == 200


async def test_cancelled_header_phase_closes_the_connection() -> None:
    async with serving(proxy_protocol="v1", header_timeout=30, **TRUST_LOOPBACK) as (_s, p, r):
        reader, writer = await _connect(p)
        writer.write(b"PROXY TCP4 ")
        await writer.drain()
        await asyncio.sleep(0.1)
        deadlines = [
            t
            for t in asyncio.all_tasks()
            if getattr(t.get_coro(), "__qualname__", "").endswith("HeaderProtocol._deadline")
        ]
        assert len(deadlines) == 1
        deadlines[0].cancel()
        assert await wait_closed_by_server(reader, 5) == b""
        await _finish(writer)
    assert r.seen == []


def test_loop_shutdown_closes_connections_in_the_header_phase() -> None:
    """asyncio.run's final cancellation must close them: no transport outlives the loop."""
    before = open_fds()
    client = socket.socket()

    async def scenario() -> int:
        server = await start_server(
            lambda r, w: None, "127.0.0.1", proxy_protocol="v2", trusted_proxies="127.0.0.1"
        )
        port: int = server.sockets[0].getsockname()[1]
        await asyncio.get_running_loop().sock_connect(client, ("127.0.0.1", port))
        client.send(build_v2(("1.2.3.4", 1), ("5.6.7.8", 2))[:10])
        await asyncio.sleep(0.1)
        server.close()  # closes the listener only, as asyncio.Server does
        return port

    with client:
        client.setblocking(False)
        asyncio.run(scenario())
        client.setblocking(True)
        client.settimeout(5)
        assert client.recv(10) == b""  # the server side was closed at shutdown
    assert open_fds() == before


# --- fuzzing the server -------------------------------------------------------------------

ports = st.integers(0, 0xFFFF)
_headers = st.one_of(
    st.tuples(st.sampled_from([build_v1, build_v2]), st.integers(0, 2**32 - 1), ports).map(
        lambda t: t[0]((str(ipaddress.IPv4Address(t[1])), t[2]), ("127.0.0.1", 80))
    ),
    st.just(build_v1(None, None)),
    st.just(build_v2(None, None, crc=True)),
)


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    raw = bytearray(draw(_headers))
    for _ in range(draw(st.integers(0, 3))):
        raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    return bytes(raw[: draw(st.integers(0, len(raw)))]) + draw(st.binary(max_size=40))


_fuzz_payloads = st.one_of(
    st.binary(max_size=200), _mutated(), st.tuples(_headers, st.binary()).map(b"".join)
)


async def _serve_one(payload: bytes, half_close: bool) -> None:
    loop_errors: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _l, ctx: loop_errors.append(ctx))
    before = open_fds()
    try:
        expected = parse_header(payload)
    except ProxyProtocolError:
        expected = None
    opts = {"header_timeout": 0.3, **TRUST_LOOPBACK}
    async with serving(proxy_protocol="auto", **opts) as (_s, port, rec):
        reader, writer = await _connect(port)
        if half_close:
            send_and_half_close(writer, payload)
        else:
            writer.write(payload)
        start = time.monotonic()
        echoed = b""
        with contextlib.suppress(ConnectionError):
            await writer.drain()
            echoed = await wait_closed_by_server(reader, 3)
        elapsed = time.monotonic() - start
        await _finish(writer)
    await asyncio.sleep(0)
    if expected is None:
        assert echoed == b"" and rec.seen == []
        assert elapsed < 0.3 + 1.5  # never hangs past the header timeout
    else:
        peer = expected.source or rec.seen[0].socket_peer
        rest = payload[expected.length :]
        assert echoed == f"{peer[0]} {peer[1]}\n".encode() + rest
    assert open_fds() == before
    assert loop_errors == []


@settings(max_examples=80, deadline=None)
@given(_fuzz_payloads)
def test_arbitrary_bytes_never_crash_or_leak(payload: bytes) -> None:
    """The server agrees with the sans-IO parser on every input, and cleans up after it."""
    asyncio.run(_serve_one(payload, half_close=True))


@settings(max_examples=8, deadline=None)
@given(st.one_of(st.binary(min_size=1, max_size=60), _headers.map(lambda h: h[: len(h) // 2])))
def test_idle_after_arbitrary_bytes_never_hangs(payload: bytes) -> None:
    """Without EOF from the client the header timeout must still end it (incomplete input)."""
    with contextlib.suppress(ProxyProtocolError):
        parse_header(payload)
        return  # a complete header would start the application's exchange
    asyncio.run(_serve_one(payload, half_close=False))


def test_works_on_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        header = build_v2(("198.51.100.3", 3333), ("198.51.100.4", 80))
        async with serving(proxy_protocol="auto", **TRUST_LOOPBACK) as (_s, port, rec):
            assert await _exchange(port, header + b"tail") == b"198.51.100.3 3333\ntail"
            assert await _exchange(port, b"GET /") == b""
        assert len(rec.seen) == 1

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


# --- logging under a flood ----------------------------------------------------------------


def test_log_limiter_keeps_a_budget_and_reports_what_it_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    logger = logging.getLogger("apr_async.server.test_limiter")
    limiter = LogLimiter(logger, lambda: now[0], burst=3, interval=10.0)
    with caplog.at_level(logging.INFO, logger=logger.name):
        for i in range(8):
            limiter(logging.WARNING, "refused %d", i)
        assert [r.getMessage() for r in caplog.records] == ["refused 0", "refused 1", "refused 2"]
        now[0] += 9.9
        limiter(logging.WARNING, "refused %d", 8)  # same window: still dropped
        now[0] += 0.2
        limiter(logging.WARNING, "refused %d", 9)
    assert [r.getMessage() for r in caplog.records][3:] == [
        "6 more refused or failed connections were not logged in 10 s",
        "refused 9",
    ]


async def test_a_flood_of_untrusted_peers_is_logged_a_bounded_number_of_times(
    caplog: pytest.LogCaptureFixture,
) -> None:
    forged = build_v1(("8.8.8.8", 53), ("127.0.0.1", 80))
    kwargs = {"proxy_protocol": "v1", "trusted_proxies": ["127.0.0.2"]}
    with caplog.at_level(logging.INFO, logger="apr_async.server"):
        async with serving(**kwargs) as (_s, port, rec):
            replies = await asyncio.gather(*(_exchange(port, forged) for _ in range(60)))
    assert replies == [b""] * 60 and rec.seen == []
    refusals = [r for r in caplog.records if "untrusted peer" in r.getMessage()]
    assert 1 <= len(refusals) <= 10
