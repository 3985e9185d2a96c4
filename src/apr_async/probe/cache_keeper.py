"""The probe service's warm-start cache glue: when to load and save, on which thread.

The file format and its trust checks are :mod:`apr_async.probe.persist`; this is the policy
around it for one service (load at start, save after a round at most every
``persist_interval`` in a worker thread, a last save on close).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from apr_async.config import Config
from apr_async.core.latency import LatencyTable
from apr_async.probe.persist import (
    CacheBusyError,
    CachedLatency,
    load_cache,
    restore_latency,
    save_cache,
    table_entries,
)

__all__ = ["CacheKeeper"]

log = logging.getLogger("apr_async.probe")


class CacheKeeper:
    """Loads a service's latency table from the cache and saves it back."""

    def __init__(self, config: Config, latency: LatencyTable,
                 clock: Callable[[], float]) -> None:
        self.config, self.latency, self._clock = config, latency, clock
        self._last_save: float | None = None
        self._persist_warned = False

    def load(self) -> None:
        """Fill the table from the cache file (a bad or foreign file is ignored)."""
        path = self.config.effective_cache_path
        wall, now = time.time(), self._clock()
        entries = load_cache(path, now=wall)
        if not entries:
            return
        try:
            restore_latency(self.latency, entries, now=now, wall=wall)
        except ValueError as exc:
            log.warning("apr_async cache %s not usable: %s", path, exc)
        else:
            log.debug("warm start: %d latency entries from %s", len(entries), path)

    def _save_due(self) -> bool:
        last = self._last_save
        return last is None or self._clock() - last >= self.config.persist_interval

    async def save_in_background(self) -> None:
        """Save if ``persist_interval`` passed since the last save, in a worker thread."""
        if not self._save_due():
            return
        self._last_save = self._clock()
        entries = table_entries(self.latency, now=self._clock(), wall=time.time())
        # fsync can stall for a long time on a busy disk: never on the event loop's thread
        await asyncio.to_thread(self._write, entries)

    def save_now(self) -> None:
        """The last save, on close: wait for a concurrent writer rather than lose it."""
        entries = table_entries(self.latency, now=self._clock(), wall=time.time())
        self._write(entries, wait=True)

    def _write(self, entries: list[CachedLatency], *, wait: bool = False) -> None:
        if not entries:
            return
        try:
            save_cache(self.config.effective_cache_path, entries, wait=wait)
        except CacheBusyError:
            self._last_save = None  # another process is writing: try again next round
        except OSError as exc:
            if not self._persist_warned:
                log.warning("apr_async cache not written: %s", exc)
                self._persist_warned = True
