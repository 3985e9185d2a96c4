"""apr_async: asyncio-native outbound connections over ranked (source, destination) pairs.

Instead of a list of destination addresses, apr_async ranks (source, destination) address
pairs using RFC 6724, what the kernel's routes say, and what background probes measured,
then races them Happy-Eyeballs style (RFC 8305) with each attempt bound to its source.

The aiohttp integration lives in :mod:`apr_async.aiohttp` and the server-side helpers in
:mod:`apr_async.server`; importing this package imports neither aiohttp nor the lab.
"""

from __future__ import annotations

from apr_async.config import Config
from apr_async.connect.api import connect_socket, create_connection, open_connection
from apr_async.connect.errors import AllAttemptsFailedError
from apr_async.connect.svcb_race import SvcbOptions
from apr_async.core.addresses import AddressKind, Scope, kind_of, parse_address, scope_of
from apr_async.core.failures import FailureTable
from apr_async.core.latency import LatencyTable
from apr_async.core.latency_trie import Estimate
from apr_async.core.policy_table import (
    DEFAULT_POLICY_TABLE,
    RFC6724_UPDATE_POLICY_TABLE,
    PolicyTable,
)
from apr_async.core.ranking import AddrPair, rank_pairs
from apr_async.core.rfc6724 import sort_destinations
from apr_async.core.source_address import SourceAddress
from apr_async.core.source_selection import select_source
from apr_async.core.status import ConnectivityStatus
from apr_async.core.svcb_plan import SvcbEndpoint
from apr_async.probe.default import ProbeService, configure, status, wait_ready
from apr_async.resolve.addrinfo import getaddrinfo
from apr_async.resolve.explain import explain, explain_text
from apr_async.resolve.https import HttpsAnswer, explain_https, svcb_endpoints
from apr_async.resolve.pairs import PairContext, get_addr_pairs

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_POLICY_TABLE",
    "RFC6724_UPDATE_POLICY_TABLE",
    "AddrPair",
    "AddressKind",
    "AllAttemptsFailedError",
    "Config",
    "ConnectivityStatus",
    "Estimate",
    "FailureTable",
    "HttpsAnswer",
    "LatencyTable",
    "PairContext",
    "PolicyTable",
    "ProbeService",
    "Scope",
    "SourceAddress",
    "SvcbEndpoint",
    "SvcbOptions",
    "__version__",
    "configure",
    "connect_socket",
    "create_connection",
    "explain",
    "explain_https",
    "explain_text",
    "get_addr_pairs",
    "getaddrinfo",
    "kind_of",
    "open_connection",
    "parse_address",
    "rank_pairs",
    "scope_of",
    "select_source",
    "sort_destinations",
    "status",
    "svcb_endpoints",
    "wait_ready",
]
