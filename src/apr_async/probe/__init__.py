"""The probe service: ICMP and TCP probes as asyncio tasks, the probe plan and pacing,
network-change events, the warm-start cache, and the package's lazily started default service.
May import: ``core``, ``resolve``, ``config``, ``errors``.
"""
