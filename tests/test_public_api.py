"""The public API, listed name by name: moving modules inside the package must not change it.

A name added on purpose is added here too; a name that disappears fails this test.
"""

from __future__ import annotations

import importlib

import pytest

PUBLIC_API: dict[str, set[str]] = {
    "apr_async": {
        "AddrPair", "AddressKind", "AllAttemptsFailedError", "Config", "ConnectivityStatus",
        "DEFAULT_POLICY_TABLE", "Estimate", "FailureTable", "LatencyTable", "PairContext",
        "PolicyTable", "ProbeService", "RFC6724_UPDATE_POLICY_TABLE", "Scope", "SourceAddress",
        "__version__", "configure",
        "connect_socket", "create_connection", "explain", "explain_text", "get_addr_pairs",
        "getaddrinfo", "kind_of", "open_connection", "parse_address", "rank_pairs", "scope_of",
        "select_source", "sort_destinations", "status", "wait_ready",
        # HTTPS records (RFC 9460)
        "HttpsAnswer", "SvcbEndpoint", "SvcbOptions", "explain_https", "svcb_endpoints",
    },
    "apr_async.aiohttp": {"AprConnector", "AprResolver"},
    "apr_async.metrics": {"PathRTT", "Snapshot", "reset", "snapshot"},
    "apr_async.metrics_prometheus": {"AprCollector"},
    "apr_async.metrics_otel": {"instrument"},
    "apr_async.websockets": {"connect"},
    "apr_async.httpx": {"AprNetworkBackend", "AprStream", "AprTransport", "attempts_error"},
    "apr_async.server": {
        "Command", "DEFAULT_HEADER_TIMEOUT", "HeaderParser", "HeaderTooLargeError",
        "IncompleteHeaderError", "ProxyFamily", "ProxyHeader", "ProxyProtocolError", "Transport",
        "build_v1", "build_v2", "get_toa", "parse_header", "proxy_header", "real_peername",
        "start_server", "uoa_lookup",
    },
    "apr_async.compat": {"get_addr_pairs", "getaddrinfo", "init_getapr", "shutdown", "status"},
    "apr_async.lab": {
        "Accepted", "ClientPlan", "DNSServer", "EchoServer", "ExecResult", "HEALTHY", "HostName",
        "Lab", "LabNames", "LabUnavailableError", "NetnsError", "PathMode", "QueryRecord",
        "RouterPlan", "Scenario", "ServerPlan", "Topology", "ZoneEntry", "combine",
        "default_zone", "lab_namespaces", "lab_unavailable_reason", "sweep_stale_labs",
    },
}


@pytest.mark.parametrize("module_name", sorted(PUBLIC_API))
def test_public_module_exports_exactly_its_names(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert set(module.__all__) == PUBLIC_API[module_name]
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []


def test_console_script_target_exists() -> None:
    # pyproject's [project.scripts] says apr-async = "apr_async.cli:main"
    from apr_async.cli import main
    from apr_async.cli.main import main as real_main

    assert main is real_main
