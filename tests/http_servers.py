"""Real HTTP servers for the integration tests: hypercorn (HTTP/1.1 and, over TLS with ALPN,
HTTP/2) serving a tiny ASGI app that reports the peer it saw and the HTTP version."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config


async def whoami(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI app: ``{"peer": ..., "http_version": ...}`` as JSON."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    client = scope.get("client") or ("?", 0)
    body = json.dumps({
        "peer": str(client[0]).removeprefix("::ffff:"),
        "peer_port": client[1],
        "http_version": scope.get("http_version"),
    }).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def make_cert(directory: Path, names: list[str]) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for ``names`` (openssl): (ca, cert, key)."""
    ca_key, ca = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "srv.key", directory / "srv.csr", directory / "srv.pem"
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=" + ",".join(
        f"IP:{n}" if n[0].isdigit() or ":" in n else f"DNS:{n}" for n in names) + "\n")
    for argv in (
        f"req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {ca_key} "
        f"-out {ca} -days 1 -subj /CN=apr-integration-test-CA",
        f"req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {key} -out {csr} "
        "-subj /CN=apr-integration-test",
        f"x509 -req -in {csr} -CA {ca} -CAkey {ca_key} -CAcreateserial -out {cert} -days 1 "
        f"-extfile {ext}",
    ):
        subprocess.run(["openssl", *argv.split()], check=True, capture_output=True, timeout=60)
    return ca, cert, key


@asynccontextmanager
async def hypercorn_server(
    sock: socket.socket, *, cert: Path | None = None, key: Path | None = None
) -> AsyncIterator[int]:
    """Serve :func:`whoami` on the bound socket ``sock`` (hypercorn takes it over); yield its
    port. With ``cert``/``key``: TLS, ALPN h2 and http/1.1."""
    port = int(sock.getsockname()[1])
    sock.listen(64)
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 0.5
    if cert is not None and key is not None:
        config.certfile, config.keyfile = str(cert), str(key)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(whoami, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)  # let hypercorn start listening on it
    try:
        yield port
    finally:
        stop.set()
        await task
