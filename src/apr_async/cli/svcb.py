"""``--svcb`` for ``pairs`` and ``connect``: what the name's HTTPS records (RFC 9460) say.

Kept out of the subcommands so they change by a few lines: :func:`svcb_view` queries the
records, prints the endpoints and why each is where it is (or says in the JSON), and gives
the ``(host, port)`` the subcommand should go on with: the first endpoint, else the origin.
"""

from __future__ import annotations

import argparse
from typing import Any

from apr_async.cli.common import Output, Settings
from apr_async.resolve.https import HttpsAnswer, explain_https, svcb_endpoints

__all__ = ["svcb_json", "svcb_view"]


def svcb_json(answer: HttpsAnswer) -> dict[str, Any]:
    """The answer in JSON form."""
    return {
        "chain": list(answer.chain),
        "error": answer.error,
        "endpoints": [
            {"rank": e.rank + 1, "target": e.target, "port": e.port, "alpn": list(e.alpn),
             "hints": [str(h) for h in e.hints], "ech": e.ech is not None,
             "record": e.record.describe(), "why": e.reason}
            for e in answer.endpoints
        ],
        "skipped": [{"record": r, "why": w} for r, w in
                    (answer.plan.skipped if answer.plan is not None else ())],
    }


async def svcb_view(
    args: argparse.Namespace, out: Output, settings: Settings
) -> tuple[str, int, dict[str, Any] | None]:
    """With ``--svcb``: print the endpoints (text mode) and return where to go on, with the
    JSON to add to the subcommand's document; without it the origin and ``None``."""
    if not getattr(args, "svcb", False):
        return args.host, args.port, None
    answer = await svcb_endpoints(args.host, args.port, context=settings.context())
    if not out.json:
        out.print("HTTPS records of " + args.host + ":")
        for line in explain_https(answer):
            out.print("  " + line)
        out.print()
    if answer.endpoints:
        first = answer.endpoints[0]
        return first.target, first.port, svcb_json(answer)
    return args.host, args.port, svcb_json(answer)
