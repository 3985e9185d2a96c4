"""The :class:`Lab`: a disposable client -- router -- server topology in network namespaces.

::

    async with Lab() as lab:
        server = await lab.start_echo_server()
        await lab.set_scenario(Scenario.v6_blackholed())
        result = await lab.run_in("client", my_coroutine_function, lab.server.v6[0])

Nothing is linked to the host's namespace, so no packet can leave the lab. Closing the lab (or
an exception, a cancellation or KeyboardInterrupt anywhere, including during set-up) removes
the namespaces and stops every thread and process the lab started.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Literal, Self

from apr_async.lab.availability import lab_unavailable_reason
from apr_async.lab.cleanup import delete_namespaces, lab_namespaces, sweep_stale_labs
from apr_async.lab.delayline import DelayLine, open_tun
from apr_async.lab.dnsserver import DNSServer, LabNames, ZoneEntry, default_zone
from apr_async.lab.inside import HostName, LabInside, check_host
from apr_async.lab.netns import LoopThread, run_ip, wait_uncancellable, write_sysctls
from apr_async.lab.nft_rules import router_base_ruleset, server_base_ruleset
from apr_async.lab.scenarios import HEALTHY, Scenario, combine
from apr_async.lab.servers import EchoServer
from apr_async.lab.switch import apply_scenario, run_all
from apr_async.lab.topology import (
    ClientPlan,
    RouterPlan,
    ServerPlan,
    Topology,
    new_lab_prefix,
    nptv6_translate,
)

__all__ = ["HostName", "Lab", "LabUnavailableError"]


_live_labs: weakref.WeakSet[Lab] = weakref.WeakSet()


class LabUnavailableError(RuntimeError):
    """This machine cannot build a lab (not root, no namespaces...); ``str()`` says why."""


class Lab(LabInside):
    """A client -- router -- server lab in three fresh network namespaces.

    Args:
        scenario: initial scenario (see :class:`~apr_async.lab.scenarios.Scenario`).
        direct_link: also build a direct, link-local-only client -- server link.
        dns: run the lab DNS server on the router (``dns_v4``/``dns_v6``, port 53).
        dns_zone: zone for it; default :func:`~apr_async.lab.dnsserver.default_zone`.
        aaaa_delay: AAAA answer delay of ``names.slow_aaaa`` in the default zone (seconds).
    """

    def __init__(
        self,
        scenario: Scenario = HEALTHY,
        *,
        direct_link: bool = True,
        dns: bool = True,
        dns_zone: Mapping[str, ZoneEntry] | None = None,
        aaaa_delay: float = 0.25,
    ) -> None:
        if not isinstance(scenario, Scenario):
            raise TypeError(f"scenario must be a Scenario, not {type(scenario).__name__}")
        self.prefix = new_lab_prefix()
        self.topology = Topology(self.prefix, direct_link=direct_link)
        self.names = LabNames()
        s = self.topology.server
        zone = dns_zone if dns_zone is not None else default_zone(
            s.v4, s.v6, s.dead_v4, s.dead_v6, aaaa_delay=aaaa_delay)
        self._dns: DNSServer | None = (
            DNSServer(zone, (self.router.dns_v4, self.router.dns_v6), 53) if dns else None)
        self._initial = scenario
        self._scenario = HEALTHY
        self._state: Literal["new", "running", "closed"] = "new"
        self._service: dict[str, LoopThread] = {}
        self._delay: DelayLine | None = None
        self._echo: list[tuple[str, EchoServer]] = []
        self._procs: list[asyncio.subprocess.Process] = []
        #: run_in workers and how to cancel each (close() ends calls it did not start)
        self._run_threads: dict[threading.Thread, Callable[[], None]] = {}
        self._switch_lock = asyncio.Lock()

    # -- addresses ------------------------------------------------------------------------------

    @property
    def client(self) -> ClientPlan:
        """Client addresses: ``v4`` (public-looking, the healthy IPv4 source), ``private_v4``
        (RFC 1918, the NAT44 source), ``gua``, ``ula``, direct-link link-local."""
        return self.topology.client

    @property
    def router(self) -> RouterPlan:
        """Router gateway addresses and the DNS server addresses."""
        return self.topology.router

    @property
    def server(self) -> ServerPlan:
        """Server addresses: ``v4``, ``v6``, ``dead_v4``, ``dead_v6``, direct-link link-local."""
        return self.topology.server

    @property
    def dns_v4(self) -> str:
        """IPv4 address of the lab DNS server (port 53, reachable from the client)."""
        return self.router.dns_v4

    @property
    def dns_v6(self) -> str:
        """IPv6 address of the lab DNS server."""
        return self.router.dns_v6

    @property
    def dns_servers(self) -> list[str]:
        """Both DNS server addresses, for ``aiodns.DNSResolver(nameservers=...)``."""
        return [self.dns_v4, self.dns_v6]

    @property
    def dns(self) -> DNSServer:
        """The lab DNS server (``set_zone``/``update`` change the zone live)."""
        if self._dns is None:
            raise RuntimeError("this lab was built with dns=False")
        return self._dns

    @property
    def client_ula_translated(self) -> str:
        """What the server sees instead of the client's ULA in the NPTv6 scenario."""
        return nptv6_translate(self.client.ula, self.client.ula_prefix, self.router.nptv6_outside)

    @property
    def scenario(self) -> Scenario:
        """The scenario currently applied."""
        return self._scenario

    def netns(self, host: HostName) -> str:
        """Namespace name of ``host`` (for ``ip netns exec`` or ``ip -n``)."""
        return {"client": self.client.netns, "router": self.router.netns,
                "server": self.server.netns}[check_host(host)]

    def threads(self) -> list[threading.Thread]:
        """Threads this lab currently runs (service loops and ``run_in`` workers)."""
        out = [svc.thread for svc in self._service.values() if svc.thread.is_alive()]
        return out + [t for t in self._run_threads if t.is_alive()]

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Build the lab. On any failure or cancellation everything built so far is removed."""
        if self._state != "new":
            raise RuntimeError("a Lab can only be started once")
        reason = lab_unavailable_reason()
        if reason is not None:
            raise LabUnavailableError(reason)
        self._state = "running"
        _live_labs.add(self)
        try:
            await self._build()
            await self._switch(self._initial)
        except BaseException:
            self._teardown_sync()
            raise

    async def _build(self) -> None:
        topo = self.topology
        sweep_stale_labs()
        await run_ip(["-batch", "-"], topo.root_batch())
        iface = topo.iface_sysctls()
        for ns, values in topo.sysctls().items():
            write_sysctls(ns, {**values, **iface[ns]})
        router_svc = self._service_loop("router")
        # Synchronous on purpose: an await here, cancelled after the line opened, would lose
        # the only reference to its tun fd.
        self._delay = router_svc.call(_open_delay_line, self.router.delay_ifname)
        r, s = self.router.netns, self.server.netns
        await run_all(
            run_ip(["-n", self.client.netns, "-batch", "-"], topo.client_batch()),
            run_ip(["-n", r, "-batch", "-"], topo.router_batch()),
            run_ip(["-n", s, "-batch", "-"], topo.server_batch()),
        )
        await run_all(
            run_ip(["netns", "exec", r, "nft", "-f", "-"], router_base_ruleset(topo)),
            run_ip(["netns", "exec", s, "nft", "-f", "-"], server_base_ruleset()),
        )
        if self._dns is not None:
            await router_svc.run(self._dns.start())

    def _service_loop(self, host: HostName) -> LoopThread:
        svc = self._service.get(host)
        if svc is None:
            svc = LoopThread(self.netns(host), f"{self.prefix}-{host}-svc")
            self._service[host] = svc
            svc.start()
        return svc

    async def close(self) -> None:
        """Tear the lab down: processes, servers, threads, namespaces. Idempotent.

        Safe under cancellation: the part that must not be skipped runs synchronously.
        """
        if self._state != "running":
            self._state = "closed"
            return
        try:
            for proc in self._procs:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
            for proc in self._procs:
                with contextlib.suppress(ProcessLookupError):
                    await asyncio.wait_for(proc.wait(), 5)
        finally:
            self._teardown_sync()

    def _teardown_sync(self) -> None:
        if self._state == "closed":
            return
        self._state = "closed"
        try:
            # run_in calls still going (a background task the test never awaited) would keep
            # their thread, and the namespace it holds, alive after the lab is gone.
            for cancel in list(self._run_threads.values()):
                cancel()
            for host, echo in self._echo:
                svc = self._service.get(host)
                if svc is not None:
                    with contextlib.suppress(Exception):
                        svc.submit(echo.stop()).result(5)
            router_svc = self._service.get("router")
            if router_svc is not None:
                if self._dns is not None:
                    with contextlib.suppress(Exception):
                        router_svc.submit(self._dns.stop()).result(5)
                if self._delay is not None:
                    with contextlib.suppress(Exception):
                        router_svc.call(self._delay.close)
            for svc in self._service.values():
                svc.stop()
            for thread in list(self._run_threads):
                thread.join(10)
            for proc in self._procs:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
        finally:
            delete_namespaces(lab_namespaces(self.prefix))
            _live_labs.discard(self)

    # -- scenarios ------------------------------------------------------------------------------

    async def set_scenario(self, *scenarios: Scenario) -> Scenario:
        """Switch the running lab to the combination of ``scenarios`` (none = healthy).

        Only what differs from the current scenario is touched, so open connections survive
        an unrelated change. Returns the scenario now in force. A cancelled switch still
        completes (in milliseconds) before the cancellation propagates: half-applied rules
        would make every later switch compute its changes from the wrong state.
        """
        target = combine(*scenarios)  # validates before any I/O
        self._require_running()
        async with self._switch_lock:
            switch = asyncio.ensure_future(self._switch(target))
            try:
                await asyncio.shield(switch)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await wait_uncancellable(switch)
                raise
        return target

    async def _switch(self, new: Scenario) -> None:
        await apply_scenario(self.topology, self._scenario, new, self._delay)
        self._scenario = new

    # -- servers inside ------------------------------------------------------------------------

    async def start_echo_server(
        self, host: HostName = "server", port: int = 0, *, announce_peer: bool = False,
        bind: str = "::",
    ) -> EchoServer:
        """Start a TCP echo server in ``host`` on every address (dual-stack wildcard).

        It runs on the lab's service loop for that host and is stopped with the lab. Read
        ``server.accepted`` to see the peer addresses the server saw.
        """
        check_host(host)
        self._require_running()
        echo = EchoServer(bind, port, announce_peer=announce_peer)
        # Registered first, so that close() stops it even if this call is cancelled after
        # the listener was bound.
        self._echo.append((host, echo))
        await self._service_loop(host).run(echo.start())
        return echo

    async def stop_echo_server(self, echo: EchoServer) -> None:
        """Stop an echo server before the lab closes."""
        for host, item in list(self._echo):
            if item is echo:
                await self._service[host].run(echo.stop())
                self._echo.remove((host, item))


def _open_delay_line(ifname: str) -> DelayLine:
    # Runs on the router's service loop: the tun device is created in the router namespace.
    line = DelayLine(open_tun(ifname))
    line.start()
    return line


@atexit.register
def _close_forgotten_labs() -> None:
    # A lab never closed (KeyboardInterrupt outside asyncio, sys.exit in a test) must not
    # leave namespaces behind; the stale sweeper covers the cases where even this cannot run.
    for lab in list(_live_labs):
        with contextlib.suppress(Exception):
            lab._teardown_sync()
