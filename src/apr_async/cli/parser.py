"""The ``apr-async`` argument parser: one table row per subcommand.

A subcommand is its name, its help line, the shared option groups it takes (``dns``,
``icmp``, ``probing``; every one takes ``common``) and a function adding its own arguments.
Adding a subcommand is adding a row; changing one option touches one function.
"""

from __future__ import annotations

import argparse
import socket
import textwrap
from collections.abc import Callable
from typing import NamedTuple

from apr_async import __version__
from apr_async.cli.exit import EXIT_CODES_HELP

__all__ = ["SUBCOMMANDS", "Subcommand", "build_parser"]


def _port(text: str) -> int:
    """A port number, or a TCP service name (``http``) looked up like the API does."""
    if text.isdigit():
        if not 0 < int(text) <= 65535:
            raise argparse.ArgumentTypeError(f"invalid port {text!r} (expected 1-65535)")
        return int(text)
    try:
        # /etc/services (NSS "files"), never DNS.
        return socket.getservbyname(text, "tcp")
    except (OSError, UnicodeError):
        raise argparse.ArgumentTypeError(
            f"invalid port {text!r} (expected 1-65535 or a TCP service name such as http)"
        ) from None


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}")
    return int(text)


def _grace(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (seconds)") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"duration must be 0 or more seconds, not {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (seconds)") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"duration must be a positive number, not {text!r}")
    return value


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"invalid count {text!r} (expected a positive integer)")
    return int(text)


_PORT_HELP = "port number or TCP service name (http, https...)"


def _host_port_timeout(parser: argparse.ArgumentParser, timeout: int) -> None:
    parser.add_argument("host")
    parser.add_argument("port", type=_port, help=_PORT_HELP)
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=float(timeout),
        help=f"give up after this many seconds (default {timeout})",
    )



def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable JSON output")
    common.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colours: auto (a terminal and NO_COLOR unset), always, never",
    )
    common.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv: debug)")
    return common


def _shared_options() -> dict[str, argparse.ArgumentParser]:
    """The option groups subcommands share, by the names the table uses."""
    dns = argparse.ArgumentParser(add_help=False)
    dns.add_argument(
        "--nameserver",
        action="append",
        metavar="ADDR",
        help="DNS server to use (IP, IP:PORT or [IPv6]:PORT; repeatable; default: the system's)",
    )
    dns.add_argument("-4", dest="family", action="store_const", const=4, help="IPv4 only")
    dns.add_argument("-6", dest="family", action="store_const", const=6, help="IPv6 only")

    icmp = argparse.ArgumentParser(add_help=False)
    icmp.add_argument(
        "--icmp",
        choices=("auto", "privileged", "unprivileged", "off"),
        help="ICMP probes: raw socket, ping socket, or off (TCP only)",
    )
    # The probe service's targets: status and monitor only (ping probes the hosts it is given).
    probing = argparse.ArgumentParser(add_help=False, parents=[icmp])
    probing.add_argument(
        "--target",
        action="append",
        metavar="HOST[:PORT]",
        help="probe target beyond the gateway (repeatable; default: APR_ASYNC_TARGETS or the "
        "built-in public resolvers)",
    )
    return {"dns": dns, "icmp": icmp, "probing": probing}


def _status_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=10.0,
        help="seconds to wait for the first probe round (default 10)",
    )
    p.add_argument(
        "--interval",
        dest="probe_interval",
        type=_seconds,
        default=None,
        help="seconds between probe rounds",
    )


def _svcb_flag(parser: argparse.ArgumentParser) -> None:
    """The ``--svcb`` option of ``pairs`` and ``connect`` (handled in :mod:`.svcb`)."""
    parser.add_argument(
        "--svcb", action="store_true",
        help="also ask DNS for HTTPS records (RFC 9460): show every endpoint, its ALPN and "
             "the record it came from, and go on with the first endpoint's target and port")


def _pairs_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("host")
    p.add_argument("port", type=_port, help=_PORT_HELP)
    _svcb_flag(p)


def _connect_arguments(p: argparse.ArgumentParser) -> None:
    _host_port_timeout(p, 10)
    _svcb_flag(p)
    p.add_argument(
        "--delay",
        type=_seconds,
        default=None,
        help="fixed Connection Attempt Delay in seconds (default: adaptive)",
    )


_PING_DETAILS = (
    "A host is up when at least one (source, destination) pair to it answered at least "
    "one probe: one working pair is enough, even if the other pairs (another family, "
    "another source) lose every probe. The exit status is 0 when every HOST is up, 1 "
    "when any is down (the table shows the loss per pair), 3 when no HOST resolves."
)


def _ping_arguments(p: argparse.ArgumentParser) -> None:
    p.description = f"{p.description}\n\n" + textwrap.fill(_PING_DETAILS, width=79)
    p.add_argument("hosts", nargs="+", metavar="HOST")
    p.add_argument("-c", "--count", type=_count, default=3, help="probes per pair (default 3)")
    p.add_argument(
        "-i",
        "--interval",
        type=_seconds,
        default=0.2,
        help="seconds between probes of one pair (default 0.2)",
    )
    p.add_argument(
        "-W",
        "--wait",
        type=_seconds,
        default=1.0,
        help="seconds to wait for each answer (default 1)",
    )
    p.add_argument(
        "--tcp-port",
        type=_port,
        default=None,
        help="TCP port for the fallback when ICMP is unavailable or unanswered",
    )
    p.add_argument("--tcp", action="store_true", help="TCP connect probes only")


def _wait_arguments(p: argparse.ArgumentParser) -> None:
    _host_port_timeout(p, 30)
    p.add_argument(
        "--interval", type=_seconds, default=0.5, help="seconds between tries (default 0.5)"
    )
    p.add_argument(
        "--attempt-timeout", type=_seconds, default=5.0, help="bound on one try (default 5)"
    )


def _forward_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "listen",
        metavar="LISTEN",
        help="PORT (every address, both families), HOST:PORT, [V6]:PORT or unix:PATH",
    )
    p.add_argument(
        "upstream", metavar="UPSTREAM", help="HOST:PORT (reached through apr_async) or unix:PATH"
    )
    p.add_argument(
        "--buffer-size",
        type=_positive_int,
        default=64 * 1024,
        help="bytes buffered per direction (default 65536)",
    )
    p.add_argument(
        "--connect-timeout",
        type=_seconds,
        default=10.0,
        help="seconds to reach the upstream (default 10)",
    )
    p.add_argument(
        "--grace",
        type=_grace,
        default=5.0,
        help="seconds open relays get to finish on shutdown (default 5)",
    )


def _monitor_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--interval",
        dest="probe_interval",
        type=_seconds,
        default=None,
        help="seconds between probe rounds",
    )
    p.add_argument(
        "--refresh", type=_seconds, default=1.0, help="seconds between screen refreshes (default 1)"
    )
    p.add_argument(
        "--duration",
        type=_seconds,
        default=None,
        help="stop after this many seconds (default: until Ctrl-C)",
    )


def _no_arguments(p: argparse.ArgumentParser) -> None:
    del p


class Subcommand(NamedTuple):
    """One row of the subcommand table."""

    name: str
    help: str
    #: Names of the shared option groups (see ``_shared_options``), in help order.
    options: tuple[str, ...]
    arguments: Callable[[argparse.ArgumentParser], None]


SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand(
        "status",
        "connectivity flags, gateways, NAT64 prefix, per-interface addresses",
        ("dns", "probing"),
        _status_arguments,
    ),
    Subcommand(
        "pairs",
        "ranked (source, destination) pairs with latency and the reason for each place",
        ("dns",),
        _pairs_arguments,
    ),
    Subcommand(
        "connect",
        "race HOST PORT and show the timeline of attempts and the winner",
        ("dns",),
        _connect_arguments,
    ),
    Subcommand(
        "ping",
        "ICMP (TCP fallback) from every source address to each HOST: RTT, loss, "
        "which hosts are down",
        ("dns", "icmp"),
        _ping_arguments,
    ),
    Subcommand(
        "wait",
        "wait until HOST PORT accepts connections (exit 0) or time out (exit 1)",
        ("dns",),
        _wait_arguments,
    ),
    Subcommand(
        "forward",
        "dual-stack TCP relay from LISTEN to UPSTREAM (until SIGINT/SIGTERM)",
        ("dns",),
        _forward_arguments,
    ),
    Subcommand(
        "interfaces",
        "interfaces, addresses with prefix length, scope, kind and flags",
        (),
        _no_arguments,
    ),
    Subcommand(
        "monitor",
        "live table of probe targets and their latency, refreshing in place",
        ("dns", "probing"),
        _monitor_arguments,
    ),
    Subcommand(
        "demo",
        "build a network lab in namespaces and show apr_async at work (needs root)",
        (),
        _no_arguments,
    ),
)
"""Every subcommand, in the order ``--help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser for every subcommand."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="apr-async",
        description="Ranked (source, destination) address pairs and Happy Eyeballs connections.",
        epilog=EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    parser.add_argument("--version", action="version", version=f"apr-async {__version__}")
    common = _common_options()
    shared = _shared_options()
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in SUBCOMMANDS:
        p = sub.add_parser(
            command.name,
            help=command.help,
            description=command.help,
            parents=[common, *(shared[name] for name in command.options)],
            epilog=EXIT_CODES_HELP,
            formatter_class=fmt,
        )
        command.arguments(p)
    return parser
