"""nbparallel against itself at another commit, interleaved, as paired ratios.

    python benchmarks/compare_commits.py OLD_CHECKOUT NEW_CHECKOUT ROUNDS [workload:repeats,...]

Each round runs bench_one.py's nbparallel row of a workload with OLD then NEW on PYTHONPATH, in
fresh processes, and reports the median of NEW/OLD over the rounds (and every ratio): on a shared
machine two runs side by side see the same load, so their ratio moves far less than either time.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

BENCH_ONE = Path(__file__).resolve().parent / "bench_one.py"
DEFAULT = "cold:1,warm-small:50,tiny-tasks:5,big-results:3,cpu-bound:5,big-global:3"


def median_seconds(checkout: str, workload: str, repeats: int) -> float:
    done = subprocess.run(
        [sys.executable, str(BENCH_ONE), "nbparallel", workload, str(repeats)],
        cwd="/tmp",
        env={"PYTHONPATH": checkout, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    return float(json.loads(done.stdout.strip().splitlines()[-1])["median"])


def main() -> None:
    old, new, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rows = sys.argv[4] if len(sys.argv) > 4 else DEFAULT
    for row in rows.split(","):
        workload, repeats = row.split(":")
        ratios = []
        for _ in range(rounds):
            before = median_seconds(old, workload, int(repeats))
            ratios.append(median_seconds(new, workload, int(repeats)) / before)
        shown = ", ".join(f"{ratio:.2f}" for ratio in ratios)
        print(f"{workload}: new/old median {statistics.median(ratios):.3f} ({shown})", flush=True)


if __name__ == "__main__":
    main()
