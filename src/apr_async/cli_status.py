"""The ``status`` and ``monitor`` subcommands (on the probe service)."""

from __future__ import annotations

import argparse

from apr_async.cli_common import EXIT_SYSTEM, CliError, Output, Settings

__all__ = ["cmd_monitor", "cmd_status"]


async def cmd_status(args: argparse.Namespace, out: Output, settings: Settings) -> int:
    """Connectivity flags, gateways, NAT64 prefix and addresses, after one probe round."""
    raise CliError("status needs the probe service, which is not built yet", EXIT_SYSTEM)


async def cmd_monitor(args: argparse.Namespace, out: Output, settings: Settings) -> int:
    """A live table of probe targets and their latency per source."""
    raise CliError("monitor needs the probe service, which is not built yet", EXIT_SYSTEM)
