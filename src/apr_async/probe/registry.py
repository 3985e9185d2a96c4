"""Which probe service's context is the package default: a chain of installed services.

A running :class:`~apr_async.probe.service.ProbeService` installs its context as the package
default (``install=True``) and restores the previous one when it closes, whatever order
services close in.
"""

from __future__ import annotations

import threading
import weakref
from typing import Protocol

from apr_async.resolve import pairs

__all__ = ["Installable", "install", "install_fallback_context", "uninstall"]


class Installable(Protocol):
    """What the registry needs of a service: its context and the one it replaced."""

    context: pairs.PairContext
    _previous_context: pairs.PairContext | None

    def __hash__(self) -> int: ...


# Services whose context is the package default, or was until another service installed its
# own on top: a chain through ``_previous_context``. Closing a service unlinks it, so the
# default never falls back to the context of a service that is already closed, whatever order
# services close in.
_installed: weakref.WeakSet[Installable] = weakref.WeakSet()
_install_lock = threading.Lock()


def install(service: Installable) -> None:
    with _install_lock:
        service._previous_context = pairs.default_context()
        pairs.set_default_context(service.context)
        _installed.add(service)


def uninstall(service: Installable) -> None:
    with _install_lock:
        if service not in _installed:
            return
        _installed.discard(service)
        previous, service._previous_context = service._previous_context, None
        if pairs.default_context() is service.context:
            pairs.set_default_context(previous)
        for other in _installed:
            if other._previous_context is service.context:
                other._previous_context = previous


def install_fallback_context(context: pairs.PairContext) -> None:
    """Make ``context`` the package default once no running service's context is installed.

    Running services keep theirs installed; ``context`` takes the place of whatever the first
    of them replaced, so it comes back when they close.
    """
    with _install_lock:
        owners = {id(s.context): s for s in _installed}
        current = pairs.default_context()
        owner = owners.get(id(current))
        if owner is None:
            pairs.set_default_context(context)
            return
        while (below := owners.get(id(owner._previous_context))) is not None:
            owner = below
        owner._previous_context = context
