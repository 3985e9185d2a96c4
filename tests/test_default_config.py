"""The module-level functions follow the environment's configuration without configure().

Run in subprocesses: the default configuration is process-wide, and the point is what a fresh
program sees with only ``APR_ASYNC_*`` variables set.
"""

from __future__ import annotations

import os
import subprocess
import sys

from apr_async.lab.dnsserver import DNSServer, ZoneEntry

SCRIPT = """
import asyncio, sys
import apr_async

async def main():
    pairs = await apr_async.get_addr_pairs("svc.example.test", 443)
    print(sorted({pair[2][0] for pair in pairs}))
    print(apr_async.probe.default.current_service())

asyncio.run(main())
"""


def run_script(env_changes: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **env_changes)
    return subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=env, check=False, timeout=60)


async def test_env_nameservers_reach_the_module_level_functions() -> None:
    zone = {"svc.example.test": ZoneEntry(a=("127.0.0.7",), aaaa=("::1",))}
    async with DNSServer(zone, "127.0.0.1", 0) as dns:
        proc = await asyncio_run_in_thread(
            {"APR_ASYNC_NAMESERVERS": f"127.0.0.1:{dns.port}", "APR_ASYNC_AUTOSTART": "0"})
    assert proc.returncode == 0, proc.stderr
    addresses, service = proc.stdout.splitlines()
    assert addresses == "['127.0.0.7', '::1']"
    assert service == "None"  # autostart off: nothing probes


async def asyncio_run_in_thread(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # The DNS server runs on this loop, so the subprocess is waited for off the loop.
    import asyncio

    return await asyncio.to_thread(run_script, env)


def test_a_bad_setting_is_a_clear_error_naming_the_variable() -> None:
    proc = run_script({"APR_ASYNC_PROBE_INTERVAL": "soon", "APR_ASYNC_AUTOSTART": "0"})
    assert proc.returncode != 0
    assert "APR_ASYNC_PROBE_INTERVAL" in proc.stderr
