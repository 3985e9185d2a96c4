"""``python -m apr_async demo`` runs end to end, in the lab and (without privileges) on loopback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from apr_async.lab import lab_namespaces


def run_demo(*args: str, prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [*(prefix or []), sys.executable, "-m", "apr_async", "demo", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.lab
def test_demo_in_the_lab_json() -> None:
    proc = run_demo("--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["mode"] == "lab"
    by_label = {c["label"]: c for c in result["connections"]}
    v6, v4 = by_label["healthy, IPv6"], by_label["healthy, IPv4"]
    assert v6["ok"] and v6["server_saw"] == result["lab"]["client"]["gua"]
    assert v4["ok"] and v4["server_saw"] == result["lab"]["client"]["v4"]
    assert by_label["NAT44, IPv4"]["server_saw"] != result["lab"]["client"]["v4"]
    assert by_label["IPv6 blackholed, IPv6"]["error"] == "timed out"
    assert set(result["dns"]["addresses"]) == {v6["destination"], v4["destination"]}
    assert lab_namespaces(result["lab"]["prefix"]) == []  # the demo cleaned up after itself


@pytest.mark.lab
def test_demo_readable_output() -> None:
    proc = run_demo()
    assert proc.returncode == 0, proc.stderr
    assert "connected" in proc.stdout and "timed out" in proc.stdout
    assert "2001:db8:5::10" in proc.stdout


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux setpriv")
def test_demo_without_privileges_explains_and_uses_loopback() -> None:
    # an empty capability bounding set: no namespaces can be made, as for a non-root user
    proc = run_demo("--json", prefix=["setpriv", "--bounding-set=-all", "--inh-caps=-all"])
    if proc.returncode != 0 and "setpriv" in proc.stderr:
        pytest.skip(f"setpriv cannot drop capabilities here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["mode"] == "loopback"
    assert "CAP_" in result["reason"] or "root" in result["reason"]
    assert all(c["ok"] for c in result["connections"])
    assert {c["destination"] for c in result["connections"]} <= {"127.0.0.1", "::1"}
