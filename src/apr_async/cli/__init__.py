"""The ``apr-async`` command line, its demo and the TCP relay behind ``apr-async forward``.
May import anything in the package; nothing else imports it.
"""

from __future__ import annotations

from apr_async.cli.main import main

__all__ = ["main"]
