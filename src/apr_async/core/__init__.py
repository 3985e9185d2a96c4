"""The sans-IO core: address classification, RFC 6724, latency and failure tables, ranking,
the Happy Eyeballs schedule and connectivity status.

Nothing here opens a socket, reads a clock, sleeps or touches asyncio: callers pass ``now=``
(monotonic seconds) and the facts they observed, so every rule is testable without a network
and the schedule runs under virtual time. May import: the standard library's pure modules and
other ``core`` modules only (``tests/test_architecture.py`` checks it).
"""
