"""Time lab set-up, scenario switches and teardown; print a table (needs root).

    python benchmarks/lab_setup.py [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

from apr_async.lab import Lab, PathMode, Scenario, lab_unavailable_reason

SCENARIOS = {
    "v6 blackholed": Scenario.v6_blackholed(),
    "v6 rejected (RST)": Scenario.v6_rejected(PathMode.REJECT_RST),
    "v6 slower 50 ms": Scenario.v6_slower(0.05),
    "ULA trap": Scenario.ula_source_trap(),
    "NAT44": Scenario.nat44_masquerade(),
    "NPTv6": Scenario.nptv6_translation(),
    "IPv4-only client": Scenario.ipv4_only_client(),
    "healthy": Scenario.healthy(),
}


async def measure(rounds: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {"set-up": [], "teardown": []}
    for name in SCENARIOS:
        samples[f"switch: {name}"] = []
    for _ in range(rounds):
        lab = Lab()
        start = time.perf_counter()
        await lab.start()
        samples["set-up"].append(time.perf_counter() - start)
        try:
            for name, scenario in SCENARIOS.items():
                start = time.perf_counter()
                await lab.set_scenario(scenario)
                samples[f"switch: {name}"].append(time.perf_counter() - start)
        finally:
            start = time.perf_counter()
            await lab.close()
            samples["teardown"].append(time.perf_counter() - start)
    parallel: list[float] = []
    for _ in range(max(1, rounds // 3)):
        labs = [Lab() for _ in range(3)]
        start = time.perf_counter()
        try:
            await asyncio.gather(*(lab.start() for lab in labs))
            parallel.append(time.perf_counter() - start)
        finally:
            for lab in labs:
                await lab.close()
    samples["3 labs side by side"] = parallel
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    reason = lab_unavailable_reason()
    if reason is not None:
        print(f"lab_setup: skipped, {reason}")
        return 0
    samples = asyncio.run(measure(args.rounds))
    print(f"{'operation':<28} {'n':>3} {'min ms':>8} {'median ms':>10} {'max ms':>8}")
    for name, values in samples.items():
        ms = [v * 1000 for v in values]
        print(f"{name:<28} {len(ms):>3} {min(ms):>8.1f} {statistics.median(ms):>10.1f} "
              f"{max(ms):>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
