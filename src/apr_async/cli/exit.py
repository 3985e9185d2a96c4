"""Exit codes of the ``apr-async`` command line and the error type that carries one."""

from __future__ import annotations

__all__ = [
    "EXIT_CODES_HELP",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_RESOLUTION",
    "EXIT_SYSTEM",
    "EXIT_USAGE",
    "CliError",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_RESOLUTION = 3
EXIT_SYSTEM = 4
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """\
exit codes:
  0    success (the service answered, every host is up, the status was read)
  1    the thing checked failed: connection failed, wait timed out, a host is down,
       no working path
  2    usage error or invalid argument / APR_ASYNC_* setting
  3    name resolution failed (NXDOMAIN, no address, DNS server unreachable)
  4    local system error (cannot bind, permission denied, lab unavailable)
  130  interrupted (Ctrl-C)

environment:
  APR_ASYNC_<SETTING> overrides any setting of apr_async.Config, e.g. APR_ASYNC_TARGETS,
  APR_ASYNC_NAMESERVERS, APR_ASYNC_PROBE_INTERVAL; command-line options win over both.
  An APR_ASYNC_* name that is no setting (a typo) is ignored with a warning.
  NO_COLOR disables colours.
"""


class CliError(Exception):
    """A user-facing error: printed as one line (no traceback), exits with ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code
