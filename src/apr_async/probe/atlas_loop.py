"""The probe service's RIPE Atlas task: fetch the anchor list now and then, rotate the choice.

Optional targets (``Config.atlas``): any failure is logged and the service carries on.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from apr_async.config import Config
from apr_async.core.addresses import IPAddress

__all__ = ["rotate_anchors"]

log = logging.getLogger("apr_async.probe")

#: Anchor choices made from one fetched RIPE Atlas anchor list before it is fetched again.
ROTATIONS_PER_FETCH = 6


async def rotate_anchors(
    cfg: Config,
    rng: random.Random,
    clock: Callable[[], float],
    publish: Callable[[list[IPAddress]], None],
) -> None:
    """Forever: every ``atlas_rotate_interval``, ``publish`` the anchors to probe now."""
    from apr_async.probe.atlas import AnchorRotation, fetch_anchors  # noqa: PLC0415 - optional

    rotation = AnchorRotation(
        per_family=cfg.atlas_per_family, interval=cfg.atlas_rotate_interval, rng=rng
    )
    # the anchor list changes slowly and is large: fetch it every few rotations only
    refresh = cfg.atlas_rotate_interval * ROTATIONS_PER_FETCH
    fetched_at: float | None = None
    while True:
        now = clock()
        if fetched_at is None or now - fetched_at >= refresh:
            try:
                anchors = await fetch_anchors(
                    cfg.atlas_url,
                    max_wait=max(10.0, cfg.dns_timeout * 4),
                    nameservers=cfg.nameservers,
                )
            except Exception as exc:  # optional targets: never fatal
                log.info("RIPE Atlas anchors unavailable: %s", exc)
            else:
                rotation.update(anchors, now)
                fetched_at = now
        publish(rotation.targets(clock()))
        await asyncio.sleep(cfg.atlas_rotate_interval)
