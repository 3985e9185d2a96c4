"""The probe service's public home and the package's lazily started default service.

:class:`ProbeService` (defined in :mod:`apr_async.probe.service`) is the background service an
application can run itself. This module adds the default service used by the package-level
functions: one per event loop, created on first use and, unless ``Config.autostart`` is off,
started in the background without waiting for the network. :func:`configure` sets its
configuration; it also gives the module-level functions a ranking context that follows that
configuration (nameservers, DNS timeout, IPv6 bias, table bounds) even while no service runs.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any

from apr_async.config import Config
from apr_async.core.status import ConnectivityStatus
from apr_async.probe.plan import Target
from apr_async.probe.service import (
    PathMeasurement,
    ProbeService,
    context_for,
    install_fallback_context,
)
from apr_async.resolve import pairs

__all__ = [
    "PathMeasurement",
    "ProbeService",
    "Target",
    "aclose_default",
    "configure",
    "current_config",
    "current_service",
    "default_service",
    "implicit_service",
    "status",
    "wait_ready",
]

_background: set[asyncio.Task[None]] = set()
_default_lock = threading.Lock()
_default_config: Config | None = None
_defaults: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ProbeService] = (
    weakref.WeakKeyDictionary()
)
#: Loops on which implicit use found autostart off (so the configuration is not re-read).
_declined: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def configure(config: Config | None = None, **changes: Any) -> Config:
    """Set the configuration of the default service (``Config.from_env(**changes)`` when
    ``config`` is omitted) and return it.

    A default service already running is closed; the next use starts one with the new
    configuration. The module-level functions rank with a fresh context built from it
    (nameservers, DNS timeout, IPv6 bias, table bounds) whenever no probe service's context is
    installed, so the configuration applies with ``autostart=False`` too. Bad values raise
    before anything changes.
    """
    global _default_config  # noqa: PLW0603 - the package-wide default is the point
    if config is not None and changes:
        raise TypeError("pass either a Config or keyword changes, not both")
    new = config if config is not None else Config.from_env(**changes)
    if not isinstance(new, Config):
        raise TypeError(f"config must be an apr_async.Config, not {type(new).__name__}")
    with _default_lock:
        _default_config = new
        old = list(_defaults.items())
        _defaults.clear()
        _declined.clear()
    install_fallback_context(context_for(new))
    for loop, service in old:
        _close_soon(loop, service)
    return new


def current_config() -> Config:
    """The default service's configuration: what :func:`configure` set, else the environment's.

    The environment's (``Config.from_env()``) is read once; its resolver and preferences then
    serve the module-level functions even with autostart off, unless the application installed
    a default context of its own (``pairs.set_default_context``), which is never replaced.
    """
    global _default_config  # noqa: PLW0603 - the package-wide default is the point
    config = _default_config
    if config is not None:
        return config
    config = Config.from_env()
    with _default_lock:
        if _default_config is not None:
            return _default_config
        _default_config = config
    if not pairs.default_context_was_set():
        install_fallback_context(context_for(config))
    return config


def _close_soon(loop: asyncio.AbstractEventLoop, service: ProbeService) -> None:
    if loop.is_closed():
        return
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None

    def spawn() -> None:
        task = loop.create_task(service.aclose())
        _background.add(task)
        task.add_done_callback(_background.discard)

    if running is loop:
        spawn()
    else:
        loop.call_soon_threadsafe(spawn)


def current_service() -> ProbeService | None:
    """The default service of the running event loop, if one was started (never starts one)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    service = _defaults.get(loop)
    return service if service is not None and service.running else None


def default_service(host: str | None = None, family: int = 0) -> ProbeService:
    """The default service of the running event loop, created (and, unless the config says
    ``autostart=False``, started) on first use. Needs a running event loop.

    ``host`` (with ``family``) is the name the caller is about to connect to: a service
    created now sends its DNS queries before it starts, so the answer travels while the
    start reads the interfaces and the shared table (about 1.5 ms of CPU) instead of after."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError("the apr_async default service needs a running event loop") from None
    config = current_config()
    with _default_lock:
        service = _defaults.get(loop)
        if service is not None and service._state != "closed":
            return service
        # the default service is the one worker processes use implicitly: it shares the
        # host's probing unless the configuration says otherwise
        service = ProbeService(config, share=True)
        _defaults[loop] = service
    if config.autostart:
        if host is not None:
            service.resolver.prefetch(host, family)
        service.start_nowait()
    return service


def implicit_service(host: str | None = None, family: object = 0) -> ProbeService | None:
    """The running loop's default service for module-level calls, started now (in the
    background: this never waits for the network) unless the configuration says
    ``autostart=False``. ``None`` outside an event loop or when autostart is off. ``host``
    and ``family`` as in :func:`default_service`.

    Called on every ``get_addr_pairs``/``open_connection`` without an explicit context, so the
    common path is one dictionary lookup; the configuration is read once per loop.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    service = _defaults.get(loop)
    if service is not None:
        if not service.running:
            return None
        service.check_shared()  # a follower's O(1) "did the leader publish?" check
        return service
    if loop in _declined:
        return None
    if not current_config().autostart:
        _declined.add(loop)
        return None
    service = default_service(host, family if isinstance(family, int) else 0)
    return service if service.running else None


pairs.before_default_use = implicit_service


def status() -> ConnectivityStatus:
    """The connectivity status from the default service (started on first use)."""
    return default_service().status()


async def wait_ready(timeout: float | None = None) -> bool:  # noqa: ASYNC109
    """Wait for the default service's first probe round (starting it if needed)."""
    service = default_service()
    if service._state == "new":
        service.start_nowait()
    return await service.wait_ready(timeout)


async def aclose_default() -> None:
    """Close the default service of the running loop, if any."""
    loop = asyncio.get_running_loop()
    with _default_lock:
        service = _defaults.pop(loop, None)
    if service is not None:
        await service.aclose()

