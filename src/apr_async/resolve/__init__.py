"""Where pairs come from: the DNS resolver (aiodns), the host's addresses and routes (netlink),
and the ``get_addr_pairs`` / ``getaddrinfo`` / ``explain`` calls that join them with the core's
ranking. May import: ``core``, ``config``, ``errors``.
"""
