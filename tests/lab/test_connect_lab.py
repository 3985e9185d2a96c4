"""Happy Eyeballs over ranked pairs against every lab pathology, with real sockets.

Each test switches the module's lab into a scenario, then runs the client side inside the
client namespace (``lab.run_in``): names resolve through the lab DNS server, the server side
announces the peer address it saw (``PEER <ip> ... LOCAL <ip> ...``), so each test can tell
which (source, destination) pair won. Every pathology runs through ``open_connection``,
``create_connection`` and ``connect_socket``, and with TLS (TCP race then TLS, and the TLS
race) against a TLS server in the server namespace that uses a throw-away test CA.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from apr_async.config import Config
from apr_async.connect.api import (
    ContextRecorder,
    connect_socket,
    create_connection,
    open_connection,
)
from apr_async.lab import EchoServer, Lab, PathMode, Scenario
from apr_async.probe import default as service
from apr_async.resolve.pairs import PairContext
from apr_async.resolve.resolver import Resolver
from apr_async.tools import resolve_tool

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="module")]

GUARD = 10.0  # the timeout= every connect gets: a hang fails the test instead of the suite


# -- TLS material and server -------------------------------------------------------------------


def make_test_ca(directory: Path, names: Sequence[str]) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for ``names``; (ca, cert, key) paths."""
    ca_key, ca_cert = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ext = directory / "san.ext"
    sans = []
    for name in names:
        try:
            ipaddress.ip_address(name)
            sans.append(f"IP:{name}")
        except ValueError:
            sans.append(f"DNS:{name}")
    ext.write_text(f"subjectAltName={','.join(sans)}\nbasicConstraints=CA:FALSE\n")

    def run(cmd: str) -> None:
        subprocess.run([resolve_tool("openssl"), *cmd.split()], check=True,
                       capture_output=True, timeout=60)

    ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
    run(f"req -x509 {ec} -keyout {ca_key} -out {ca_cert} -days 2 -subj /CN=apr-lab-CA")
    run(f"req {ec} -keyout {key} -out {csr} -subj /CN=apr-lab-server")
    run(
        f"x509 -req -in {csr} -CA {ca_cert} -CAkey {ca_key} -CAcreateserial -out {cert}"
        f" -days 2 -extfile {ext}"
    )
    return ca_cert, cert, key


def _unmap(ip: str) -> str:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


@dataclass
class Servers:
    plain: EchoServer
    tls_port: int
    ca: Path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def servers(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Servers]:
    names = [*lab.names.__dict__.values(), "first3dead.lab.test"]
    addresses = [*lab.server.v4, *lab.server.v6, lab.server.direct_link_local]
    ca, cert, key = make_test_ca(tmp_path_factory.mktemp("labca"), [*names, *addresses])
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(cert), str(key))
    writers: list[asyncio.StreamWriter] = []

    async def greet_and_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        peer, local = writer.get_extra_info("peername"), writer.get_extra_info("sockname")
        try:
            writer.write(f"PEER {_unmap(peer[0])} {peer[1]} LOCAL {_unmap(local[0])}\n".encode())
            while data := await reader.read(4096):
                writer.write(data)
        except OSError:
            pass
        finally:
            writer.close()

    # A socket made in the server's namespace, served from this test loop.
    sock = lab.socket("server", socket.AF_INET6)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", 0))
    tls = await asyncio.start_server(greet_and_echo, sock=sock, ssl=server_ctx)
    plain = await lab.start_echo_server(announce_peer=True)
    try:
        yield Servers(plain, sock.getsockname()[1], ca)
    finally:
        tls.close()
        for writer in writers:
            writer.close()
        await tls.wait_closed()
        await lab.stop_echo_server(plain)


# -- the client side (runs inside the client namespace) ---------------------------------------


@dataclass
class Outcome:
    peer: str  # the client address the server saw
    local: str  # the server address it reached
    attempts: list[tuple[str, str, bool, int | None]] = field(default_factory=list)

    @property
    def tried(self) -> list[str]:
        """Destinations in attempt-outcome order."""
        return [dst for _, dst, _, _ in self.attempts]


class Tee:
    """Keeps every outcome for the test and feeds the context's tables (warm starts)."""

    def __init__(self, context: PairContext) -> None:
        self.inner = ContextRecorder(context)
        self.calls: list[tuple[str, str, bool, int | None]] = []

    def record_attempt(
        self, pair: Any, port: int, ok: bool, rtt: float | None, errno: int | None
    ) -> None:
        self.calls.append((pair.source[0], pair.destination[0], ok, errno))
        self.inner.record_attempt(pair, port, ok, rtt, errno)


class Collect(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = b""
        loop = asyncio.get_running_loop()
        self.line: asyncio.Future[bytes] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    def data_received(self, data: bytes) -> None:
        self.data += data
        if b"\n" in self.data and not self.line.done():
            self.line.set_result(self.data.split(b"\n", 1)[0])

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.line.done():
            self.line.set_exception(ConnectionError("closed before the greeting"))
        self.closed.set_result(None)


@dataclass
class Client:
    """Per-run client settings: the pair context, the TLS mode and the CA file."""

    ctx: PairContext
    tls: str
    ca: str


async def _connect_once(
    api: str, host: str, port: int, client: Client, recorder: Tee, **kw: Any
) -> str:
    tls, ca = client.tls, client.ca
    kw = {"context": client.ctx, "service": recorder, "timeout": GUARD, **kw}
    if tls != "none":
        kw["ssl"] = ssl.create_default_context(cafile=ca)
        kw["race_tls"] = tls == "race"
    if api == "open_connection":
        reader, writer = await open_connection(host, port, **kw)
        try:
            if tls != "none":
                assert writer.get_extra_info("ssl_object") is not None
            return (await reader.readline()).decode()
        finally:
            writer.close()
            await writer.wait_closed()
    if api == "create_connection":
        transport, protocol = await create_connection(Collect, host, port, **kw)
        try:
            if tls != "none":
                assert transport.get_extra_info("ssl_object") is not None
            return (await asyncio.wait_for(protocol.line, GUARD)).decode()
        finally:
            transport.close()
            # The loop ends with this coroutine: let the transport really close first.
            await asyncio.wait_for(protocol.closed, GUARD)
    assert tls == "none"
    sock = await connect_socket(host, port, **kw)
    try:
        loop = asyncio.get_running_loop()
        data = b""
        while b"\n" not in data:
            chunk = await loop.sock_recv(sock, 4096)
            assert chunk
            data += chunk
        return data.decode()
    finally:
        sock.close()


async def client_run(
    api: str,
    host: str,
    port: int,
    dns: list[str],
    *,
    tls: str = "none",
    ca: str = "",
    warm_up: Sequence[dict[str, Any]] = (),
    **kw: Any,
) -> Outcome:
    """Connect (after optional warm-up connects with the same context); what happened."""
    resolver = Resolver(dns, hosts_path=None, timeout=2.0)
    ctx = PairContext(resolver=resolver, snapshot_max_age=0.0)
    client = Client(ctx, tls, ca)
    try:
        for extra in warm_up:
            with_warm = {**kw, **extra}
            await _connect_once(api, host, port, client, Tee(ctx), **with_warm)
        recorder = Tee(ctx)
        line = await _connect_once(api, host, port, client, recorder, **kw)
        words = line.split()
        assert words[0] == "PEER", line
        return Outcome(words[1], words[words.index("LOCAL") + 1], recorder.calls)
    finally:
        await resolver.close()


# -- parametrization -----------------------------------------------------------------------------

VARIANTS = [
    ("open_connection", "none"),
    ("create_connection", "none"),
    ("connect_socket", "none"),
    ("open_connection", "tls"),
    ("create_connection", "race"),
]


@pytest.fixture(params=VARIANTS, ids=[f"{a}-{t}" for a, t in VARIANTS])
def variant(request: pytest.FixtureRequest) -> tuple[str, str]:
    return request.param  # type: ignore[no-any-return]


async def run(
    lab: Lab, servers: Servers, variant: tuple[str, str], host: str, **kw: Any
) -> Outcome:
    api, tls = variant
    port = servers.plain.port if tls == "none" else servers.tls_port
    return await lab.run_in(
        "client", client_run, api, host, port, lab.dns_servers, tls=tls, ca=str(servers.ca), **kw
    )


# -- every pathology -------------------------------------------------------------------------------


async def test_healthy_prefers_ipv6_gua(
    healthy_lab: Lab, servers: Servers, variant: tuple[str, str]
) -> None:
    lab = healthy_lab
    out = await run(lab, servers, variant, lab.names.dual)
    assert (out.peer, out.local) == (lab.client.gua, lab.server.v6[0])
    assert [ok for *_, ok, _ in out.attempts] == [True]


async def test_blackholed_ipv6_falls_back_then_goes_straight_to_ipv4(
    healthy_lab: Lab, servers: Servers, variant: tuple[str, str]
) -> None:
    lab = healthy_lab
    await lab.set_scenario(Scenario.v6_blackholed())
    cold = await run(lab, servers, variant, lab.names.dual)
    assert (cold.peer, cold.local) == (lab.client.v4, lab.server.v4[0])
    # The IPv6 attempt waited past its delay and lost: reported as timed out.
    assert (lab.client.gua, lab.server.v6[0], False, errno.ETIMEDOUT) in cold.attempts
    warm = await run(lab, servers, variant, lab.names.dual, warm_up=[{}])
    assert (warm.peer, warm.local) == (lab.client.v4, lab.server.v4[0])
    assert warm.tried == [lab.server.v4[0]]  # the failing IPv6 pair was not tried at all


@pytest.mark.parametrize(
    ("mode", "code"),
    [(PathMode.REJECT_RST, errno.ECONNREFUSED), (PathMode.REJECT_UNREACHABLE, errno.EHOSTUNREACH)],
)
async def test_rejected_ipv6_falls_back_at_once(
    healthy_lab: Lab, servers: Servers, variant: tuple[str, str], mode: PathMode, code: int
) -> None:
    lab = healthy_lab
    await lab.set_scenario(Scenario.v6_rejected(mode))
    out = await run(lab, servers, variant, lab.names.dual)
    assert (out.peer, out.local) == (lab.client.v4, lab.server.v4[0])
    assert out.attempts[0] == (lab.client.gua, lab.server.v6[0], False, code)


async def test_slower_ipv6_wins_cold_and_loses_once_measured(
    healthy_lab: Lab, servers: Servers, variant: tuple[str, str]
) -> None:
    lab = healthy_lab
    await lab.set_scenario(Scenario.v6_slower(0.05))
    cold = await run(lab, servers, variant, lab.names.dual)
    assert cold.local == lab.server.v6[0]  # 50 ms is well within the 250 ms attempt delay
    # Once both families were measured (passive samples), the faster IPv4 goes first.
    families = [{"family": socket.AF_INET6}, {"family": socket.AF_INET}]
    warm = await run(lab, servers, variant, lab.names.dual, warm_up=families)
    assert (warm.peer, warm.local) == (lab.client.v4, lab.server.v4[0]), warm
    assert warm.tried == [lab.server.v4[0]], warm


async def test_ula_source_trap_uses_the_gua_source(
    healthy_lab: Lab, servers: Servers, variant: tuple[str, str]
) -> None:
    lab = healthy_lab
    await lab.set_scenario(Scenario.ula_source_trap())
    out = await run(lab, servers, variant, lab.names.v6_only)
    assert (out.peer, out.local) == (lab.client.gua, lab.server.v6[0])
    assert out.attempts[0][0] == lab.client.gua


async def test_several_dead_addresses(
    healthy_lab: Lab, servers: Servers, variant: tuple[str, str]
) -> None:
    lab = healthy_lab
    out = await run(lab, servers, variant, lab.names.dead_v6)
    assert (out.peer, out.local) == (lab.client.v4, lab.server.v4[0])
    out = await run(lab, servers, variant, lab.names.part_dead)
    assert out.local in (lab.server.v4[0], lab.server.v6[0])
    assert out.peer in (lab.client.v4, lab.client.gua)


async def test_delayed_aaaa_does_not_hold_ipv4_back(
    healthy_lab: Lab, servers: Servers, variant: tuple[str, str]
) -> None:
    lab = healthy_lab
    out = await run(lab, servers, variant, lab.names.slow_aaaa)
    assert (out.peer, out.local) == (lab.client.v4, lab.server.v4[0])
    assert out.tried == [lab.server.v4[0]]


async def test_ipv4_only_client(
    healthy_lab: Lab, servers: Servers, variant: tuple[str, str]
) -> None:
    lab = healthy_lab
    await lab.set_scenario(Scenario.ipv4_only_client())
    out = await run(lab, servers, variant, lab.names.dual)
    assert (out.peer, out.local) == (lab.client.v4, lab.server.v4[0])
    assert out.tried == [lab.server.v4[0]]  # no unusable IPv6 pair tried first


async def test_ipv6_only_client(
    healthy_lab: Lab, servers: Servers, variant: tuple[str, str]
) -> None:
    lab = healthy_lab
    await lab.set_scenario(Scenario.ipv6_only_client())
    out = await run(lab, servers, variant, lab.names.dual)
    assert (out.peer, out.local) == (lab.client.gua, lab.server.v6[0])
    assert out.tried == [lab.server.v6[0]]


async def test_link_local_with_zone(
    healthy_lab: Lab, servers: Servers, variant: tuple[str, str]
) -> None:
    lab = healthy_lab
    host = f"{lab.server.direct_link_local}%{lab.client.direct_ifname}"
    out = await run(lab, servers, variant, host)
    assert (out.peer, out.local) == (lab.client.direct_link_local, lab.server.direct_link_local)


async def test_nxdomain_is_gaierror(healthy_lab: Lab, servers: Servers) -> None:
    lab = healthy_lab
    with pytest.raises(socket.gaierror) as info:
        await run(lab, servers, ("open_connection", "none"), lab.names.nxdomain)
    assert info.value.errno == socket.EAI_NONAME


# -- the module-level call feeds the lazily started default service ------------------------------


async def default_service_run(cfg: Config, host: str, port: int) -> tuple[bool, str, list[Any]]:
    """``open_connection`` with neither ``service`` nor ``context``, as the first call."""
    service.configure(cfg)
    try:
        assert service.current_service() is None
        reader, writer = await open_connection(host, port, timeout=GUARD)
        line = (await reader.readline()).decode()
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0)  # (a success is recorded before the hand-over)
        svc = service.current_service()
        running = svc is not None and svc.running
        return running, line, svc.measurements() if svc is not None else []
    finally:
        await service.aclose_default()
        service.configure()


async def test_module_level_call_starts_and_feeds_the_default_service(
    healthy_lab: Lab, servers: Servers
) -> None:
    lab = healthy_lab
    # No probe target and no gateway: whatever the service knows, the connection told it.
    cfg = Config(
        targets=(),
        probe_gateways=False,
        nat64_discovery=False,
        nameservers=tuple(lab.dns_servers),
        dns_timeout=0.5,
        probe_interval=3600.0,
        autostart=True,
    )
    running, line, measured = await lab.run_in(
        "client", default_service_run, cfg, lab.names.dual, servers.plain.port
    )
    assert running
    words = line.split()
    peer, local = words[1], words[words.index("LOCAL") + 1]
    assert (peer, local) == (lab.client.gua, lab.server.v6[0])
    passive = [m for m in measured if m.methods == ("passive",)]
    assert [(m.source, m.destination, m.ok) for m in passive] == [(peer, local, True)]
    assert passive[0].rtt is not None
