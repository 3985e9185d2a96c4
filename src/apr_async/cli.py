"""The ``apr-async`` command line (also ``python -m apr_async``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from apr_async import __version__


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="apr-async",
        description="Ranked (source, destination) address pairs and Happy Eyeballs connections.",
    )
    parser.add_argument("--version", action="version", version=f"apr-async {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    demo = sub.add_parser(
        "demo",
        help="build a network lab in namespaces and show apr_async at work (needs root)",
    )
    demo.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from apr_async.demo import run_demo

        return run_demo(json_output=args.json)
    return 2  # pragma: no cover - argparse rejects unknown commands first


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
