"""Happy Eyeballs over ranked pairs: the race, one attempt, TLS, argument checks, outcome
recording and the errors a failed race raises. May import: ``core``, ``resolve``, ``probe``,
``config``, ``errors``.
"""

from __future__ import annotations

from apr_async.connect.api import connect_socket, create_connection, open_connection
from apr_async.connect.errors import AllAttemptsFailedError

__all__ = ["AllAttemptsFailedError", "connect_socket", "create_connection", "open_connection"]
