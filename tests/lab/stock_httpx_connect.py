"""Run inside the lab's client namespace (a subprocess, so that ``ip netns exec`` gives it the
lab's hosts file): how long stock httpx (httpcore's anyio backend, its own Happy Eyeballs)
takes to connect to URL. Prints JSON: {"connect": seconds} or {"error": text}."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import httpx


async def main(url: str) -> dict[str, Any]:
    marks: dict[str, float] = {}

    async def trace(event: str, info: dict[str, Any]) -> None:
        marks[event] = time.monotonic()

    async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, connect=3.0)) as client:
        try:
            response = await client.get(url, extensions={"trace": trace})
        except httpx.HTTPError as exc:
            return {"error": repr(exc)}
    return {"status": response.status_code, "peer": response.json()["peer"],
            "connect": marks["connection.connect_tcp.complete"]
            - marks["connection.connect_tcp.started"]}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1]))))
