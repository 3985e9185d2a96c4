"""Where pairs come from: the DNS resolver (aiodns), the host's addresses and routes (netlink),
and the calls that join them with the core's ranking: ``get_addr_pairs`` (pairs.py),
``getaddrinfo`` (addrinfo.py), ``explain`` (explain.py). May import: ``core``, ``config``,
``errors``.
"""
