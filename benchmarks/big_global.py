"""The big notebook global (a 400 MB array read by a function mapped again and again): nbparallel
against MPIRE forking a pool per map, and serial, interleaved, as paired ratios.

    python benchmarks/big_global.py [--rounds N] [--repeats N] [--old CHECKOUT]

Each round runs bench_one.py's `big-global` workload once per library, each in a fresh process,
in turn (the order reversed every other round), so that the two sides of every ratio saw the
same load. bench_one reports the first call after the array is assigned, calls with it
unchanged, calls after one element changed in place, the first call over a new array, the peak
RSS of the process tree and the growth of the machine's shared memory. `--old` adds nbparallel
from another checkout (its code first on PYTHONPATH), to compare with the code before a change.
Writes benchmarks/results/big_global.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
MEASURES = {  # name in the table: how to read it from bench_one's output
    "first call": lambda r: r["extra"]["first_call_s"],
    "unchanged call": lambda r: r["median"],
    "after an in-place change": lambda r: r["extra"]["changed_call_s"],
    "first call, new array": lambda r: r["extra"]["new_array_call_s"],
    "peak RSS MB": lambda r: r["peak_mb"],
    "shared memory growth MB": lambda r: r["shmem_growth_mb"],
}


RUN_SECONDS = 120  # a run that has not answered by then is stopped and run again (one takes 5-30 s)
ATTEMPTS = 6


def run(library: str, repeats: int, pythonpath: str | None) -> dict:
    """One run of bench_one; run again if it hangs (MPIRE's pool at times waits forever on
    workers that are gone: seen three times in 2026-12-07's runs, at load 5-7)."""
    for _ in range(ATTEMPTS):
        result = run_once(library, repeats, pythonpath)
        if result is not None:
            return result
        print(f"{library}: no answer in {RUN_SECONDS} s, stopped; running it again", flush=True)
    raise SystemExit(f"{library}: no answer in {ATTEMPTS} runs")


def run_once(library: str, repeats: int, pythonpath: str | None) -> dict | None:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    # Stopped with its descendants once it has answered: forked workers that outlive the run
    # would hold the output pipe open. (Not a session of its own: MPIRE hangs in one.)
    process = subprocess.Popen(
        [sys.executable, str(HERE / "bench_one.py"), library, "big-global", str(repeats)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    line, deadline = "", time.monotonic() + RUN_SECONDS
    while not line.startswith("{"):
        ready, _, _ = select.select([process.stdout], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            line = ""
            break
        line = process.stdout.readline() or "{}"
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(process.pid).children(recursive=True):
            child.kill()
    process.kill()
    process.wait()
    if not line:
        return None
    result = json.loads(line)
    if "error" in result or not result:
        raise SystemExit(f"{library}: {result.get('error', 'no result')}")
    return result


def spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--old", help="a checkout of nbparallel to run as `nbparallel-old`")
    args = parser.parse_args()
    libraries = {"serial": None, "nbparallel": None, "mpire-per-map": None}
    if args.old:
        libraries["nbparallel-old"] = args.old
    rounds: list[dict[str, dict]] = []
    for number in range(args.rounds):
        order = list(libraries) if number % 2 == 0 else list(reversed(libraries))
        results = {}
        for name in order:
            library = "nbparallel" if name == "nbparallel-old" else name
            results[name] = run(library, args.repeats, libraries[name])
            print(number, name, {m: round(read(results[name]), 4) for m, read in MEASURES.items()})
        rounds.append(results)

    def medians(name: str) -> dict[str, float]:
        return {m: statistics.median(read(r[name]) for r in rounds) for m, read in MEASURES.items()}

    lines = [
        "# Big notebook global: nbparallel against MPIRE (a pool forked per map) and serial",
        "",
        f"Command: `python benchmarks/big_global.py --rounds {args.rounds} --repeats "
        f"{args.repeats}{' --old ' + args.old if args.old else ''}` (run "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, Python "
        f"{sys.version.split()[0]}, {os.cpu_count()} CPUs shared with other jobs, 2 workers).",
        "",
        "A function sums an eighth of a 400 MB notebook global per item, 8 items, chunksize 1.",
        "Seconds and MB: medians over the rounds; ratios: each round's pair, then median (min-max).",
        "",
        "| library | " + " | ".join(MEASURES) + " |",
        "| --- | " + " | ".join("---" for _ in MEASURES) + " |",
    ]
    for name in libraries:
        values = medians(name)
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values.values()) + " |")
    lines += ["", "| paired ratio | " + " | ".join(MEASURES) + " |", "| --- |" + " --- |" * 6]
    pairs = [("nbparallel", "mpire-per-map"), ("nbparallel", "serial"), ("mpire-per-map", "serial")]
    if args.old:
        pairs.append(("nbparallel", "nbparallel-old"))
    for a, b in pairs:
        cells = [  # none where the baseline has next to nothing (serial's shared memory)
            spread([read(r[a]) / read(r[b]) for r in rounds if read(r[b]) > 1e-3 * read(r[a])])
            for read in MEASURES.values()
        ]
        lines.append(f"| {a} / {b} | " + " | ".join(cells) + " |")
    out = HERE / "results" / "big_global.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
