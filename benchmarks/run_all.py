"""Run every benchmark script in this folder, one after the other.

Each ``bench_*.py`` prints its own table (and saves plots under ``benchmarks/results/``).
Extra arguments are passed to every script, e.g. ``--quick``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    """Run each benchmark; return non-zero if any failed."""
    failed = []
    for script in sorted(HERE.glob("bench_*.py")):
        print(f"\n=== {script.name} ===", flush=True)
        rc = subprocess.run([sys.executable, str(script), *sys.argv[1:]], check=False).returncode
        if rc:
            failed.append(script.name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
