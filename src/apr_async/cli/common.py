"""Shared plumbing of the CLI subcommands: settings, address text, output."""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from apr_async.cli.render import Style, to_json
from apr_async.config import Config
from apr_async.resolve.pairs import PairContext
from apr_async.resolve.resolver import Resolver

__all__ = [
    "Output",
    "Settings",
    "family_arg",
    "family_name",
    "sockaddr_text",
]


def sockaddr_text(addr: Sequence[Any] | None, *, port: bool = True) -> str:
    """``("2001:db8::1", 80, 0, 0)`` -> ``[2001:db8::1]:80``; link-local keeps its zone name."""
    if addr is None:
        return "(kernel's choice)"
    host = str(addr[0])
    if len(addr) >= 4 and addr[3]:
        try:
            zone = socket.if_indextoname(int(addr[3]))
        except OSError:
            zone = str(addr[3])
        host = f"{host}%{zone}"
    if not port or not addr[1]:
        return host
    return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"


def family_arg(args: argparse.Namespace) -> int:
    """The address family asked for with ``-4``/``-6`` (0: both)."""
    return {None: 0, 4: socket.AF_INET, 6: socket.AF_INET6}[getattr(args, "family", None)]


def family_name(family: int) -> str:
    """``AF_INET6`` -> ``IPv6``."""
    if family == socket.AF_INET6:
        return "IPv6"
    return "IPv4" if family == socket.AF_INET else str(family)


@dataclass
class Output:
    """Where and how a subcommand writes: JSON or text, with colours decided once."""

    json: bool
    style: Style
    stream: TextIO

    @classmethod
    def from_args(cls, args: argparse.Namespace, stream: TextIO | None = None) -> Output:
        """Build from ``--json`` and ``--color``."""
        out = stream or sys.stdout
        return cls(bool(args.json), Style.for_stream(out, getattr(args, "color", "auto")), out)

    def print(self, text: str = "") -> None:
        """A line of text for people."""
        self.stream.write(text + "\n")
        self.stream.flush()

    def emit(self, data: object) -> None:
        """One JSON document (one line)."""
        self.stream.write(to_json(data) + "\n")
        self.stream.flush()


class Settings:
    """The effective configuration: defaults, then ``APR_ASYNC_*``, then command-line options."""

    def __init__(self, args: argparse.Namespace) -> None:
        overrides: dict[str, Any] = {}
        if getattr(args, "nameserver", None):
            overrides["nameservers"] = tuple(args.nameserver)
        if getattr(args, "target", None):
            overrides["targets"] = tuple(args.target)
        if getattr(args, "icmp", None):
            overrides["icmp"] = args.icmp
        if getattr(args, "probe_interval", None) is not None:
            overrides["probe_interval"] = args.probe_interval
        self.config = Config.from_env(**overrides)
        self._context: PairContext | None = None

    def resolver(self) -> Resolver:
        """A resolver on the configured nameservers (the system's when none)."""
        return Resolver(list(self.config.nameservers) or None, timeout=self.config.dns_timeout)

    def context(self) -> PairContext:
        """A ranking context of its own (so the CLI never touches the process default)."""
        if self._context is None:
            self._context = PairContext(
                resolver=self.resolver(), ipv6_bias_ms=self.config.ipv6_bias_ms
            )
        return self._context

    async def aclose(self) -> None:
        """Release the resolver."""
        if self._context is not None and self._context.resolver is not None:
            await self._context.resolver.close()
