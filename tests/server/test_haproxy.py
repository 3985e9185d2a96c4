"""A real HAProxy on loopback in front of start_server: send-proxy and send-proxy-v2."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

import pytest

from apr_async.server.proxy_header import Command, ProxyFamily, TLVType

from .conftest import (
    free_port,
    needs_haproxy,
    needs_v6,
    run_haproxy,
    send_and_half_close,
    serving,
    wait_closed_by_server,
)

pytestmark = needs_haproxy

CONFIG = """
global
    maxconn 512
defaults
    mode tcp
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend fe_v1
    bind 127.0.0.1:{fe_v1}
    {bind6_v1}
    default_backend be_v1
frontend fe_v2
    bind 127.0.0.1:{fe_v2}
    {bind6_v2}
    unique-id-format %ci:%cp
    default_backend be_v2
backend be_v1
    server app 127.0.0.1:{app} send-proxy
backend be_v2
    server app 127.0.0.1:{app} send-proxy-v2 proxy-v2-options crc32c,unique-id {check}
"""


@contextlib.contextmanager
def haproxy(tmp_path: Path, app: int, *, check: bool = False) -> dict[str, int]:  # type: ignore[misc]
    ports = {"fe_v1": free_port(), "fe_v2": free_port()}
    v6 = {"bind6_v1": "", "bind6_v2": ""}
    if socket.has_ipv6:
        v6 = {
            "bind6_v1": f"bind ipv6@::1:{ports['fe_v1']}",
            "bind6_v2": f"bind ipv6@::1:{ports['fe_v2']}",
        }
    config = CONFIG.format(
        app=app, check="check check-send-proxy inter 200ms" if check else "", **ports, **v6
    )
    with run_haproxy(config, tmp_path, list(ports.values())):
        yield ports


async def _through(port: int, host: str, source: str, data: bytes) -> tuple[tuple[str, int], bytes]:
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    client = writer.get_extra_info("sockname")[:2]
    try:
        send_and_half_close(writer, data)
        return client, await wait_closed_by_server(reader, within=10)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


CLIENTS = [
    pytest.param("127.0.0.1", "127.0.0.2", id="ipv4-127.0.0.2"),
    pytest.param("::1", "::1", id="ipv6-::1", marks=needs_v6),
]


@pytest.mark.parametrize(("frontend", "version"), [("fe_v1", 1), ("fe_v2", 2)])
@pytest.mark.parametrize(("host", "source"), CLIENTS)
async def test_callback_sees_the_real_client(
    tmp_path: Path, frontend: str, version: int, host: str, source: str
) -> None:
    # Only HAProxy's address (127.0.0.1) is trusted; the client's is never the socket peer.
    async with serving(proxy_protocol="auto", trusted_proxies=["127.0.0.1"]) as (_s, app, rec):
        with haproxy(tmp_path, app) as ports:
            client, echoed = await _through(ports[frontend], host, source, b"hello\x00world")
    assert echoed == f"{client[0]} {client[1]}\n".encode() + b"hello\x00world"
    (seen,) = rec.seen
    assert seen.peer == client and seen.socket_peer[0] == "127.0.0.1"
    assert seen.header is not None and seen.header.version == version
    assert seen.header.destination == (host, ports[frontend])
    if version == 2:
        # proxy-v2-options crc32c,unique-id: the checksum was verified, the TLVs are kept.
        assert seen.header.get_tlv(TLVType.CRC32C) is not None
        assert seen.header.unique_id == f"{client[0]}:{client[1]}".encode()


@needs_v6
async def test_dual_stack_server_trusts_haproxy_via_its_ipv4_network(tmp_path: Path) -> None:
    kwargs = {"proxy_protocol": "v2", "trusted_proxies": ["127.0.0.0/8"]}
    async with serving(host=None, **kwargs) as (_s, app, rec):
        with haproxy(tmp_path, app) as ports:
            client, echoed = await _through(ports["fe_v2"], "::1", "::1", b"x")
    assert echoed == f"::1 {client[1]}\nx".encode()
    assert rec.seen[0].socket_peer[0] == "::ffff:127.0.0.1"


async def test_untrusted_haproxy_is_refused(tmp_path: Path) -> None:
    kwargs = {"proxy_protocol": "auto", "trusted_proxies": ["127.0.0.2"]}
    async with serving(**kwargs) as (_s, app, rec):
        with haproxy(tmp_path, app) as ports:
            _client, echoed = await _through(ports["fe_v1"], "127.0.0.1", "127.0.0.1", b"x")
    assert echoed == b"" and rec.seen == []


async def test_health_checks_arrive_as_local(tmp_path: Path) -> None:
    """check-send-proxy with send-proxy-v2 sends LOCAL headers: use the real endpoints."""
    async with serving(proxy_protocol="v2", trusted_proxies=["127.0.0.1"]) as (_s, app, rec):
        with haproxy(tmp_path, app, check=True):
            async with asyncio.timeout(10):
                while not rec.seen:
                    await rec.arrived.wait()
    header = rec.seen[0].header
    assert header is not None and header.command is Command.LOCAL
    assert header.family is ProxyFamily.UNSPEC and header.is_local
    assert rec.seen[0].peer == rec.seen[0].socket_peer
