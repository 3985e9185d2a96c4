"""Every knob of apr_async, with documented defaults and environment-variable overrides.

``Config(...)`` gives the built-in defaults plus the arguments given and never reads the
environment. ``Config.from_env(...)`` (and ``apr_async.configure(**changes)``, which calls it)
applies ``APR_ASYNC_<FIELD>`` variables on top of the defaults (field name upper-cased, e.g.
``APR_ASYNC_TARGETS``, ``APR_ASYNC_PROBE_INTERVAL``), and its keyword arguments override both.
Values are validated when the object is built, so a bad knob fails before any I/O. An
``APR_ASYNC_*`` variable that names no setting (a typo such as ``APR_ASYNC_TARGET``) draws one
``UserWarning`` naming the closest setting, since silently ignoring it could leave public
probing on when it was meant to be off.

Environment syntax: booleans ``1/true/yes/on`` or ``0/false/no/off``; tuples are separated by
commas or spaces (``none`` or an empty string gives an empty tuple); optional values accept
``none``.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import typing
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from apr_async.config.env_text import parse_env_text
from apr_async.core.sequences import str_tuple

__all__ = [
    "DEFAULT_TARGETS",
    "ENV_PREFIX",
    "Config",
    "ProbeTarget",
    "parse_target",
]

ENV_PREFIX = "APR_ASYNC_"

IcmpMode = Literal["auto", "privileged", "unprivileged", "off"]
NetwatchMode = Literal["auto", "netlink", "poll", "off"]

# Public anycast resolvers that also answer TCP 443: the built-in targets a real host probes
# to learn whether each source reaches beyond its gateway. Tests and labs always replace them
# (``targets=...`` or ``APR_ASYNC_TARGETS``); they are never probed from a test.
DEFAULT_TARGETS: tuple[str, ...] = (
    "1.1.1.1",
    "9.9.9.9",
    "2606:4700:4700::1111",
    "2620:fe::fe",
)


class ProbeTarget(NamedTuple):
    """A configured probe target: an IP literal or a host name, and an optional TCP port.

    ``port`` is ``None`` when the target text named none; the service then uses
    ``Config.probe_port``.
    """

    host: str
    port: int | None


def _check_port(port: int, text: str) -> int:
    if not 0 < port <= 65535:
        raise ValueError(f"probe target {text!r}: port {port} is outside 1-65535")
    return port


def parse_target(text: str) -> ProbeTarget:
    """Parse ``"192.0.2.1"``, ``"192.0.2.1:443"``, ``"[2001:db8::1]:443"``, ``"2001:db8::1"``,
    ``"fe80::1%eth0"`` or ``"host.example:443"`` into a :class:`ProbeTarget`.

    Raises ``ValueError`` for empty text, a bad port or a malformed bracket form.
    """
    if not isinstance(text, str):
        raise TypeError(f"probe target must be a str, not {type(text).__name__}")
    text = text.strip()
    if not text or "\x00" in text:
        raise ValueError(f"invalid probe target {text!r}")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not host:
            raise ValueError(f"probe target {text!r}: unbalanced brackets")
        if not rest:
            return ProbeTarget(host, None)
        if not rest.startswith(":") or not rest[1:].isdigit():
            raise ValueError(f"probe target {text!r}: expected ]:port")
        return ProbeTarget(host, _check_port(int(rest[1:]), text))
    if text.count(":") > 1:  # a bare IPv6 literal, possibly with a zone
        addr = text.split("%", 1)[0]
        try:
            ipaddress.IPv6Address(addr)
        except ValueError:
            raise ValueError(f"probe target {text!r} is not an IPv6 address") from None
        return ProbeTarget(text, None)
    host, sep, port_text = text.partition(":")
    if not host:
        raise ValueError(f"probe target {text!r}: empty host")
    if not sep:
        return ProbeTarget(host, None)
    if not port_text.isdigit():
        raise ValueError(f"probe target {text!r}: port {port_text!r} is not a number")
    return ProbeTarget(host, _check_port(int(port_text), text))


@dataclass(frozen=True, slots=True)
class Config:
    """All settings of the probe service and the ranking, immutable.

    ``Config(...)`` is the built-in defaults plus the arguments given: it does **not** read
    ``APR_ASYNC_*`` environment variables, so ``ProbeService(Config(targets=()))`` behaves the
    same whatever the environment. ``Config.from_env(**changes)`` and
    ``apr_async.configure(**changes)`` start from the environment instead (defaults, then
    ``APR_ASYNC_*``, then ``changes``). Use :func:`dataclasses.replace` to derive a variant of
    an existing object. Times are in seconds unless the name says otherwise.
    """

    #: Probe targets beyond the gateway (``host``, ``host:port``, ``[v6]:port``). Each is
    #: pinged (ICMP) and TCP-connected on its port (``probe_port`` when none is given).
    #: Any sequence of str (a list, a tuple, a generator) is accepted and kept as a tuple.
    targets: tuple[str, ...] = DEFAULT_TARGETS
    #: TCP port for configured targets that name none. Never 80: see the README's policy.
    probe_port: int = 443
    #: Seconds between probe rounds.
    probe_interval: float = 30.0
    #: Random spread of each round's start and of each probe inside a round, as a fraction of
    #: ``probe_interval`` (0 disables jitter).
    probe_jitter: float = 0.2
    #: Seconds before an unanswered probe counts as a loss.
    probe_timeout: float = 2.0
    #: Global limit on probes started per second (token bucket), all kinds together.
    probe_rate: float = 20.0
    #: Probes in flight at once, at most.
    max_concurrent_probes: int = 16
    #: ICMP echo: ``auto`` (raw socket if allowed, else ping socket, else off),
    #: ``privileged``, ``unprivileged`` or ``off``.
    icmp: IcmpMode = "auto"
    #: TCP connect probes on the targets' ports (a refusal proves the path too).
    tcp_probes: bool = True
    #: Probe the default gateways (ICMP only: a gateway is not a TCP service).
    probe_gateways: bool = True
    #: Destinations the application used recently that are re-probed on their own port.
    recent_destinations: int = 16
    #: A used destination is forgotten this long after its last use.
    recent_ttl: float = 600.0
    #: Minimum seconds between two re-probes of one used destination.
    recent_probe_interval: float = 60.0
    #: Weight of the newest sample in the latency EWMA (0 < w <= 1).
    ewma_weight: float = 0.25
    #: IPv6 keeps its lead unless it is more than this many milliseconds slower than IPv4.
    ipv6_bias_ms: float = 5.0
    #: Longest prefix an unmeasured IPv6 destination may inherit latency from.
    prefix_v6: int = 32
    #: Longest prefix an unmeasured IPv4 destination may inherit latency from.
    prefix_v4: int = 20
    #: Maximum (source, destination) entries in each of the latency, failure and status tables
    #: (least recent evicted). All three full cost about 1.9 kB per entry: 2 MB here.
    table_size: int = 1024
    #: A recorded connection failure is forgotten this long after it happened.
    failure_ttl: float = 600.0
    #: Observations older than this are ignored by the status (``None``: 2.5 probe rounds).
    status_max_age: float | None = None
    #: DNS servers for the resolver and NAT64 discovery (empty: the system's); IP literals,
    #: ``ip:port`` or ``[v6]:port``, as any sequence of str (kept as a tuple).
    nameservers: tuple[str, ...] = ()
    #: Seconds before a DNS query gives up.
    dns_timeout: float = 2.0
    #: Discover a NAT64 prefix (RFC 7050: AAAA of ipv4only.arpa).
    nat64_discovery: bool = True
    #: Keep a warm-start cache of latencies on disk.
    persist: bool = False
    #: Cache file (``None``: ``$XDG_CACHE_HOME/apr_async/latency.json``).
    cache_path: Path | None = None
    #: Seconds between two saves of the cache while the service runs.
    persist_interval: float = 300.0
    #: One prober per host: processes of this user sharing the cache directory elect one
    #: leader (``flock``) that probes and publishes a shared table the others read (see
    #: :mod:`apr_async.probe.shared`). ``None``: on for the package's default service (the one
    #: worker processes use implicitly), off for services constructed explicitly.
    share: bool | None = None
    #: Also probe RIPE Atlas anchors (fetched over HTTPS; off by default).
    atlas: bool = False
    #: Base URL of the RIPE Atlas REST API.
    atlas_url: str = "https://atlas.ripe.net/api/v2/"
    #: Anchors chosen per address family.
    atlas_per_family: int = 2
    #: Seconds between two choices of anchors.
    atlas_rotate_interval: float = 600.0
    #: Network-change detection: ``auto`` (netlink on Linux, else polling), ``netlink``,
    #: ``poll`` or ``off``.
    netwatch: NetwatchMode = "auto"
    #: Seconds between two looks at the interfaces when polling.
    poll_interval: float = 10.0
    #: Seconds of quiet after a netlink event before the addresses are re-read.
    netwatch_debounce: float = 0.2
    #: Start the default service in the background the first time it is needed.
    autostart: bool = True
    _parsed_targets: tuple[ProbeTarget, ...] = field(
        default=(), init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        for name in ("targets", "nameservers"):
            object.__setattr__(self, name, str_tuple(getattr(self, name), f"Config.{name}"))
        _validate(self)
        object.__setattr__(
            self, "_parsed_targets", tuple(parse_target(t) for t in self.targets)
        )

    @property
    def probe_targets(self) -> tuple[ProbeTarget, ...]:
        """The configured targets, parsed."""
        return self._parsed_targets

    @property
    def effective_status_max_age(self) -> float:
        """How old an observation may be and still count in the status."""
        if self.status_max_age is not None:
            return self.status_max_age
        return 2.5 * self.probe_interval + self.probe_timeout

    @property
    def effective_cache_path(self) -> Path:
        """The cache file, defaulting to the user's cache directory."""
        if self.cache_path is not None:
            return self.cache_path
        return default_cache_path()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Build a Config from defaults, then ``APR_ASYNC_*`` variables, then ``overrides``.

        ``env`` defaults to ``os.environ``. Malformed values raise ``ValueError`` naming the
        variable. An ``APR_ASYNC_*`` variable that is no setting is ignored with a
        ``UserWarning`` (once per variable and process) naming the closest setting.
        """
        environ = os.environ if env is None else env
        _warn_unknown_env(environ)
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        used: dict[str, str] = {}
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            name = ENV_PREFIX + f.name.upper()
            if name in environ:
                try:
                    values[f.name] = parse_env_text(environ[name], hints[f.name])
                    used[f.name] = name
                except ValueError as exc:
                    raise ValueError(f"{name}={environ[name]!r}: {exc}") from None
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls) if f.init}
        if unknown:
            raise TypeError(f"unknown Config field(s): {', '.join(sorted(unknown))}")
        values.update(overrides)
        try:
            return cls(**values)
        except ValueError as exc:
            from_env = [f"{used[k]}={environ[used[k]]!r}" for k in used if k not in overrides]
            if not from_env:
                raise
            raise ValueError(f"{exc} (environment: {', '.join(from_env)})") from None


#: ``APR_ASYNC_*`` variables that are not Config settings but belong to the project's own
#: tooling (the test suite), so they draw no warning.
OTHER_ENV_VARIABLES: frozenset[str] = frozenset(
    {"APR_ASYNC_REQUIRE_LAB", "APR_ASYNC_EAGER_PYTHON", "APR_ASYNC_TEST_CACHE"}
)
_warned_env: set[str] = set()


def _env_names() -> list[str]:
    return [ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Config) if f.init]


def _warn_unknown_env(environ: Mapping[str, str]) -> None:
    known = _env_names()
    for name in sorted(environ):
        if (
            not name.startswith(ENV_PREFIX)
            or name in known
            or name in OTHER_ENV_VARIABLES
            or name in _warned_env
        ):
            continue
        _warned_env.add(name)
        # Compared without the prefix, which every name shares and would make all look alike.
        close = difflib.get_close_matches(
            name.removeprefix(ENV_PREFIX), [k.removeprefix(ENV_PREFIX) for k in known], n=1
        )
        hint = f"; did you mean {ENV_PREFIX}{close[0]}?" if close else ""
        warnings.warn(
            f"{name} is not an apr_async setting and is ignored{hint}",
            UserWarning,
            stacklevel=3,
        )


def default_cache_path() -> Path:
    """``$XDG_CACHE_HOME/apr_async/latency.json`` (``~/.cache`` when the variable is unset)."""
    base = os.environ.get("XDG_CACHE_HOME")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "apr_async" / "latency.json"


def _validate(c: Config) -> None:
    def positive(name: str) -> None:
        value = getattr(c, name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"Config.{name} must be a number, not {type(value).__name__}")
        if not value > 0:
            raise ValueError(f"Config.{name} must be > 0, got {value!r}")

    for name in (
        "probe_interval",
        "probe_timeout",
        "probe_rate",
        "recent_ttl",
        "recent_probe_interval",
        "failure_ttl",
        "dns_timeout",
        "persist_interval",
        "atlas_rotate_interval",
        "poll_interval",
    ):
        positive(name)
    for name in ("max_concurrent_probes", "table_size", "atlas_per_family"):
        value = getattr(c, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"Config.{name} must be an integer >= 1, got {value!r}")
    if isinstance(c.recent_destinations, bool) or not isinstance(c.recent_destinations, int):
        raise TypeError("Config.recent_destinations must be an int")
    if c.recent_destinations < 0:
        raise ValueError("Config.recent_destinations must be >= 0")
    if not 0 <= c.probe_jitter < 1:
        raise ValueError(f"Config.probe_jitter must be in [0, 1), got {c.probe_jitter!r}")
    if not 0 < c.ewma_weight <= 1:
        raise ValueError(f"Config.ewma_weight must be in (0, 1], got {c.ewma_weight!r}")
    if c.ipv6_bias_ms < 0:
        raise ValueError("Config.ipv6_bias_ms must be >= 0")
    if c.netwatch_debounce < 0:
        raise ValueError("Config.netwatch_debounce must be >= 0")
    if not 0 <= c.prefix_v6 <= 128:
        raise ValueError(f"Config.prefix_v6 must be in 0-128, got {c.prefix_v6!r}")
    if not 0 <= c.prefix_v4 <= 32:
        raise ValueError(f"Config.prefix_v4 must be in 0-32, got {c.prefix_v4!r}")
    if not 0 < c.probe_port <= 65535:
        raise ValueError(f"Config.probe_port must be in 1-65535, got {c.probe_port!r}")
    if c.status_max_age is not None and not c.status_max_age > 0:
        raise ValueError("Config.status_max_age must be > 0 or None")
    if c.icmp not in typing.get_args(IcmpMode):
        raise ValueError(f"Config.icmp must be one of {typing.get_args(IcmpMode)}, got {c.icmp!r}")
    if c.netwatch not in typing.get_args(NetwatchMode):
        raise ValueError(
            f"Config.netwatch must be one of {typing.get_args(NetwatchMode)}, got {c.netwatch!r}"
        )
    for ns in c.nameservers:
        # pycares accepts "ip", "ip:port" and "[v6]:port"; the host must be a literal
        host = parse_target(ns).host
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            raise ValueError(f"Config.nameservers: {ns!r} is not an IP address") from None
    if not c.atlas_url.startswith(("http://", "https://")):
        raise ValueError(f"Config.atlas_url must be an http(s) URL, got {c.atlas_url!r}")
    if c.share is not None and not isinstance(c.share, bool):
        raise TypeError("Config.share must be a bool or None")
    if c.cache_path is not None and not isinstance(c.cache_path, Path):
        raise TypeError("Config.cache_path must be a pathlib.Path or None")
