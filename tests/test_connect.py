"""open_connection / create_connection / connect_socket on loopback, with real sockets.

Pathologies that need no lab are built on loopback: a closed port refuses; a listener with a
zero backlog whose queue is already full silently drops further SYNs (a blackhole); a TCP
server that never answers a ClientHello stalls TLS. Names resolve through a DNS server on
loopback (never the host's resolver).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import ipaddress
import logging
import os
import pickle
import random
import resource
import socket
import ssl
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from apr_async.connect.api import (
    ConnectPair,
    ContextRecorder,
    DirectPair,
    PairSource,
    connect_socket,
    create_connection,
    open_connection,
    race,
)
from apr_async.connect.errors import AllAttemptsFailedError
from apr_async.connect.race import untried_alternatives
from apr_async.core.ranking import AddrPair
from apr_async.core.schedule import Schedule
from apr_async.lab.dnsserver import DNSServer, ZoneEntry
from apr_async.resolve.pairs import PairContext, get_addr_pairs
from apr_async.resolve.resolver import Resolver
from apr_async.tools import resolve_tool

V6 = socket.AF_INET6
V4 = socket.AF_INET
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux value


# -- helpers ---------------------------------------------------------------------------------------


def open_fds() -> frozenset[tuple[str, str]]:
    """The open descriptors, each with what it points to (``socket:[inode]``, a path...).

    Compare with ``<=``: nothing opened since the snapshot is still open. Comparing counts also
    failed when an *older* descriptor closed meanwhile (something of an earlier test collected
    or closed by a background thread during this one), which is no leak of the code under test.
    """
    fds: set[tuple[str, str]] = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
            fds.add((fd, os.readlink(f"/proc/self/fd/{fd}")))
    return frozenset(fds)


def pair(host: str, port: int, source: str | None = None, **meta: Any) -> ConnectPair:
    """A pair to ``host``:``port`` from ``source`` (``None``: the kernel's choice)."""
    family = V6 if ":" in host else V4
    dst: tuple[Any, ...] = (host, port, 0, 0) if family == V6 else (host, port)
    if source is None and not meta:
        return DirectPair(family, None, dst)
    src_ip = source or ("::1" if family == V6 else "127.0.0.1")
    src: tuple[Any, ...] = (src_ip, 0, 0, 0) if family == V6 else (src_ip, 0)
    return AddrPair(family, src, dst, **meta)


def source_of(*pairs: ConnectPair, delay: float = 0.0) -> PairSource:
    """A pair source answering both families (after ``delay``) with the given ranking."""

    async def source(
        host: str, port: int, family: int
    ) -> AsyncIterator[tuple[int, Sequence[ConnectPair]]]:
        if delay:
            await asyncio.sleep(delay)
        families = [V6, V4] if family == 0 else [family]
        for index, fam in enumerate(families):
            yield fam, list(pairs) if index == 0 else []

    return source


class Recorder:
    """An AttemptRecorder that keeps what it is told."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, int, bool, float | None, int | None]] = []

    def record_attempt(
        self, pair: Any, port: int, ok: bool, rtt: float | None, errno: int | None
    ) -> None:
        self.calls.append((pair, port, ok, rtt, errno))

    def by_pair(self) -> dict[Any, tuple[bool, float | None, int | None]]:
        return {p: (ok, rtt, err) for p, _, ok, rtt, err in self.calls}


def pending_timers() -> int:
    """Timers scheduled on the running loop and not cancelled (asyncio has no public API for
    this: read the loop's heap)."""
    scheduled = asyncio.get_running_loop()._scheduled  # type: ignore[attr-defined]
    return sum(not handle.cancelled() for handle in scheduled)


async def settle() -> None:
    """Let closing transports and cancelled tasks finish their callbacks."""
    for _ in range(5):
        await asyncio.sleep(0.01)


class Servers:
    """Listeners on 127.0.0.1 and ::1 that greet with ``hello <peer ip>\\n`` then echo."""

    def __init__(self) -> None:
        self.servers: list[asyncio.Server] = []
        self.port = 0
        self.peers: list[str] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")[0]
        self.peers.append(peer)
        self.writers.append(writer)
        try:
            writer.write(f"hello {peer}\n".encode())
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def start(self, ssl_ctx: ssl.SSLContext | None = None) -> Servers:
        for _ in range(20):
            first = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=ssl_ctx)
            port = first.sockets[0].getsockname()[1]
            try:
                second = await asyncio.start_server(self._handle, "::1", port, ssl=ssl_ctx)
            except OSError:
                first.close()
                await first.wait_closed()
                continue
            self.servers = [first, second]
            self.port = port
            return self
        raise RuntimeError("no port free on both 127.0.0.1 and ::1")

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for writer in self.writers:
            writer.close()
        for server in self.servers:
            await server.wait_closed()


@pytest_asyncio.fixture
async def servers() -> AsyncIterator[Servers]:
    s = await Servers().start()
    yield s
    await s.close()


def closed_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on (bound then released)."""
    family = V6 if ":" in host else V4
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Blackhole:
    """A listener with a full zero-length accept queue: further SYNs are silently dropped."""

    def __init__(self, host: str) -> None:
        family = V6 if ":" in host else V4
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.bind((host, 0))
        self.listener.listen(0)
        self.port = int(self.listener.getsockname()[1])
        self.filler = socket.create_connection((host, self.port))

    def close(self) -> None:
        self.filler.close()
        self.listener.close()


@pytest.fixture
def blackhole6() -> Iterator[Blackhole]:
    hole = Blackhole("::1")
    yield hole
    hole.close()


@pytest.fixture
def blackhole4() -> Iterator[Blackhole]:
    hole = Blackhole("127.0.0.1")
    yield hole
    hole.close()


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
    greeting = (await reader.readline()).decode().strip()
    writer.write(b"ping\n")
    assert await reader.readline() == b"ping\n"
    writer.close()
    await writer.wait_closed()
    return greeting


# -- TLS material ----------------------------------------------------------------------------------


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def make_test_ca(directory: Path, names: Sequence[str]) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for ``names`` (DNS names or IPs), via openssl.

    Returns (ca_cert, server_cert, server_key).
    """
    ca_key, ca_cert = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ext = directory / "san.ext"
    sans = ",".join(f"IP:{n}" if _is_ip(n) else f"DNS:{n}" for n in names)
    ext.write_text(f"subjectAltName={sans}\nbasicConstraints=CA:FALSE\n")

    def run(*argv: str) -> None:
        subprocess.run([resolve_tool("openssl"), *argv], check=True, capture_output=True,
                       timeout=60)

    run(
        *f"req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {ca_key}"
        f" -out {ca_cert} -days 2 -subj /CN=apr-test-CA".split()
    )
    run(
        *f"req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {key} -out {csr}"
        f" -subj /CN=apr-test-server".split()
    )
    run(
        *f"x509 -req -in {csr} -CA {ca_cert} -CAkey {ca_key} -CAcreateserial -out {cert}"
        f" -days 2 -extfile {ext}".split()
    )
    return ca_cert, cert, key


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_test_ca(tmp_path_factory.mktemp("ca"), ["localhost", "127.0.0.1", "::1"])


@pytest.fixture
def client_ctx(tls_files: tuple[Path, Path, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tls_files[0]))


@pytest.fixture
def server_ctx(tls_files: tuple[Path, Path, Path]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(tls_files[1]), str(tls_files[2]))
    return ctx


@pytest_asyncio.fixture
async def tls_servers(server_ctx: ssl.SSLContext) -> AsyncIterator[Servers]:
    s = await Servers().start(server_ctx)
    yield s
    await s.close()


@pytest_asyncio.fixture
async def stall_server() -> AsyncIterator[int]:
    """Accepts TCP on ::1 and never says a word (a TLS handshake stalls there)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()  # until the client goes away
        writer.close()

    server = await asyncio.start_server(hold, "::1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    for writer in held:
        writer.close()
    await server.wait_closed()


# -- healthy paths ---------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
async def test_open_connection_numeric_and_hosts_file(servers: Servers, host: str) -> None:
    reader, writer = await open_connection(host, servers.port)
    greeting = await exchange(reader, writer)
    assert greeting.startswith("hello ")
    if host != "localhost":
        assert greeting == f"hello {host}"


async def test_create_connection_returns_transport_and_protocol(servers: Servers) -> None:
    received: asyncio.Queue[bytes] = asyncio.Queue()

    class Proto(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            received.put_nowait(data)

    transport, protocol = await create_connection(Proto, "::1", servers.port)
    try:
        assert isinstance(protocol, Proto)
        assert transport.get_extra_info("peername")[0] == "::1"
        assert (await received.get()).startswith(b"hello ::1")
    finally:
        transport.close()


async def test_connect_socket_is_connected_non_blocking_and_ours(servers: Servers) -> None:
    sock = await connect_socket("127.0.0.1", servers.port)
    try:
        assert not sock.getblocking()
        assert sock.getpeername() == ("127.0.0.1", servers.port)
        loop = asyncio.get_running_loop()
        data = await loop.sock_recv(sock, 100)
        assert data.startswith(b"hello 127.0.0.1")
    finally:
        sock.close()


async def test_each_attempt_is_bound_to_its_source(servers: Servers) -> None:
    source = source_of(pair("127.0.0.1", servers.port, "127.0.0.42"))
    reader, writer = await open_connection("h", servers.port, pair_source=source)
    assert await exchange(reader, writer) == "hello 127.0.0.42"


async def test_source_bind_leaves_the_port_to_connect(servers: Servers) -> None:
    # IP_BIND_ADDRESS_NO_PORT: the port is picked by connect() with the whole 4-tuple in
    # mind, so many attempts from one source do not use up its ephemeral ports.
    source = source_of(pair("127.0.0.1", servers.port, "127.0.0.42"))
    sock = await connect_socket("h", servers.port, pair_source=source)
    try:
        assert sock.getsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT) == 1
        assert sock.getsockname()[0] == "127.0.0.42" and sock.getsockname()[1] != 0
    finally:
        sock.close()


async def test_local_addr_overrides_the_source(servers: Servers) -> None:
    reader, writer = await open_connection("127.0.0.1", servers.port, local_addr=("127.0.0.9", 0))
    assert await exchange(reader, writer) == "hello 127.0.0.9"


async def test_family_restricts_pairs(servers: Servers) -> None:
    source = source_of(pair("::1", servers.port), pair("127.0.0.1", servers.port))
    reader, writer = await open_connection("h", servers.port, pair_source=source, family=V4)
    assert await exchange(reader, writer) == "hello 127.0.0.1"


# -- failures --------------------------------------------------------------------------------------


async def test_all_refused_is_one_oserror_that_is_connection_refused() -> None:
    port6, port4 = closed_port("::1"), closed_port()
    source = source_of(pair("::1", port6), pair("127.0.0.1", port4))
    with pytest.raises(AllAttemptsFailedError) as info:
        await connect_socket("example.test", 4242, pair_source=source)
    err = info.value
    assert isinstance(err, ConnectionRefusedError) and isinstance(err, OSError)
    assert err.errno == errno.ECONNREFUSED
    assert [p.family for p, _ in err.attempts] == [V6, V4]
    text = str(err)
    assert "example.test" in text and "4242" in text
    assert f"[::1]:{port6}" in text and f"127.0.0.1:{port4}" in text
    assert isinstance(err.group, ExceptionGroup)
    try:
        raise err.group
    except* ConnectionRefusedError as group:
        assert len(group.exceptions) == 2


async def test_all_errors_raises_the_group() -> None:
    source = source_of(pair("127.0.0.1", closed_port()))
    with pytest.raises(ExceptionGroup) as info:
        await connect_socket("h", 1, pair_source=source, all_errors=True)
    assert info.group_contains(ConnectionRefusedError)


async def test_mixed_errors_have_no_errno() -> None:
    # 198.51.100.7 (TEST-NET-2) is not a local address: bind() fails, nothing is sent.
    source = source_of(
        pair("127.0.0.1", closed_port()), pair("127.0.0.1", 9, source="198.51.100.7")
    )
    with pytest.raises(AllAttemptsFailedError) as info:
        await connect_socket("h", 1, pair_source=source)
    err = info.value
    assert err.errno is None
    assert not isinstance(err, ConnectionRefusedError)
    assert sorted(e.errno or 0 for e in err.exceptions) == sorted(
        [errno.ECONNREFUSED, errno.EADDRNOTAVAIL]
    )


async def test_no_descriptor_left_fails_every_attempt_without_a_record() -> None:
    # socket() itself fails (EMFILE): each attempt fails at once, as one AllAttemptsFailedError
    # naming every pair; the paths are not to blame, so nothing is recorded against them.
    source = source_of(pair("::1", 1), pair("127.0.0.1", 1))
    recorder = Recorder()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[socket.socket] = []
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (max(map(int, os.listdir("/proc/self/fd"))) + 2, hard)
    )
    try:
        with contextlib.suppress(OSError):
            while True:
                fillers.append(socket.socket())
        with pytest.raises(AllAttemptsFailedError) as info:
            await connect_socket("h", 1, pair_source=source, service=recorder)
    finally:
        for filler in fillers:
            filler.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert info.value.errno == errno.EMFILE and len(info.value.attempts) == 2
    assert recorder.calls == []


async def test_tls_empty_server_hostname_means_no_name(
    tls_servers: Servers, tls_files: tuple[Path, Path, Path]
) -> None:
    # As in asyncio: server_hostname="" sends no name (here with name checks off).
    ctx = ssl.create_default_context(cafile=str(tls_files[0]))
    ctx.check_hostname = False
    reader, writer = await open_connection(
        "127.0.0.1", tls_servers.port, ssl=ctx, server_hostname=""
    )
    assert await exchange(reader, writer) == "hello 127.0.0.1"


async def test_refusal_falls_back_at_once_and_is_recorded(servers: Servers) -> None:
    dead = pair("::1", closed_port("::1"), rtt=None)
    good = pair("127.0.0.1", servers.port, rtt=None)
    recorder = Recorder()
    reader, writer = await open_connection(
        "h", servers.port, pair_source=source_of(dead, good), service=recorder
    )
    assert await exchange(reader, writer) == "hello 127.0.0.1"
    outcomes = recorder.by_pair()
    ok, rtt, err = outcomes[dead]
    assert not ok and err == errno.ECONNREFUSED and rtt is not None and rtt >= 0
    ok, rtt, err = outcomes[good]
    assert ok and err is None and rtt is not None and rtt >= 0


async def test_blackhole_loses_to_the_next_pair_and_is_reported(
    servers: Servers, blackhole6: Blackhole
) -> None:
    hole = pair("::1", blackhole6.port, rtt=None)
    good = pair("127.0.0.1", servers.port, rtt=None)
    recorder = Recorder()
    fds = open_fds()
    reader, writer = await open_connection(
        "h",
        servers.port,
        pair_source=source_of(hole, good),
        service=recorder,
        happy_eyeballs_delay=0.05,
    )
    assert await exchange(reader, writer) == "hello 127.0.0.1"
    # The blackholed attempt waited past its delay, then lost: a likely broken path.
    assert recorder.by_pair()[hole] == (False, None, errno.ETIMEDOUT)
    await settle()
    assert open_fds() <= fds


async def test_failing_pair_goes_last(servers: Servers, blackhole6: Blackhole) -> None:
    hole = pair("::1", blackhole6.port, failing=True)
    good = pair("127.0.0.1", servers.port, rtt=0.001)
    recorder = Recorder()
    reader, writer = await open_connection(
        "h", servers.port, pair_source=source_of(hole, good), service=recorder
    )
    assert await exchange(reader, writer) == "hello 127.0.0.1"
    assert [c[0] for c in recorder.calls] == [good]  # the failing pair was never tried


class UntriedRecorder(Recorder):
    """A Recorder that also takes the pairs a won race never tried."""

    def __init__(self) -> None:
        super().__init__()
        self.untried: list[tuple[list[Any], int]] = []

    def record_untried(self, pairs: Sequence[Any], port: int) -> None:
        self.untried.append((list(pairs), port))


def test_untried_alternatives_are_the_best_unmeasured_pair_of_each_losing_family() -> None:
    a6, b6 = pair("2001:db8::1", 443), pair("2001:db8::2", 443)
    a4, b4 = pair("192.0.2.1", 443), pair("192.0.2.2", 443)
    schedule: Schedule[ConnectPair] = Schedule()
    schedule.answers_all([a6, b6, a4, b4], now=0.0)
    assert untried_alternatives(schedule) == []  # nobody won yet
    schedule.attempt_succeeded(a6, now=0.05)
    assert untried_alternatives(schedule) == [a4]  # not b6: the winner's family is measured
    assert untried_alternatives(schedule, per_family=2) == [a4, b4]
    assert untried_alternatives(schedule, per_family=0) == []
    # a pair in flight when the race was won was cut short: unmeasured, and it ranked first
    schedule = Schedule()
    schedule.answers_all([a6, b6, a4, b4], now=0.0)
    assert [type(a).__name__ for a in schedule.timer(0.25)] == ["StartAttempt", "SetTimer"]
    assert schedule.in_flight == (a6, a4)
    schedule.attempt_succeeded(a6, now=0.26)
    assert untried_alternatives(schedule, per_family=2) == [a4, b4]
    # IPv4 winning leaves IPv6 unmeasured; a race that failed has nothing to say
    schedule = Schedule()
    schedule.answers_all([a4, a6], now=0.0)
    schedule.attempt_succeeded(a4, now=0.01)
    assert untried_alternatives(schedule) == [a6]
    schedule = Schedule()
    schedule.answers_all([a6], now=0.0)
    schedule.attempt_failed(a6, now=0.01)
    assert schedule.done and untried_alternatives(schedule) == []


@pytest.mark.parametrize("tls", ["none", "race_tls"])
async def test_won_race_reports_the_untried_pair_of_the_other_family(
    servers: Servers, tls_servers: Servers, client_ctx: ssl.SSLContext, tls: str
) -> None:
    srv = servers if tls == "none" else tls_servers
    six = pair("::1", srv.port, rtt=None)
    four, four_too = pair("127.0.0.1", srv.port, rtt=None), pair("127.0.0.2", srv.port, rtt=None)
    recorder = UntriedRecorder()
    kw: dict[str, Any] = {"ssl": client_ctx, "race_tls": True} if tls == "race_tls" else {}
    reader, writer = await open_connection(
        "localhost", srv.port, pair_source=source_of(six, four, four_too), service=recorder, **kw
    )
    assert await exchange(reader, writer) == "hello ::1"
    # IPv6 won within the attempt delay: IPv4 was never tried, and the best IPv4 pair is
    # handed over (one per family), on the application's port
    assert [c[0] for c in recorder.calls] == [six]
    assert recorder.untried == [([four], srv.port)]


async def test_untried_pairs_go_nowhere_without_a_taker(
    servers: Servers, caplog: pytest.LogCaptureFixture
) -> None:
    six, four = pair("::1", servers.port, rtt=None), pair("127.0.0.1", servers.port, rtt=None)
    # a service without record_untried (the protocol's method is optional): nothing breaks
    plain = Recorder()
    sock = await connect_socket("h", servers.port, pair_source=source_of(six, four), service=plain)
    sock.close()
    await settle()  # the winner is recorded once the caller has its socket
    assert [c[0] for c in plain.calls] == [six]
    # the plain context recorder takes none: without a service nothing would probe them
    assert not hasattr(ContextRecorder(PairContext()), "record_untried")

    # a taker that fails is logged; the application still gets its connection
    class Broken(UntriedRecorder):
        def record_untried(self, pairs: Sequence[Any], port: int) -> None:
            raise RuntimeError("bookkeeping bug")

    with caplog.at_level(logging.ERROR, logger="apr_async.connect"):
        sock = await connect_socket(
            "h", servers.port, pair_source=source_of(six, four), service=Broken()
        )
    sock.close()
    assert "record_untried failed" in caplog.text


async def test_timeout_bounds_everything(blackhole6: Blackhole, blackhole4: Blackhole) -> None:
    six, four = pair("::1", blackhole6.port), pair("127.0.0.1", blackhole4.port)
    fds, tasks = open_fds(), len(asyncio.all_tasks())
    with pytest.raises(TimeoutError) as info:
        await connect_socket(
            "h", 1, pair_source=source_of(six, four), timeout=0.3, happy_eyeballs_delay=0.05
        )
    # The timeout tells what became of every attempt, like the all-failed error.
    error = info.value
    assert isinstance(error, AllAttemptsFailedError)
    assert error.errno == errno.ETIMEDOUT
    assert [p for p, _ in error.attempts] == [six, four]
    assert all(type(exc) is TimeoutError for exc in error.exceptions)
    text = str(error)
    assert "h port 1" in text and "timed out after 0.3 s" in text
    assert f"[::1]:{blackhole6.port}" in text and f"127.0.0.1:{blackhole4.port}" in text
    await settle()
    assert open_fds() <= fds and len(asyncio.all_tasks()) == tasks


async def test_timeout_keeps_the_attempts_that_failed_before_it(blackhole6: Blackhole) -> None:
    refused, hole = pair("127.0.0.1", closed_port()), pair("::1", blackhole6.port)
    with pytest.raises(TimeoutError) as info:
        await connect_socket("h", 1, pair_source=source_of(refused, hole), timeout=0.2)
    error = info.value
    assert isinstance(error, AllAttemptsFailedError) and error.errno == errno.ETIMEDOUT
    assert [(p, type(exc)) for p, exc in error.attempts] == [
        (refused, ConnectionRefusedError),
        (hole, TimeoutError),
    ]
    assert not isinstance(error, ConnectionRefusedError)
    # Pickled and back (to a process pool, say), it is the same kind of error.
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, TimeoutError) and str(copy) == str(error)


async def test_timeout_on_the_one_pair_path(blackhole4: Blackhole) -> None:
    with pytest.raises(TimeoutError) as info:
        await open_connection("127.0.0.1", blackhole4.port, timeout=0.1)
    error = info.value
    assert isinstance(error, AllAttemptsFailedError)
    assert [p.destination for p, _ in error.attempts] == [("127.0.0.1", blackhole4.port)]
    assert f"127.0.0.1:{blackhole4.port}" in str(error)


async def test_timeout_before_any_answer_says_so() -> None:
    with pytest.raises(TimeoutError) as info:
        await connect_socket("h", 1, pair_source=source_of(pair("::1", 1), delay=60), timeout=0.05)
    assert isinstance(info.value, AllAttemptsFailedError) and info.value.attempts == ()
    assert "no attempt made" in str(info.value)


async def test_gaierror_from_the_source_propagates() -> None:
    async def source(
        host: str, port: int, family: int
    ) -> AsyncIterator[tuple[int, Sequence[ConnectPair]]]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        yield  # pragma: no cover

    with pytest.raises(socket.gaierror) as info:
        await connect_socket("nowhere.test", 80, pair_source=source)
    assert info.value.errno == socket.EAI_NONAME


async def test_no_pair_at_all() -> None:
    with pytest.raises(AllAttemptsFailedError) as info:
        await connect_socket("h", 80, pair_source=source_of())
    assert info.value.attempts == ()
    assert "no address pair" in str(info.value)


async def test_outcomes_feed_the_context_tables(servers: Servers) -> None:
    # Without a service, refusals mark the pair failing and a success records its RTT.
    ctx = PairContext()
    port = closed_port()
    for _ in range(2):
        with pytest.raises(ConnectionRefusedError):
            await connect_socket("127.0.0.1", port, context=ctx)
    await settle()
    ranked = await get_addr_pairs("127.0.0.1", port, context=ctx)
    assert ranked and all(p.failing for p in ranked)
    sock = await connect_socket("127.0.0.1", servers.port, context=ctx)
    sock.close()
    await settle()
    ranked = await get_addr_pairs("127.0.0.1", servers.port, context=ctx)
    assert ranked[0].rtt is not None and not ranked[0].failing


# -- names through a DNS server on loopback --------------------------------------------------------


@pytest_asyncio.fixture
async def dns_context(servers: Servers) -> AsyncIterator[PairContext]:
    zone = {
        "dual.test": ZoneEntry(a=("127.0.0.1",), aaaa=("::1",), ttl=60),
        "v4only.test": ZoneEntry(a=("127.0.0.1",), ttl=60),
        "slowaaaa.test": ZoneEntry(a=("127.0.0.1",), aaaa=("::1",), delay_aaaa=0.3),
        "quickaaaa.test": ZoneEntry(a=("127.0.0.1",), aaaa=("::1",), delay_aaaa=0.02),
    }
    async with DNSServer(zone, "127.0.0.1", 0) as dns:
        resolver = Resolver([f"127.0.0.1:{dns.port}"], hosts_path=None, timeout=2.0)
        try:
            yield PairContext(resolver=resolver)
        finally:
            await resolver.close()


async def test_names_resolve_and_connect(servers: Servers, dns_context: PairContext) -> None:
    for name in ("dual.test", "v4only.test"):
        reader, writer = await open_connection(name, servers.port, context=dns_context)
        assert (await exchange(reader, writer)).startswith("hello ")


async def test_nxdomain_is_gaierror(dns_context: PairContext) -> None:
    with pytest.raises(socket.gaierror) as info:
        await open_connection("nxdomain.test", 80, context=dns_context)
    assert info.value.errno == socket.EAI_NONAME


async def test_aaaa_within_resolution_delay_goes_first(
    servers: Servers, dns_context: PairContext
) -> None:
    recorder = Recorder()
    reader, writer = await open_connection(
        "quickaaaa.test", servers.port, context=dns_context, service=recorder
    )
    assert await exchange(reader, writer) == "hello ::1"
    assert recorder.calls[0][0].family == V6


async def test_late_aaaa_does_not_hold_ipv4_back(
    servers: Servers, dns_context: PairContext
) -> None:
    recorder = Recorder()
    reader, writer = await open_connection(
        "slowaaaa.test", servers.port, context=dns_context, service=recorder
    )
    assert await exchange(reader, writer) == "hello 127.0.0.1"
    assert [c[0].family for c in recorder.calls] == [V4]


# -- TLS -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("race_tls", [False, True])
async def test_tls_round_trip(
    tls_servers: Servers, client_ctx: ssl.SSLContext, race_tls: bool
) -> None:
    reader, writer = await open_connection(
        "localhost", tls_servers.port, ssl=client_ctx, race_tls=race_tls
    )
    assert writer.get_extra_info("ssl_object") is not None
    assert (await exchange(reader, writer)).startswith("hello ")


async def test_tls_numeric_host_checks_the_ip(
    tls_servers: Servers, client_ctx: ssl.SSLContext
) -> None:
    reader, writer = await open_connection("::1", tls_servers.port, ssl=client_ctx)
    assert await exchange(reader, writer) == "hello ::1"


async def test_tls_bad_name_default_mode_raises_ssl_error(
    tls_servers: Servers, client_ctx: ssl.SSLContext
) -> None:
    fds = open_fds()
    with pytest.raises(ssl.SSLCertVerificationError):
        await open_connection(
            "127.0.0.1", tls_servers.port, ssl=client_ctx, server_hostname="wrong.test"
        )
    await settle()
    assert open_fds() <= fds


async def test_tls_bad_name_race_mode_ends_the_race_at_once(
    tls_servers: Servers, client_ctx: ssl.SSLContext, blackhole4: Blackhole
) -> None:
    # A certificate that does not fit the name is the name's problem, not the path's: the
    # race ends with it instead of waiting for the blackholed pair until the timeout.
    bad = pair("::1", tls_servers.port)
    source = source_of(bad, pair("127.0.0.1", blackhole4.port))
    fds = open_fds()
    with pytest.raises(AllAttemptsFailedError) as info:
        await open_connection(
            "h",
            tls_servers.port,
            ssl=client_ctx,
            server_hostname="wrong.test",
            race_tls=True,
            pair_source=source,
            happy_eyeballs_delay=0.01,
            timeout=30,
        )
    error = info.value
    assert isinstance(error, ssl.SSLCertVerificationError)
    assert not isinstance(error, TimeoutError)
    assert [p for p, _ in error.attempts] == [bad]
    assert error.verify_code == error.exceptions[0].verify_code != 0
    assert "wrong.test" in str(error) and f"[::1]:{tls_servers.port}" in str(error)
    await settle()
    assert open_fds() <= fds


async def test_tls_failure_on_one_path_is_kept_when_the_race_times_out(
    servers: Servers, client_ctx: ssl.SSLContext, blackhole4: Blackhole
) -> None:
    # A server that speaks no TLS may be a middlebox on that path: the race goes on, and the
    # timeout's error still says what the TLS attempt ran into.
    plain, hole = pair("::1", servers.port), pair("127.0.0.1", blackhole4.port)
    with pytest.raises(TimeoutError) as info:
        await open_connection(
            "localhost",
            servers.port,
            ssl=client_ctx,
            race_tls=True,
            pair_source=source_of(plain, hole),
            happy_eyeballs_delay=0.01,
            timeout=0.3,
        )
    error = info.value
    assert isinstance(error, AllAttemptsFailedError)
    assert [(p, type(exc)) for p, exc in error.attempts] == [
        (plain, ssl.SSLError),
        (hole, TimeoutError),
    ]


async def test_tls_stall_loses_the_race_with_race_tls(
    tls_servers: Servers, client_ctx: ssl.SSLContext, stall_server: int
) -> None:
    # TCP to the stalling server connects first; only TLS completion decides the winner.
    source = source_of(pair("::1", stall_server), pair("127.0.0.1", tls_servers.port))
    made: list[asyncio.BaseProtocol] = []

    class Proto(asyncio.Protocol):
        def __init__(self) -> None:
            self.data = b""
            self.got = asyncio.Event()
            made.append(self)

        def data_received(self, data: bytes) -> None:
            self.data += data
            self.got.set()

    transport, protocol = await create_connection(
        Proto,
        "localhost",
        tls_servers.port,
        ssl=client_ctx,
        race_tls=True,
        happy_eyeballs_delay=0.05,
        pair_source=source,
    )
    try:
        await asyncio.wait_for(protocol.got.wait(), 5)
        assert protocol.data.startswith(b"hello 127.0.0.1")
        assert made == [protocol]  # the factory ran once, for the winner
    finally:
        transport.close()


async def test_tls_stall_without_race_tls_times_out(
    client_ctx: ssl.SSLContext, stall_server: int
) -> None:
    fds = open_fds()
    stalled = pair("::1", stall_server)
    with pytest.raises(TimeoutError) as info:
        await open_connection(
            "localhost",
            stall_server,
            ssl=client_ctx,
            timeout=0.3,
            pair_source=source_of(stalled),
        )
    # Connected, then abandoned in the handshake: the pair is in the error.
    assert isinstance(info.value, AllAttemptsFailedError)
    assert [p for p, _ in info.value.attempts] == [stalled]
    await settle()
    assert open_fds() <= fds


async def test_race_tls_banner_reaches_a_buffered_protocol(
    tls_servers: Servers, client_ctx: ssl.SSLContext
) -> None:
    class Buffered(asyncio.BufferedProtocol):
        def __init__(self) -> None:
            self.buf = bytearray(3)  # tiny on purpose: replay must loop
            self.data = b""
            self.got = asyncio.Event()

        def get_buffer(self, sizehint: int) -> bytearray:
            return self.buf

        def buffer_updated(self, nbytes: int) -> None:
            self.data += bytes(self.buf[:nbytes])
            if self.data.endswith(b"\n"):
                self.got.set()

    transport, protocol = await create_connection(
        Buffered,
        "127.0.0.1",
        tls_servers.port,
        ssl=client_ctx,
        race_tls=True,
        server_hostname="localhost",
    )
    try:
        await asyncio.wait_for(protocol.got.wait(), 5)
        assert protocol.data == b"hello 127.0.0.1\n"
    finally:
        transport.close()


# -- bad arguments ---------------------------------------------------------------------------------


BAD_CALLS: list[tuple[dict[str, Any], type[Exception]]] = [
    ({"host": ""}, ValueError),
    ({"host": "a\x00b"}, ValueError),
    ({"host": 42}, TypeError),
    ({"port": 70000}, ValueError),
    ({"port": -1}, ValueError),
    ({"port": 1.5}, TypeError),
    ({"family": 99}, ValueError),
    ({"happy_eyeballs_delay": -0.1}, ValueError),
    ({"happy_eyeballs_delay": float("nan")}, ValueError),
    ({"interleave": 0}, ValueError),
    ({"interleave": "2"}, TypeError),
    ({"timeout": 0}, ValueError),
    ({"timeout": "1"}, TypeError),
    ({"local_addr": "127.0.0.1"}, TypeError),
    ({"service": object()}, TypeError),
    ({"ssl": "yes"}, TypeError),
    ({"server_hostname": "x"}, ValueError),
    ({"ssl_handshake_timeout": 1.0}, ValueError),
    ({"race_tls": True}, ValueError),
    ({"ssl": True, "ssl_handshake_timeout": -1}, ValueError),
    ({"limit": 0}, ValueError),
    ({"bogus": 1}, TypeError),
    ({"proto": socket.IPPROTO_UDP}, ValueError),
    ({"sock": socket.socket}, ValueError),
    ({"context": "ctx"}, TypeError),
]


@pytest.mark.parametrize(("change", "error"), BAD_CALLS)
async def test_bad_arguments_raise_before_any_io(
    change: dict[str, Any], error: type[Exception]
) -> None:
    called: list[str] = []

    def spy(host: str, port: int, family: int) -> AsyncIterator[tuple[int, Sequence[Any]]]:
        called.append(host)
        raise AssertionError("resolution must not start")

    kwargs: dict[str, Any] = {"host": "example.test", "port": 443, "pair_source": spy}
    kwargs.update(change)
    if kwargs.get("sock") is socket.socket:
        kwargs["sock"] = socket.socket()
    try:
        with pytest.raises(error):
            await open_connection(**kwargs)
    finally:
        if isinstance(kwargs.get("sock"), socket.socket):
            kwargs["sock"].close()
    assert called == []


@pytest.mark.parametrize(
    ("host", "family"),
    [("::1", socket.AF_INET), ("fe80::1%lo", socket.AF_INET), ("127.0.0.1", socket.AF_INET6)],
)
async def test_literal_of_the_other_family_is_the_stdlib_gaierror(host: str, family: int) -> None:
    # What socket.getaddrinfo (hence asyncio) raises here, before any I/O.
    with pytest.raises(socket.gaierror) as stdlib:
        socket.getaddrinfo(host, 80, family, socket.SOCK_STREAM)
    with pytest.raises(socket.gaierror) as in_asyncio:
        await asyncio.open_connection(host, 80, family=family)
    assert in_asyncio.value.errno == stdlib.value.errno

    def spy(host: str, port: int, family: int) -> AsyncIterator[tuple[int, Sequence[Any]]]:
        raise AssertionError("resolution must not start")

    calls = [
        lambda: open_connection(host, 80, family=family, pair_source=spy),
        lambda: create_connection(asyncio.Protocol, host, 80, family=family, pair_source=spy),
        lambda: connect_socket(host, 80, family=family, pair_source=spy),
    ]
    for call in calls:
        with pytest.raises(socket.gaierror) as ours:
            await call()
        assert ours.value.errno == stdlib.value.errno
        assert ours.value.strerror == stdlib.value.strerror


async def test_protocol_factory_must_be_callable() -> None:
    with pytest.raises(TypeError):
        await create_connection(None, "h", 1)  # type: ignore[arg-type]


# -- races between winners, and cancellation -------------------------------------------------------


async def test_late_second_winner_is_closed(servers: Servers) -> None:
    # Zero delay: both attempts start together and both connect; one must be closed.
    source = source_of(pair("::1", servers.port), pair("127.0.0.1", servers.port))
    fds = open_fds()
    sock = await connect_socket("h", servers.port, pair_source=source, happy_eyeballs_delay=0)
    sock.close()
    await settle()
    assert open_fds() <= fds
    assert sorted(servers.peers) == ["127.0.0.1", "::1"]


@pytest.mark.parametrize("where", ["resolution", "attempts", "tls"])
async def test_cancel_anywhere_leaves_nothing(
    where: str,
    blackhole6: Blackhole,
    blackhole4: Blackhole,
    stall_server: int,
    client_ctx: ssl.SSLContext,
) -> None:
    if where == "resolution":
        source = source_of(pair("::1", blackhole6.port), delay=60)
        kwargs: dict[str, Any] = {}
    elif where == "attempts":
        # Cancelled at 100 ms: two attempts in flight, the third one's timer (120 ms) pending.
        source = source_of(
            pair("::1", blackhole6.port),
            pair("127.0.0.1", blackhole4.port),
            pair("::1", blackhole6.port, source="::1"),
        )
        kwargs = {"happy_eyeballs_delay": 0.06}
    else:
        source = source_of(pair("::1", stall_server))
        kwargs = {"ssl": client_ctx, "server_hostname": "localhost"}
    fds, tasks, timers = open_fds(), len(asyncio.all_tasks()), pending_timers()
    for race_tls in [False, True] if where == "tls" else [False]:
        if race_tls:
            kwargs["race_tls"] = True
        task = asyncio.create_task(open_connection("h", 1, pair_source=source, **kwargs))
        await asyncio.sleep(0.1)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pending_timers() <= timers  # the race's timer went with it, at once
    await settle()
    assert open_fds() <= fds
    assert len(asyncio.all_tasks()) == tasks


async def test_tls_cancelled_at_any_moment_leaks_nothing(
    tls_servers: Servers, client_ctx: ssl.SSLContext
) -> None:
    # Cancelled after a random number of loop turns: before, during or right after the TCP
    # connect, the TLS handshake, the hand-over or the race's clean-up. Whatever was
    # connected by then must be closed, not left to the garbage collector.
    rng = random.Random(11)
    both = source_of(pair("::1", tls_servers.port), pair("127.0.0.1", tls_servers.port))
    await settle()
    fds, tasks = open_fds(), len(asyncio.all_tasks())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        async def one(i: int) -> None:
            kwargs: dict[str, Any] = {"ssl": client_ctx, "race_tls": i % 2 == 1}
            if i % 4 >= 2:  # a race of two pairs that both connect
                kwargs.update(pair_source=both, happy_eyeballs_delay=0)
                kwargs["server_hostname"] = "localhost"
            task = asyncio.ensure_future(open_connection("127.0.0.1", tls_servers.port, **kwargs))
            for _ in range(rng.randrange(30)):
                await asyncio.sleep(0)
            task.cancel()
            try:
                _, writer = await task
            except asyncio.CancelledError:
                return
            writer.close()

        for start in range(0, 400, 50):
            await asyncio.gather(*(one(i) for i in range(start, start + 50)))
        await settle()
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert open_fds() <= fds
    assert len(asyncio.all_tasks()) == tasks


async def test_winner_is_discarded_when_cancelled_during_the_clean_up() -> None:
    # The race has its winner and waits for a loser to finish cancelling: a cancellation
    # arriving then must not drop the winner on the floor.
    a, b = pair("::1", 1), pair("127.0.0.1", 2)
    loser_cancelling = asyncio.Event()
    discarded: list[str] = []

    async def attempt(p: ConnectPair) -> str:
        if p == a:
            return "winner"
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            loser_cancelling.set()
            await asyncio.sleep(0.01)  # a loser that takes a while to let go
            raise
        return "loser"  # pragma: no cover

    async def answers() -> AsyncIterator[tuple[int, Sequence[ConnectPair]]]:
        yield socket.AF_UNSPEC, [b, a]

    schedule: Schedule[ConnectPair] = Schedule((V6, V4), happy_eyeballs_delay=0)
    task = asyncio.create_task(race(schedule, answers(), attempt, discarded.append))
    await asyncio.wait_for(loser_cancelling.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert discarded == ["winner"]


# -- other event loops -----------------------------------------------------------------------------


async def _scenario_suite() -> list[str]:
    """A few behaviours run under a given loop; returns what happened."""
    out: list[str] = []
    srv = await Servers().start()
    hole = Blackhole("::1")
    try:
        reader, writer = await open_connection("::1", srv.port)
        out.append(await exchange(reader, writer))
        source = source_of(pair("::1", hole.port), pair("127.0.0.1", srv.port))
        reader, writer = await open_connection(
            "h", srv.port, pair_source=source, happy_eyeballs_delay=0.03
        )
        out.append(await exchange(reader, writer))
        try:
            await connect_socket("127.0.0.1", closed_port())
        except ConnectionRefusedError:
            out.append("refused")
        task = asyncio.ensure_future(
            connect_socket("h", 1, pair_source=source_of(pair("::1", hole.port)))
        )
        await asyncio.sleep(0.05)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            out.append("cancelled")
        sock = await connect_socket(
            "h",
            srv.port,
            pair_source=source_of(pair("::1", srv.port), pair("127.0.0.1", srv.port)),
            happy_eyeballs_delay=0,
        )
        sock.close()
        out.append("two winners")
    finally:
        hole.close()
        await srv.close()
    await settle()
    return out


EXPECTED_SUITE = ["hello ::1", "hello 127.0.0.1", "refused", "cancelled", "two winners"]


def test_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")
    # libuv opens a process-wide pipe the first time a loop is made: not ours to count.
    uvloop.new_event_loop().close()
    fds = open_fds()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(_scenario_suite()) == EXPECTED_SUITE
    assert open_fds() <= fds


EAGER_SCRIPT = """
import asyncio, os, sys
sys.path.insert(0, sys.argv[1])
import test_connect as t
async def main():
    asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)
    fds = t.open_fds()
    out = await t._scenario_suite()
    assert out == t.EXPECTED_SUITE, out
    assert t.open_fds() <= fds, (t.open_fds() - fds)
    print("EAGER OK")
asyncio.run(main())
"""


def _python_with_eager_tasks() -> str | None:
    """This interpreter if it has eager tasks, else ``$APR_ASYNC_EAGER_PYTHON`` (a Python >= 3.12
    with the project's dependencies installed), else the ``.venv-eager`` that ``dev.py test``
    builds, else a pyenv 3.12+ (needs the same)."""
    if hasattr(asyncio, "eager_task_factory"):
        return sys.executable
    configured = os.environ.get("APR_ASYNC_EAGER_PYTHON")
    if configured:
        return configured
    side_venv = Path(__file__).resolve().parent.parent / ".venv-eager" / "bin" / "python"
    if side_venv.exists():
        return str(side_venv)
    for path in sorted(Path("/root/.pyenv/versions").glob("3.1[2-9]*/bin/python3")):
        return str(path)
    return None


def test_eager_task_factory() -> None:
    """asyncio.eager_task_factory (Python 3.12+): run the suite under it in a subprocess
    whose interpreter has it, with this project's venv packages on the path."""
    python = _python_with_eager_tasks()
    if python is None:
        pytest.skip("no Python >= 3.12 available for asyncio.eager_task_factory")
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root / "src")
    result = subprocess.run(
        [python, "-W", "error::ResourceWarning", "-c", EAGER_SCRIPT, str(root / "tests")],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    if result.returncode != 0 and "ModuleNotFoundError" in result.stderr:
        pytest.skip(f"the eager-capable Python lacks a dependency: {result.stderr[-300:]}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "EAGER OK" in result.stdout


def test_uvloop_tls_and_tls_race(tls_files: tuple[Path, Path, Path]) -> None:
    uvloop = pytest.importorskip("uvloop")
    uvloop.new_event_loop().close()
    ca, cert, key = tls_files

    async def body() -> list[str]:
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(str(cert), str(key))
        client_ctx = ssl.create_default_context(cafile=str(ca))
        srv = await Servers().start(server_ctx)
        out = []
        try:
            for race_tls in (False, True):
                reader, writer = await open_connection(
                    "localhost", srv.port, ssl=client_ctx, race_tls=race_tls
                )
                out.append(await exchange(reader, writer))
            with pytest.raises(AllAttemptsFailedError) as info:
                await open_connection(
                    "127.0.0.1",
                    srv.port,
                    ssl=client_ctx,
                    server_hostname="bad.test",
                    race_tls=True,
                )
            assert isinstance(info.value, ssl.SSLCertVerificationError)
        finally:
            await srv.close()
        await settle()
        return out

    fds = open_fds()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        greetings = runner.run(body())
    assert len(greetings) == 2 and all(g.startswith("hello ") for g in greetings)
    assert open_fds() <= fds
