"""Whether a lab can be built on this machine, and if not, why (root, capabilities, programs)."""

from __future__ import annotations

import os
from pathlib import Path

from apr_async.tools import DEBIAN_TOOLS, find_tool

__all__ = ["LAB_PROGRAMS", "lab_unavailable_reason"]

#: Programs every lab build runs (addresses and routes, the router's firewall and marks).
LAB_PROGRAMS: tuple[str, ...] = ("ip", "nft", "ip6tables")


_CAPABILITIES = {"CAP_NET_ADMIN": 12, "CAP_SYS_ADMIN": 21}


def _missing_capabilities() -> list[str]:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return []
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            effective = int(line.split()[1], 16)
            return [name for name, bit in _CAPABILITIES.items() if not effective >> bit & 1]
    return []


def lab_unavailable_reason() -> str | None:
    """Why a lab cannot be built here (``None`` when it can): root, ``ip``, netns support."""
    if not hasattr(os, "geteuid"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "building a lab needs root (network namespaces, veth, nftables)"
    missing = _missing_capabilities()
    if missing:
        return f"running as root but without {' and '.join(missing)} (a restricted container?)"
    for program in LAB_PROGRAMS:
        if find_tool(program) is None:
            return (f"{program!r} is not installed (Debian package {DEBIAN_TOOLS[program]}; "
                    f"`python3 dev.py test` as root installs it)")
    if not Path("/proc/self/ns/net").exists():
        return "this kernel has no network namespace support"
    return None
