"""The getapr-compatible synchronous API: ranked pairs and connectivity status, no asyncio.

    APR_ASYNC_TARGETS=probe.example.net:443 python examples/sync_shim.py example.net 443

Connects with plain blocking sockets to the best working (source, destination) pair, as a
getapr prototype user would, then prints the status the background probes found.
"""

from __future__ import annotations

import socket
import sys

from apr_async import compat as getapr


def connect(host: str, port: int) -> int:
    getapr.init_getapr()
    for AF, SA, DA in getapr.get_addr_pairs(host, port, printing=True):
        with socket.socket(AF, socket.SOCK_STREAM) as sock:
            sock.settimeout(2.0)
            try:
                sock.bind(SA)
                sock.connect(DA)
            except OSError as exc:
                print(f"{SA[0]} -> {DA[0]}: {exc}")
                continue
            print(f"connected from {SA[0]} to {DA[0]} port {DA[1]}")
            break
    else:
        print("no pair worked")
        return 1
    print(getapr.status(wait=3.0))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(connect(sys.argv[1], int(sys.argv[2])))
