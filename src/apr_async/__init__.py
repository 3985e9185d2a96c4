"""apr_async: asyncio-native outbound connections over ranked (source, destination) pairs.

Instead of a list of destination addresses, apr_async ranks (source, destination) address
pairs using RFC 6724, what the kernel's routes say, and what background probes measured,
then races them Happy-Eyeballs style (RFC 8305) with each attempt bound to its source.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
