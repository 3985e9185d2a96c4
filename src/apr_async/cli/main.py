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
import warnings
from collections.abc import Awaitable, Callable, Sequence
from typing import TextIO

from apr_async.cli.exit import (
    EXIT_INTERRUPTED,
    EXIT_RESOLUTION,
    EXIT_SYSTEM,
    EXIT_USAGE,
    CliError,
)
from apr_async.cli.parser import build_parser

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
        from apr_async.cli.interfaces import cmd_interfaces  # noqa: PLC0415 - lazy on purpose

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
