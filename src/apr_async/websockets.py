"""websockets integration (the ``websockets`` extra): :class:`connect`, the asyncio
implementation's ``websockets.asyncio.client.connect`` whose TCP connection is apr_async's
ranked, source-bound race::

    from apr_async.websockets import connect
    async with connect("wss://example.net/feed") as ws: ...

It is ``websockets``' own ``connect`` (a subclass): TLS (``wss://``, ``ssl=``,
``server_hostname=``), ``open_timeout``, redirects and the ``async for ws in connect(...)``
reconnection loop are unchanged, and each (re)connection runs a new race
(:func:`apr_async.connect_socket`), whose socket is handed to websockets through its ``sock=``
argument. With ``sock=`` or ``unix=True`` given, or a proxy configured (``proxy=`` or the
environment), websockets connects by itself as usual. A failed race raises apr_async's
:class:`~apr_async.AllAttemptsFailedError`, an ``OSError`` (the ``ConnectionRefusedError`` /
``TimeoutError`` subclass when all attempts agree) carrying ``errno`` and ``attempts``, which
websockets' reconnection loop retries like any ``OSError``.

Without this module, the one-liner for a single connection is websockets' ``sock=`` hook:
``websockets.connect(uri, sock=await apr_async.connect_socket(host, port))``.

This module is the only one that imports websockets; ``import apr_async`` never does.
"""

from __future__ import annotations

from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as _ws_connect
from websockets.proxy import get_proxy

from apr_async.connect.api import AttemptRecorder, connect_socket
from apr_async.connect.integration_args import check_race_settings
from apr_async.resolve.pairs import PairContext

__all__ = ["connect"]


class connect(_ws_connect):  # noqa: N801 - a drop-in for websockets' own lower-case class
    """``websockets.asyncio.client.connect`` over apr_async's race.

    Takes every argument of websockets' ``connect`` and, for the race: ``context``
    (ranking tables and resolver), ``service`` (receives every attempt's outcome),
    ``happy_eyeballs_delay``, ``interleave``, ``family`` and ``local_addr``, each as for
    :func:`apr_async.connect_socket`.
    """

    def __init__(
        self,
        uri: str,
        *,
        context: PairContext | None = None,
        service: AttemptRecorder | None = None,
        happy_eyeballs_delay: float | None = None,
        interleave: int | None = None,
        family: int = 0,
        local_addr: tuple[str, int] | None = None,
        **kwargs: Any,
    ) -> None:
        check_race_settings(context=context, happy_eyeballs_delay=happy_eyeballs_delay,
                            interleave=interleave, family=family)
        super().__init__(uri, **kwargs)
        self._apr: dict[str, Any] = {
            "context": context,
            "service": service,
            "happy_eyeballs_delay": happy_eyeballs_delay,
            "interleave": interleave,
            "family": family,
            "local_addr": local_addr,
        }

    def _websockets_connects(self) -> bool:
        """Whether websockets makes the connection itself (socket given, Unix, a proxy)."""
        kwargs = self.create_connection_kwargs
        if kwargs.get("sock") is not None or kwargs.get("unix", False):
            return True
        proxy = self.proxy
        if proxy is True:
            proxy = get_proxy(self.ws_uri)
        return proxy is not None

    async def open_tcp_connection(self) -> ClientConnection:
        """Race the ranked pairs of the URI's host (each time: reconnections and redirects
        race again), then let websockets set up TLS and the connection on the winner."""
        if self._websockets_connects():
            return await super().open_tcp_connection()
        sock = await connect_socket(self.ws_uri.host, self.ws_uri.port, **self._apr)
        kwargs = self.create_connection_kwargs
        self.create_connection_kwargs = {**kwargs, "sock": sock}
        try:
            return await super().open_tcp_connection()
        except BaseException:
            sock.close()  # websockets never took it over
            raise
        finally:
            self.create_connection_kwargs = kwargs
