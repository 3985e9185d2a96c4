"""The ``apr-async`` command line (also ``python -m apr_async``).

Each subcommand lives in a ``cli_*`` module and is imported only when it runs, so ``--help``
and ``demo`` stay quick. Errors a user can fix are printed as one line with an exit code (see
``EXIT_CODES_HELP``), never as a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import socket
import sys
import textwrap
import warnings
from collections.abc import Awaitable, Callable, Sequence
from typing import TextIO

from apr_async import __version__
from apr_async.cli.exit import (
    EXIT_CODES_HELP,
    EXIT_INTERRUPTED,
    EXIT_RESOLUTION,
    EXIT_SYSTEM,
    EXIT_USAGE,
    CliError,
)


def add_svcb_flag(parser: argparse.ArgumentParser) -> None:
    """The ``--svcb`` option of ``pairs`` and ``connect`` (handled in :mod:`.svcb`)."""
    parser.add_argument(
        "--svcb", action="store_true",
        help="also ask DNS for HTTPS records (RFC 9460): show every endpoint, its ALPN and "
             "the record it came from, and go on with the first endpoint's target and port")


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

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable JSON output")
    common.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colours: auto (a terminal and NO_COLOR unset), always, never",
    )
    common.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv: debug)")

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

    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str, help: str, *parents: argparse.ArgumentParser) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help,
            description=help,
            parents=[common, *parents],
            epilog=EXIT_CODES_HELP,
            formatter_class=fmt,
        )

    p = add(
        "status",
        "connectivity flags, gateways, NAT64 prefix, per-interface addresses",
        dns,
        probing,
    )
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

    p = add(
        "pairs",
        "ranked (source, destination) pairs with latency and the reason for each place",
        dns,
    )
    p.add_argument("host")
    p.add_argument("port", type=_port, help=_PORT_HELP)
    add_svcb_flag(p)

    p = add("connect", "race HOST PORT and show the timeline of attempts and the winner", dns)
    _host_port_timeout(p, 10)
    add_svcb_flag(p)
    p.add_argument(
        "--delay",
        type=_seconds,
        default=None,
        help="fixed Connection Attempt Delay in seconds (default: adaptive)",
    )

    p = add(
        "ping",
        "ICMP (TCP fallback) from every source address to each HOST: RTT, loss, "
        "which hosts are down",
        dns,
        icmp,
    )
    p.description = f"{p.description}\n\n" + textwrap.fill(
        "A host is up when at least one (source, destination) pair to it answered at least "
        "one probe: one working pair is enough, even if the other pairs (another family, "
        "another source) lose every probe. The exit status is 0 when every HOST is up, 1 "
        "when any is down (the table shows the loss per pair), 3 when no HOST resolves.",
        width=79,
    )
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

    p = add("wait", "wait until HOST PORT accepts connections (exit 0) or time out (exit 1)", dns)
    _host_port_timeout(p, 30)
    p.add_argument(
        "--interval", type=_seconds, default=0.5, help="seconds between tries (default 0.5)"
    )
    p.add_argument(
        "--attempt-timeout", type=_seconds, default=5.0, help="bound on one try (default 5)"
    )

    p = add("forward", "dual-stack TCP relay from LISTEN to UPSTREAM (until SIGINT/SIGTERM)", dns)
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

    add("interfaces", "interfaces, addresses with prefix length, scope, kind and flags")

    p = add(
        "monitor",
        "live table of probe targets and their latency, refreshing in place",
        dns,
        probing,
    )
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

    add("demo", "build a network lab in namespaces and show apr_async at work (needs root)")
    return parser


# What argparse would take for an option rather than a value, since -4 and -6 are options:
# "--timeout -1" then reads as "--timeout" without its argument.
_NEGATIVE_NUMBER = re.compile(r"-(\d|\.\d|inf|nan)", re.IGNORECASE)


def _value_options(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string, of any subcommand, that takes a value."""
    names: set[str] = set()
    parsers = [parser]
    while parsers:
        current = parsers.pop()
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            elif action.option_strings and action.nargs != 0:
                names.update(action.option_strings)
    return names


def _attach_negative_values(argv: Sequence[str], options: set[str]) -> list[str]:
    """``--timeout -1`` -> ``--timeout=-1`` (``-c -1`` -> ``-c-1``), so that the option's own
    check reports the bad value instead of argparse saying "expected one argument"."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            out.extend(argv[i:])
            break
        if token in options and i + 1 < len(argv) and _NEGATIVE_NUMBER.match(argv[i + 1]):
            out.append(f"{token}{'=' if token.startswith('--') else ''}{argv[i + 1]}")
            i += 2
            continue
        out.append(token)
        i += 1
    return out


def _show_warning(  # noqa: PLR0917 - warnings.showwarning's signature
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    # A warning (an unknown APR_ASYNC_* variable...) is for the user: one line, no source.
    stream = file or sys.stderr
    stream.write(f"apr-async: warning: {message}\n")
    stream.flush()


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="apr-async: %(levelname)s %(name)s: %(message)s")


def _error(message: str) -> None:
    # One line for people; -vv adds the traceback for whoever reports a bug.
    logging.getLogger("apr_async.cli").debug("the error in detail:", exc_info=True)
    sys.stderr.write(f"apr-async: error: {message}\n")
    sys.stderr.flush()


Command = Callable[..., Awaitable[int]]


def _command(name: str) -> tuple[Command, bool]:
    """The coroutine function of a subcommand and whether it takes ``Settings``."""
    if name == "interfaces":
        from apr_async.cli.commands import cmd_interfaces  # noqa: PLC0415 - lazy on purpose

        return cmd_interfaces, False
    if name in ("pairs", "connect", "wait", "forward"):
        from apr_async.cli import commands as cli_commands  # noqa: PLC0415

        fn: Command = getattr(cli_commands, f"cmd_{name}")
        return fn, True
    if name == "ping":
        from apr_async.cli.ping import cmd_ping  # noqa: PLC0415

        return cmd_ping, True
    from apr_async.cli import status as cli_status  # noqa: PLC0415

    fn = getattr(cli_status, f"cmd_{name}")
    return fn, True


async def _run(args: argparse.Namespace) -> int:
    from apr_async.cli.common import Output, Settings  # noqa: PLC0415

    out = Output.from_args(args)
    fn, wants_settings = _command(args.command)
    if not wants_settings:
        return await fn(args, out)
    settings = Settings(args)
    try:
        return await fn(args, out, settings)
    finally:
        await settings.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit code."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parser.parse_args(_attach_negative_values(argv, _value_options(parser)))
    except SystemExit as exc:  # --help, --version, or a usage error (code 2)
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
    _setup_logging(args.verbose)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        if args.command == "demo":
            from apr_async.cli.demo import run_demo  # noqa: PLC0415

            try:
                return int(run_demo(json_output=args.json, color=args.color))
            except KeyboardInterrupt:
                return EXIT_INTERRUPTED
        return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed subcommand, mapping user-facing errors to exit codes."""
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED
    except CliError as exc:
        _error(str(exc))
        return exc.code
    except socket.gaierror as exc:
        from apr_async.errors import describe_error  # noqa: PLC0415

        _error(describe_error(exc))
        return EXIT_RESOLUTION
    except (ValueError, TypeError) as exc:
        # The library checks its arguments (and APR_ASYNC_* settings) before any I/O.
        _error(str(exc))
        return EXIT_USAGE
    except PermissionError as exc:
        _error(f"permission denied: {exc.strerror or exc}")
        return EXIT_SYSTEM
    except OSError as exc:
        _error(exc.strerror or str(exc) if not exc.filename else str(exc))
        return EXIT_SYSTEM


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
