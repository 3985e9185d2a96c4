"""Config: defaults, validation before any I/O, environment overrides."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import pytest

from apr_async.config import DEFAULT_TARGETS, Config, ProbeTarget, parse_target


def test_defaults_are_documented_values() -> None:
    c = Config()
    assert c.targets == DEFAULT_TARGETS
    assert c.probe_port == 443
    assert c.ipv6_bias_ms == 5.0
    assert (c.prefix_v6, c.prefix_v4) == (32, 20)
    assert c.atlas is False
    assert c.persist is False
    assert c.failure_ttl == 600.0
    # every configured default target gets a TCP port that is not 80
    assert all((t.port or c.probe_port) != 80 for t in c.probe_targets)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.1", ProbeTarget("192.0.2.1", None)),
        ("192.0.2.1:8443", ProbeTarget("192.0.2.1", 8443)),
        ("2001:db8::1", ProbeTarget("2001:db8::1", None)),
        ("[2001:db8::1]:443", ProbeTarget("2001:db8::1", 443)),
        ("[fe80::1%eth0]", ProbeTarget("fe80::1%eth0", None)),
        ("fe80::1%eth0", ProbeTarget("fe80::1%eth0", None)),
        ("anchor.example:443", ProbeTarget("anchor.example", 443)),
        (" host.example ", ProbeTarget("host.example", None)),
    ],
)
def test_parse_target(text: str, expected: ProbeTarget) -> None:
    assert parse_target(text) == expected


@pytest.mark.parametrize(
    "text", ["", "  ", "[2001:db8::1", "[2001:db8::1]x", "host:0", "host:65536", "host:http",
             ":443", "2001:db8::zz", "a\x00b"]
)
def test_parse_target_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_target(text)


@pytest.mark.parametrize(
    "change",
    [
        {"probe_interval": 0},
        {"probe_timeout": -1},
        {"probe_rate": 0},
        {"probe_jitter": 1.0},
        {"ewma_weight": 0},
        {"ewma_weight": 1.5},
        {"prefix_v6": 129},
        {"prefix_v4": 33},
        {"table_size": 0},
        {"max_concurrent_probes": 0},
        {"icmp": "sometimes"},
        {"netwatch": "psychic"},
        {"probe_port": 70000},
        {"targets": ("host:99999",)},
        {"nameservers": ("dns.example",)},
        {"atlas_url": "ftp://atlas"},
        {"status_max_age": 0},
    ],
)
def test_invalid_values_raise_value_error(change: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Config(**change)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "change",
    [{"targets": "1.1.1.1"}, {"probe_interval": "5"}, {"table_size": 1.5}, {"cache_path": "x"}],
)
def test_wrong_types_raise(change: dict[str, object]) -> None:
    with pytest.raises((TypeError, ValueError)):
        Config(**change)  # type: ignore[arg-type]


def test_env_overrides_and_explicit_overrides_win() -> None:
    env = {
        "APR_ASYNC_TARGETS": "10.0.0.1:8443, [2001:db8::2]:443",
        "APR_ASYNC_PROBE_INTERVAL": "2.5",
        "APR_ASYNC_TCP_PROBES": "off",
        "APR_ASYNC_TABLE_SIZE": "99",
        "APR_ASYNC_NAMESERVERS": "10.0.0.53 [2001:db8::53]:5353",
        "APR_ASYNC_CACHE_PATH": "/tmp/x.json",
        "APR_ASYNC_STATUS_MAX_AGE": "none",
        "APR_ASYNC_ICMP": "unprivileged",
    }
    c = Config.from_env(env, table_size=7)
    assert c.targets == ("10.0.0.1:8443", "[2001:db8::2]:443")
    assert c.probe_targets == (ProbeTarget("10.0.0.1", 8443), ProbeTarget("2001:db8::2", 443))
    assert c.probe_interval == 2.5
    assert c.tcp_probes is False
    assert c.table_size == 7
    assert c.nameservers == ("10.0.0.53", "[2001:db8::53]:5353")
    assert c.cache_path == Path("/tmp/x.json")
    assert c.status_max_age is None
    assert c.icmp == "unprivileged"


def test_unknown_env_variable_warns_once_with_the_closest_setting() -> None:
    # The typo leaves the default (public) targets in place: the user must hear about it.
    env = {"APR_ASYNC_TARGET": "none", "APR_ASYNC_PROBE_GATEWAYS": "0"}
    with pytest.warns(UserWarning, match="APR_ASYNC_TARGET is not an apr_async setting") as rec:
        c = Config.from_env(env)
    assert c.targets == DEFAULT_TARGETS
    assert len(rec) == 1
    assert "did you mean APR_ASYNC_TARGETS?" in str(rec[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Config.from_env(env)  # once per variable: no second warning


def test_unknown_env_variable_far_from_any_setting_warns_without_a_guess() -> None:
    with pytest.warns(UserWarning) as rec:
        Config.from_env({"APR_ASYNC_UNRELATED_KNOB_XYZZY": "1"})
    assert [str(w.message) for w in rec] == [
        "APR_ASYNC_UNRELATED_KNOB_XYZZY is not an apr_async setting and is ignored"
    ]


def test_known_and_tooling_env_variables_do_not_warn() -> None:
    env = {"APR_ASYNC_TARGETS": "none", "APR_ASYNC_REQUIRE_LAB": "1", "NOT_APR_ASYNC_X": "1"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Config.from_env(env)


def test_explicit_config_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APR_ASYNC_PROBE_INTERVAL", "2.5")
    monkeypatch.setenv("APR_ASYNC_TARGETS", "none")
    assert Config().probe_interval == 30.0
    assert Config(probe_port=8443).targets == DEFAULT_TARGETS
    assert Config.from_env().probe_interval == 2.5
    assert Config.from_env(probe_port=8443).targets == ()


def test_env_none_clears_targets() -> None:
    assert Config.from_env({"APR_ASYNC_TARGETS": "none"}).targets == ()


@pytest.mark.parametrize(
    ("name", "value"),
    [("APR_ASYNC_PROBE_INTERVAL", "soon"), ("APR_ASYNC_TCP_PROBES", "maybe"),
     ("APR_ASYNC_PROBE_INTERVAL", "-3"), ("APR_ASYNC_TARGETS", "[::1")],
)
def test_bad_env_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        Config.from_env({name: value})


def test_from_env_rejects_unknown_override() -> None:
    with pytest.raises(TypeError, match="bogus"):
        Config.from_env({}, bogus=1)


def test_frozen_and_replace_revalidates() -> None:
    c = Config(targets=())
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.probe_interval = 1.0  # type: ignore[misc]
    d = dataclasses.replace(c, targets=("10.1.2.3:22",))
    assert d.probe_targets == (ProbeTarget("10.1.2.3", 22),)
    with pytest.raises(ValueError):
        dataclasses.replace(c, probe_interval=-1.0)


def test_derived_values(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    c = Config(probe_interval=10.0, probe_timeout=1.0)
    assert c.effective_status_max_age == 26.0
    assert Config(status_max_age=3.0).effective_status_max_age == 3.0
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert c.effective_cache_path == tmp_path / "apr_async" / "latency.json"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert c.effective_cache_path == Path.home() / ".cache" / "apr_async" / "latency.json"
    assert Config(cache_path=tmp_path / "c.json").effective_cache_path == tmp_path / "c.json"


def test_share_setting_from_the_environment() -> None:
    assert Config().share is None  # on for the default service only
    assert Config.from_env({"APR_ASYNC_SHARE": "0"}).share is False
    assert Config.from_env({"APR_ASYNC_SHARE": "1"}).share is True
    with pytest.raises(TypeError, match="share"):
        Config(share="yes")  # type: ignore[arg-type]
