"""The address-family numbers the core hands out in its pairs.

``AddrPair.family`` and the schedule's families must be the platform's own ``AF_INET6`` /
``AF_INET`` values (10 and 2 on Linux, 30 and 2 on macOS) so that ``socket.socket(AF, ...)``
works with them. This module is the core's only contact with :mod:`socket`, and it takes
nothing but these two integer constants from it: no socket object, no name resolution, no I/O
(``tests/test_architecture.py`` checks that no other core module imports ``socket`` and that
this one imports only constants).
"""

from __future__ import annotations

from socket import AF_INET, AF_INET6

__all__ = ["AF_INET", "AF_INET6"]
