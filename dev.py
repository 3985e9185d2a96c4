#!/usr/bin/env python3
"""One-step developer set-up for apr_async.

    python3 dev.py demo     set everything up, then run ``apr-async demo``
    python3 dev.py test     set everything up, then run ruff, mypy --strict and the test suite

Works on a fresh machine that has nothing but ``python3``: it creates ``.venv`` (installing
Debian's ``python3-venv`` first when the interpreter lacks ``ensurepip``), installs the project
with its ``dev`` extra into it, and, when running as root on Debian, installs the system tools
the network lab, the tests and the benchmarks run: every package of the table
``DEBIAN_TOOLS`` in ``src/apr_async/tools.py`` whose program is missing (iproute2, nftables,
iptables, iputils-ping, haproxy, curl, openssl, gcc, ...), and says which it installed.
Only the standard library is used here, on purpose: this file runs before anything is installed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
VENV_BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".apr-async-installed"
VENV_EAGER = ROOT / ".venv-eager"


def _load_tools() -> ModuleType:
    """``src/apr_async/tools.py``, loaded by path: the package is not installed yet, and the
    table of system tools must be the one the lab and the tests check (not a copy)."""
    path = ROOT / "src" / "apr_async" / "tools.py"
    spec = importlib.util.spec_from_file_location("_apr_async_tools", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOOLS = _load_tools()
# program the project runs -> Debian package providing it (apr_async.tools.DEBIAN_TOOLS)
DEBIAN_TOOLS: dict[str, str] = TOOLS.DEBIAN_TOOLS


def log(msg: str) -> None:
    print(f"[dev.py] {msg}", flush=True)


def run(cmd: list[str], **kw: object) -> None:
    subprocess.run(cmd, check=True, **kw)  # type: ignore[call-overload]


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def apt_install(packages: list[str]) -> bool:
    """Install Debian ``packages`` with apt-get; False when that is not possible here."""
    if not packages:
        return True
    if not (is_root() and shutil.which("apt-get")):
        log(f"missing system packages {packages}; not root or no apt-get, so not installed "
            "(tests needing them skip, or fail with APR_ASYNC_REQUIRE_LAB=1)")
        return False
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log(f"installing Debian packages: {' '.join(packages)}")
    try:
        run(["apt-get", "update", "-qq"], env=env)
        run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], env=env,
            stdout=subprocess.DEVNULL)
    except subprocess.CalledProcessError as exc:
        log(f"apt-get failed (exit {exc.returncode}) installing {' '.join(packages)}")
        return False
    return True


def ensure_system_tools() -> None:
    """Install the Debian package of every program in apr_async.tools.DEBIAN_TOOLS that is
    missing, and say what was installed."""
    missing = TOOLS.missing_packages()
    if not missing:
        log(f"system tools: all {len(DEBIAN_TOOLS)} programs of {TOOLS.TABLE} are present")
        return
    log(f"system tools missing: {', '.join(TOOLS.missing_tools())}")
    if not apt_install(missing):
        return
    still = set(TOOLS.missing_packages())
    installed = [pkg for pkg in missing if pkg not in still]
    log(f"installed: {' '.join(installed) if installed else 'nothing'}")
    if still:
        log(f"still missing after apt-get: {' '.join(sorted(still))}")


def ensure_venv() -> None:
    python = VENV_BIN / "python"
    if not python.exists():
        probe = subprocess.run([sys.executable, "-c", "import ensurepip, venv"],
                               capture_output=True, check=False)
        if probe.returncode != 0:
            ver = f"{sys.version_info.major}.{sys.version_info.minor}"
            apt_install([f"python{ver}-venv"])
        log(f"creating {VENV}")
        run([sys.executable, "-m", "venv", str(VENV)])
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    log("installing apr_async[dev] into .venv (first run takes a minute)")
    run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"])
    run([str(python), "-m", "pip", "install", "-q", "-e", f"{ROOT}[dev]"])
    STAMP.write_text(digest)


def find_eager_python() -> str | None:
    """A Python >= 3.12 (which has asyncio.eager_task_factory) if this machine has one."""
    candidates = [shutil.which(n) for n in ("python3.13", "python3.12")]
    pyenv = sorted(Path.home().glob(".pyenv/versions/3.1[2-9]*/bin/python3"))
    candidates += [str(p) for p in pyenv]
    for cand in candidates:
        if cand and subprocess.run([cand, "-c", "import asyncio, venv; asyncio.eager_task_factory"],
                                   capture_output=True, check=False).returncode == 0:
            return cand
    return None


def ensure_eager_venv() -> str | None:
    """A second venv on Python >= 3.12 for the eager-task-factory test, when one exists here.

    The project supports Python 3.11, which has no eager task factory; that test runs the
    connector under one in a subprocess of a newer interpreter and skips (saying so) without it.
    """
    python = VENV_EAGER / "bin" / "python"
    stamp = VENV_EAGER / ".apr-async-installed"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == digest:
        return str(python)
    base = find_eager_python()
    if base is None:
        return None
    log(f"creating {VENV_EAGER} with {base} for the eager-task-factory test")
    run([base, "-m", "venv", "--clear", str(VENV_EAGER)])
    run([str(python), "-m", "pip", "install", "-q", "-e", str(ROOT),
         "pytest", "pytest-asyncio"])
    stamp.write_text(digest)
    return str(python)


def tool(name: str) -> str:
    return str(VENV_BIN / name)


def cmd_test(args: list[str]) -> int:
    os.chdir(ROOT)
    env = dict(os.environ)
    if is_root() and sys.platform.startswith("linux"):
        # Here (root on Linux) and in CI the lab tests must run: make a missing lab an error
        # instead of a skip, so a broken lab cannot hide behind green skips.
        env.setdefault("APR_ASYNC_REQUIRE_LAB", "1")
    eager = ensure_eager_venv()
    if eager is not None:
        env.setdefault("APR_ASYNC_EAGER_PYTHON", eager)
    steps = [
        ["ruff", [tool("ruff"), "check", "src", "tests", "examples", "benchmarks", "dev.py"]],
        ["mypy --strict", [tool("mypy"), "--strict"]],
        ["pytest", [tool("python"), "-m", "pytest", *args]],
    ]
    for label, cmd in steps:
        log(f"running {label}")
        rc = subprocess.run(cmd, env=env, check=False).returncode
        if rc != 0:
            log(f"{label} failed (exit {rc})")
            return rc
    return 0


def cmd_demo(args: list[str]) -> int:
    return subprocess.run([tool("apr-async"), "demo", *args], check=False).returncode


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in {"test", "demo"}:
        print(__doc__)
        return 2
    ensure_system_tools()
    ensure_venv()
    command, rest = sys.argv[1], sys.argv[2:]
    return cmd_test(rest) if command == "test" else cmd_demo(rest)


if __name__ == "__main__":
    sys.exit(main())
