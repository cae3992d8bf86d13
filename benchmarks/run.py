"""Side-by-side benchmark of nbparallel and its peers, in one run, as ratios.

    python benchmarks/run.py [--quick] [--only WORKLOAD ...]

Every (library, workload) pair runs in a fresh process with a time limit (bench_one.py), a
warm-up first, then several repetitions; the cold start runs in several fresh processes. Writes
benchmarks/results/results.md (and results.json) with medians, min-max, ratios to the best peer
and to serial, peak memory of the whole process tree, the targets of the performance issue, and
the command. This machine is shared and noisy (2 cores): compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS = ["stdlib", "stdlib-spawn", "multiprocess", "futures", "joblib", "mpire", "pathos", "dask"]
WORKLOADS = {
    # name: (libraries, repeats, time limit s)
    "cold": (["nbparallel", *PEERS], 5, 120),
    "warm-small": (["nbparallel", "nbparallel+progress", *PEERS], 50, 120),
    "tiny-tasks": (["nbparallel", *PEERS], 5, 300),
    "cpu-bound": (["serial", "nbparallel", *PEERS], 3, 300),
    "big-numpy-arg": (["serial", "nbparallel", *PEERS], 3, 300),
    "big-global": (["serial", "nbparallel", *PEERS], 3, 300),
    "heavy-closure": (["serial", "nbparallel", *PEERS], 3, 300),
    "big-results": (["nbparallel", *PEERS], 3, 300),
    "progress-overhead": (["nbparallel", "nbparallel+progress"], 5, 300),
    "imap-million": (["nbparallel"], 1, 300),
}


def run_one(library: str, workload: str, repeats: int, limit: float) -> dict:
    name = "tiny-tasks" if workload == "progress-overhead" else workload
    runs = repeats if workload == "cold" else 1
    results = []
    for _ in range(runs):
        result = _bench(library, name, 1 if workload == "cold" else repeats, limit)
        if "error" in result:
            return result
        results.append(result)
    merged = dict(results[0])
    merged["times"] = [t for r in results for t in r["times"]]
    merged["median"] = statistics.median(merged["times"])
    merged["peak_mb"] = max(r["peak_mb"] for r in results)
    return merged


def _bench(library: str, workload: str, repeats: int, limit: float) -> dict:
    """Run bench_one.py in a process group of its own, read its one JSON line, then stop the
    whole group: some libraries leave workers behind that would hold the output pipe open."""
    process = subprocess.Popen(
        [sys.executable, str(HERE / "bench_one.py"), library, workload, str(repeats)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )
    found: list[str] = []
    reader = threading.Thread(target=lambda: found.extend(_first_json_line(process.stdout)), daemon=True)
    reader.start()
    reader.join(limit)
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the group we created: the benchmark and its workers
    except ProcessLookupError:
        pass
    process.wait()
    if not found:
        return {"error": f"no result within the time limit of {limit:.0f} s" if reader.is_alive()
                else f"no result (exit {process.returncode})"}
    return json.loads(found[0])


def _first_json_line(stream) -> list[str]:
    for line in stream:
        if line.startswith("{"):
            return [line]
    return []


def table(workload: str, rows: dict[str, dict]) -> list[str]:
    ok = {lib: r for lib, r in rows.items() if "error" not in r}
    peers = [r["median"] for lib, r in ok.items() if lib in PEERS]
    best_peer = min(peers) if peers else None
    serial = ok.get("serial", {}).get("median")
    serial_mb = ok.get("serial", {}).get("peak_mb")
    lines = [
        f"### {workload}", "",
        "| library | median s | min-max s | ratio to best peer | ratio to serial | peak MB (tree) | notes |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for lib, r in rows.items():
        if "error" in r:
            lines.append(f"| {lib} | failed | | | | | {r['error'].replace('|', '/')} |")
            continue
        extra = ", ".join(f"{k}={v:.3g}" for k, v in r.get("extra", {}).items())
        memory = f"{r['peak_mb']:.0f}" + (f" ({r['peak_mb'] / serial_mb:.2f}x serial)" if serial_mb else "")
        lines.append(
            f"| {lib} | {r['median']:.4f} | {min(r['times']):.4f}-{max(r['times']):.4f} | "
            f"{r['median'] / best_peer:.2f}x | " if best_peer else f"| {lib} | {r['median']:.4f} | "
            f"{min(r['times']):.4f}-{max(r['times']):.4f} | | "
        )
        lines[-1] += (f"{r['median'] / serial:.2f}x | " if serial else " | ") + f"{memory} | {extra} |"
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", default=list(WORKLOADS))
    args = parser.parse_args()
    command = "python benchmarks/run.py" + (f" --only {' '.join(args.only)}" if args.only != list(WORKLOADS) else "")
    started = time.time()
    results: dict[str, dict[str, dict]] = {}
    for workload in args.only:
        libraries, repeats, limit = WORKLOADS[workload]
        results[workload] = {}
        for library in libraries:
            results[workload][library] = run_one(library, workload, repeats, limit)
            r = results[workload][library]
            print(f"{workload:18} {library:20} {r.get('median', r.get('error'))}", flush=True)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    lines = [
        "# nbparallel against its peers", "",
        f"Command: `{command}`, run {time.strftime('%Y-%m-%d')} in {time.time() - started:.0f} s "
        f"on {platform.machine()}, Python {platform.python_version()}, 2 cores (shared, noisy: read ratios).",
        "Each library is used as a notebook user would (functions in `__main__`, lambdas where it can "
        "send them), in its own process, warm-up first. 'Ratio to best peer' compares with the fastest "
        "peer in the same table; peak memory is the whole process tree.", "",
    ]
    for workload, rows in results.items():
        lines += table(workload, rows)
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'results.md'}")


if __name__ == "__main__":
    main()
