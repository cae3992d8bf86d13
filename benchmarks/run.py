"""Side-by-side benchmark of nbparallel and its peers, in one run, as paired ratios.

    python benchmarks/run.py [--only WORKLOAD ...] [--report-only]

The libraries of a workload run interleaved, in rounds (A B C, A B C, ...): each round runs every
library once, each in a fresh process with a time limit (bench_one.py: a warm-up, then several
repetitions); the cold start is one fresh process per round. A library's time is the median over
rounds of its per-round medians, and its ratio to nbparallel is taken within each round (the
libraries of one round saw about the same load), reported as the median ratio with its min-max
over rounds; a row whose min-max straddles 1.0 is within noise. Writes benchmarks/results/
results.md (and results.json) with those, peak memory of the whole process tree, the targets of
the performance issue, and the command. This machine is shared and noisy (2 cores): compare
ratios, not seconds.
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
# Those with a per-worker initializer (MPIRE's worker_init, the others' initializer=).
MPIRE_SHAPE_PEERS = ["mpire", "stdlib", "stdlib-spawn", "futures", "multiprocess"]
WORKLOADS = {
    # name: (libraries, rounds, repeats in each library's process per round, time limit s)
    "cold": (["nbparallel", *PEERS], 5, 1, 120),
    "warm-small": (["nbparallel", "nbparallel+progress", *PEERS], 3, 20, 120),
    "tiny-tasks": (["nbparallel", *PEERS], 3, 3, 300),
    # The same items as a list, not a range (which nbparallel sends as ranges): the fast peers only.
    "tiny-tasks-list": (
        ["nbparallel", "stdlib", "stdlib-spawn", "multiprocess", "pathos"],
        3,
        3,
        300,
    ),
    # A ratio of two medians on a shared machine (serial alone varies by 20%): more runs.
    "cpu-bound": (["serial", "nbparallel", *PEERS], 3, 3, 300),
    "big-numpy-arg": (["serial", "nbparallel", *PEERS], 3, 2, 300),
    # MPIRE twice: its kept pool (which sees the globals of when it forked: stale, so it fails
    # the check) and a pool per map as its README writes it (forked per call: fresh, and free).
    "big-global": (["serial", "nbparallel", *PEERS, "mpire-per-map"], 3, 2, 300),
    "heavy-closure": (["serial", "nbparallel", *PEERS], 3, 2, 300),
    "big-results": (["nbparallel", *PEERS], 3, 2, 300),
    # MPIRE's own benchmark shapes (its README): an image and filters, a per-worker state, a
    # model loaded once per worker; every library with its own per-worker set-up. Three runs
    # each, so that the median is past a first run's imports in fresh workers (first_s).
    "mpire-numerical": (["serial", "nbparallel", *MPIRE_SHAPE_PEERS], 3, 3, 300),
    "mpire-stateful": (["serial", "nbparallel", *MPIRE_SHAPE_PEERS], 3, 3, 300),
    "mpire-expensive-init": (["serial", "nbparallel", *MPIRE_SHAPE_PEERS], 3, 3, 300),
    # Progress on versus off, alternately: the text bar in a script, the widget in a real kernel.
    "progress-overhead": (["nbparallel", "nbparallel-kernel"], 1, 300, 300),
    "imap-million": (["nbparallel"], 1, 1, 300),
}


def run_rounds(workload: str, libraries: list[str], rounds: int, repeats: int, limit: float):
    """Every library once per round, in turn, each in a fresh process. A library that fails is
    left out of the later rounds (its error is what the table shows)."""
    runs: dict[str, list[dict]] = {library: [] for library in libraries}
    for number in range(rounds):
        for library in libraries:
            if runs[library] and "error" in runs[library][-1]:
                continue
            result = _bench(library, workload, repeats, limit)
            runs[library].append(result)
            shown = f"{result['median']:.4g} s" if "error" not in result else result["error"]
            print(f"{workload:20} round {number + 1}/{rounds} {library:20} {shown}", flush=True)
    return {library: _merge(done) for library, done in runs.items()}


def _merge(runs: list[dict]) -> dict:
    """One library's rounds: the median of its per-round medians, every time, the peak memory."""
    if any("error" in r for r in runs):
        return next(r for r in runs if "error" in r)
    merged = dict(runs[-1])
    merged["rounds"] = [r["median"] for r in runs]
    merged["times"] = [t for r in runs for t in r["times"]]
    merged["median"] = statistics.median(merged["rounds"])
    merged["peak_mb"] = max(r["peak_mb"] for r in runs)
    merged["extra_rounds"] = {k: [r["extra"][k] for r in runs] for k in runs[-1].get("extra", {})}
    merged["extra"] = {k: statistics.median(v) for k, v in merged["extra_rounds"].items()}
    return merged


def paired(rows: dict[str, dict], library: str, base: str) -> list[float]:
    """`library`'s time over `base`'s, round by round (a library that failed has no rounds)."""

    def rounds(name: str) -> list[float]:
        row = rows.get(name, {})
        return row.get("rounds") or ([row["median"]] if "median" in row else [])

    a, b = rounds(library), rounds(base)
    if len(a) != len(b):
        return []
    return [x / y for x, y in zip(a, b, strict=True) if y]


def _bench(library: str, workload: str, repeats: int, limit: float) -> dict:
    """Run bench_one.py in a process group of its own, read its one JSON line, then stop the
    whole group: some libraries leave workers behind that would hold the output pipe open."""
    process = subprocess.Popen(
        [sys.executable, str(HERE / "bench_one.py"), library, workload, str(repeats)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    found: list[str] = []
    reader = threading.Thread(
        target=lambda: found.extend(_first_json_line(process.stdout)), daemon=True
    )
    reader.start()
    reader.join(limit)
    timed_out = reader.is_alive()  # before the group is stopped, which ends the reader too
    _stop_group(process)
    if not found:
        return {
            "error": f"no result within the time limit of {limit:.0f} s"
            if timed_out
            else f"no result (exit {process.returncode})"
        }
    return json.loads(found[0])


def _stop_group(process: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop the group we created, the benchmark and everything it started, SIGTERM first.
    Workers die of it, but the resource trackers of multiprocessing and loky ignore it: they
    outlive the workers and then remove the semaphores and /dev/shm folders their library
    registered, which SIGKILL alone leaves behind. What is left after `grace` s is killed."""
    deadline = time.monotonic() + grace
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
            while time.monotonic() < deadline:
                process.poll()  # reap the benchmark itself: a zombie is still in the group
                os.killpg(process.pid, 0)  # raises once the group is empty
                time.sleep(0.05)
        except ProcessLookupError:
            break
    process.wait()


def _first_json_line(stream) -> list[str]:
    for line in stream:
        if line.startswith("{"):
            return [line]
    return []


def table(workload: str, rows: dict[str, dict]) -> list[str]:
    ok = {lib: r for lib, r in rows.items() if "error" not in r}
    serial_mb = ok.get("serial", {}).get("peak_mb")
    lines = [
        f"### {workload}",
        "",
        "| library | median s | min-max s (all runs) | rounds | time / nbparallel's, paired by round: median (min-max) | peak MB (tree) | notes |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for lib, r in rows.items():
        if "error" in r:
            lines.append(f"| {lib} | failed | | | | | {r['error'].replace('|', '/')} |")
            continue
        extra = ", ".join(f"{k}={v:.3g}" for k, v in r.get("extra", {}).items())
        memory = f"{r['peak_mb']:.0f}" + (
            f" ({r['peak_mb'] / serial_mb:.2f}x serial)" if serial_mb else ""
        )
        ratios = paired(rows, lib, "nbparallel") if lib != "nbparallel" else []
        versus = (
            f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
            + (" within noise" if min(ratios) <= 1.0 <= max(ratios) else "")
            if ratios
            else ""
        )
        lines.append(
            f"| {lib} | {r['median']:.4f} | {min(r['times']):.4f}-{max(r['times']):.4f} | "
            f"{len(r.get('rounds', [r['median']]))} | {versus} | {memory} | {extra} |"
        )
    return lines + [""]


DILL_OR_CLOUDPICKLE_PEERS = ["multiprocess", "joblib", "mpire", "pathos", "dask"]

# Why a target is missed, for the results file (shown only for targets this run missed).
WHY_MISSED = {
    "tiny-stretch": "before each item a worker writes which item runs into the slot it shares with the pool, "
    "and checks whether the call was cancelled (about 40 ns per item, 4 ms per call here; a "
    "bare loop is about as long again), which the stdlib Pool does not: that is what lets a "
    "crash or a timeout name its item and a cancelled call stop at the next one.",
    "warm-small": "a call serializes its function (or checks that its captures are unchanged), copies the "
    "caller's context for printed output, and wakes a dispatcher thread: about 0.3 ms in all, "
    "where the stdlib Pool (which cannot send a lambda) only pickles a reference.",
    "cpu-bound": "16 tasks of about 0.1 s on a 2-core machine shared with other load; serial and parallel runs "
    "alternate in each library's process, and the speedup is the ratio of their medians. Peers' "
    "speedups measured the same way in this run: {cpu_peers}. nbparallel sends one item per task "
    "here, as every peer does, and its pool uses no CPU while tasks run.",
    "big-numpy-arg": "each worker copies the items it runs out of the notebook's memory (one system call per "
    "item, both workers in parallel); where that is not allowed, the items are written once "
    "into shared memory (one copy of 400 MB, about 0.15 s here) and measure about 0.67x joblib.",
    "big-global-memory": "the notebook's array (411 MB) plus the shared copy the workers map, written once per "
    "changed array and counted in each worker's memory as it reads it; a worker keeps those pages "
    "while tasks of the function follow (so calls over an unchanged array do not map them again) "
    "and gives them back after a second idle: the tree's RSS counts the one shared copy in every "
    "worker that read it (benchmarks/big_global.py: 1.46x serial, 1.41-1.61, against 1.10x before).",
    "progress": "on and off alternate in one process here. The bar's own cost is tqdm's set-up and its end "
    "display, about 0.45 ms per call (2% of a 20 ms call): more than that is the shared machine's noise.",
    "progress-widget": "the widget is a fixed cost per call, whatever its item count (redraws are at most 10 a "
    "second): three widget models, one display and one final update. Since this round, the bar is "
    "shown after the first chunks are sent, and ipykernel's flushes of empty output streams are "
    "skipped, so its messages go out while the workers run. That meets the target where the notebook "
    "waits on its workers (1.01-1.02x on a 60 ms call whose items sleep; benchmarks/widget_cost.py), "
    "not where the workers keep both of this machine's cores busy and the bar's 2-4 ms of kernel "
    "work competes with them: 1.03-1.06x on a 60 ms busy call, and more on this {kernel_call_ms:.0f} "
    "ms tiny-task call (5% is {kernel_budget_ms:.1f} ms). A tqdm.notebook bar around the same call "
    "costs 9.5-12.8 ms there (1.15-1.22x): nbparallel's is 0.09-0.42x of it.",
    "cold": "the whole process tree of one cold start uses about 490 ms of CPU here, stdlib spawn's 257 ms "
    "(getrusage, 15 interleaved rounds, benchmarks/results/cold_start.md); with both cores busy, wall "
    "time follows CPU time. Each nbparallel worker costs 90-115 ms of CPU against a spawn child's 50 "
    "(dill 13-17 ms, dataclasses 8-12 ms, multiprocessing.connection 6-12 ms, its own modules 15-20 ms). "
    "The parent's import is down from 80-100 ms to about 25 ms and the workers now boot while the "
    "parent imports the rest, which took the ratio from about 2.1x to 1.6-1.8x. 1.0x would need one "
    "booted worker forking the others (a fork server of our own): not done.",
    "big-global": "an unchanged array is hashed (xxh3, 15 ms for 400 MB here, 40-55 ms under load; two threads "
    "were no faster) and the shared copy reused, and each worker keeps the pages it read from one "
    "task of the function to the next; but a task that maps pages for the first time is followed "
    "by a page-table scan (5-40 ms for 400 MB mapped) that tells whether it wrote to them, which the "
    "first calls over an array pay until each worker has read every slice. MPIRE's per-map fork "
    "shares the notebook's pages outright. benchmarks/big_global.py measured 0.50x MPIRE per map "
    "(0.46-0.91, paired, 5 rounds at load 3.5-5), 0.63x the code before.",
    "big-global-first": "the first call (and one after a change) writes the 400 MB into shared memory: 185-390 ms "
    "here, alone 1.6-3.3x MPIRE's whole 117 ms call, which forks and shares the pages. Eight ways of "
    "writing a fresh memfd were measured (benchmarks/results/big_global.md: fallocate, pwrite from 2 "
    "threads, mmap with and without MAP_POPULATE); the current os.write loop was the fastest. Meeting "
    "it needs no copy at all on the first call (workers reading the array out of the notebook's "
    "memory, as large items already are): not done.",
    "mpire-shapes": "three rounds on a shared machine; where the min-max range straddles 1.0 the two are not told "
    "apart. Each nbparallel run is the README's way (an every-worker cell makes the state, then maps); "
    "MPIRE's is a pool with worker_state and worker_init per run, as its benchmarks write it.",
}


def _median(results: dict, workload: str, library: str) -> float | None:
    r = results.get(workload, {}).get(library, {})
    return r.get("median")


def _extra(results: dict, workload: str, key: str, library: str = "nbparallel") -> float | None:
    """A number bench_one.py measured besides the times (see its `extra`)."""
    return results.get(workload, {}).get(library, {}).get("extra", {}).get(key)


def _paired_extra(results: dict, workload: str, key: str, library: str, base: str) -> list[float]:
    """`library`'s extra `key` over `base`'s, round by round (as `paired` does for times)."""
    rows = results.get(workload, {})
    a = rows.get(library, {}).get("extra_rounds", {}).get(key, [])
    b = rows.get(base, {}).get("extra_rounds", {}).get(key, [])
    return [x / y for x, y in zip(a, b, strict=True) if y] if len(a) == len(b) else []


def _speedup(results: dict, library: str) -> float | None:
    """Serial time over parallel time, both medians measured alternately in the library's process."""
    return _extra(results, "cpu-bound", "speedup", library)


def targets(results: dict) -> list[str]:
    """The performance issue's targets, each checked against this file's numbers."""
    rows: list[tuple[str, str, bool | None, str]] = []

    spreads: dict[float, str] = {}  # a paired ratio's min-max over rounds, by its median

    def check(
        name: str, what: str, value: float | None, limit: float, below: bool = True, unit: str = "x"
    ) -> None:
        if value is None:
            rows.append((what, "not measured", None, name))
            return
        met = value <= limit if below else value >= limit
        rows.append((what, f"{value:.2f}{unit}{spreads.get(value, '')}", met, name))

    def ratio(workload: str, library: str, peer: str, extra: str | None = None) -> float | None:
        """The median over rounds of `library`'s time (or its `extra` figure) over `peer`'s in
        the same round."""
        ratios = (
            _paired_extra(results, workload, extra, library, peer)
            if extra
            else paired(results.get(workload, {}), library, peer)
        )
        if not ratios:
            return None
        value = statistics.median(ratios)
        noise = " within noise" if min(ratios) <= 1.0 <= max(ratios) else ""
        spreads[value] = f" ({min(ratios):.2f}-{max(ratios):.2f}{noise})"
        return value

    def memory(workload: str) -> float | None:
        r, s = (
            results.get(workload, {}).get("nbparallel", {}),
            results.get(workload, {}).get("serial", {}),
        )
        return r["peak_mb"] / s["peak_mb"] if "peak_mb" in r and "peak_mb" in s else None

    check(
        "tiny", "tiny tasks <= 1.5x stdlib Pool", ratio("tiny-tasks", "nbparallel", "stdlib"), 1.5
    )
    check(
        "tiny-stretch",
        "tiny tasks <= 1.0x stdlib Pool (stretch)",
        ratio("tiny-tasks", "nbparallel", "stdlib"),
        1.0,
    )
    check(
        "tiny",
        "tiny tasks, items in a list, <= 1.5x stdlib Pool",
        ratio("tiny-tasks-list", "nbparallel", "stdlib"),
        1.5,
    )
    check(
        "tiny-stretch",
        "tiny tasks, items in a list, <= 1.0x stdlib Pool (stretch)",
        ratio("tiny-tasks-list", "nbparallel", "stdlib"),
        1.0,
    )
    check(
        "warm-small",
        "warm small map, progress off, <= 3x stdlib Pool (fork)",
        ratio("warm-small", "nbparallel", "stdlib"),
        3.0,
    )
    check(
        "warm-small",
        "warm small map, progress off, <= 3x stdlib Pool (spawn)",
        ratio("warm-small", "nbparallel", "stdlib-spawn"),
        3.0,
    )
    dill_peers = [
        m for lib in DILL_OR_CLOUDPICKLE_PEERS if (m := _median(results, "warm-small", lib))
    ]
    with_bar = _median(results, "warm-small", "nbparallel+progress")
    check(
        "warm-progress",
        "warm small map with progress / fastest dill or cloudpickle peer < 1",
        with_bar / min(dill_peers) if with_bar and dill_peers else None,
        0.999,
    )
    check(
        "big-results",
        "big results <= 1.0x concurrent.futures",
        ratio("big-results", "nbparallel", "futures"),
        1.0,
    )
    check(
        "cpu-bound",
        "CPU-bound speedup over serial >= 1.9x",
        _speedup(results, "nbparallel"),
        1.9,
        below=False,
    )
    check(
        "big-numpy-arg",
        "big numpy argument <= 0.5x joblib",
        ratio("big-numpy-arg", "nbparallel", "joblib"),
        0.5,
    )
    check(
        "big-numpy-memory",
        "big numpy argument, peak memory <= 1.6x serial",
        memory("big-numpy-arg"),
        1.6,
    )
    check(
        "big-global",
        "big notebook global, unchanged, <= 0.5x MPIRE (a pool per map)",
        ratio("big-global", "nbparallel", "mpire-per-map"),
        0.5,
    )
    check(
        "big-global-first",
        "big notebook global, first call <= 1.5x MPIRE (a pool per map)",
        ratio("big-global", "nbparallel", "mpire-per-map", extra="first_call_s"),
        1.5,
    )
    check(
        "big-global-memory",
        "big notebook global, peak memory <= 1.6x serial",
        memory("big-global"),
        1.6,
    )
    first = _extra(results, "heavy-closure", "first_call_s")
    check("heavy-first", "heavy closure, first call <= 1 s", first, 1.0, unit=" s")
    check(
        "heavy",
        "heavy closure, repeated call <= 1.5x MPIRE",
        ratio("heavy-closure", "nbparallel", "mpire"),
        1.5,
    )
    check(
        "cold", "cold start <= 1.0x stdlib spawn", ratio("cold", "nbparallel", "stdlib-spawn"), 1.0
    )
    for shape in ("numerical", "stateful", "expensive-init"):
        check(
            "mpire-shapes",
            f"MPIRE's {shape} benchmark <= 1.0x MPIRE",
            ratio(f"mpire-{shape}", "nbparallel", "mpire"),
            1.0,
        )
    check(
        "progress",
        "text progress bar on / off on tiny tasks < 1.05",
        _extra(results, "progress-overhead", "on_over_off"),
        1.049,
    )
    check(
        "progress-widget",
        "progress widget on / off on tiny tasks, in a real kernel, < 1.05",
        _extra(results, "progress-overhead", "on_over_off", "nbparallel-kernel"),
        1.049,
    )
    lines = [
        "## Targets of the performance issue, checked",
        "",
        "| target | measured | met |",
        "| --- | --- | --- |",
    ]
    for what, measured, met, _ in rows:
        lines.append(f"| {what} | {measured} | {'yes' if met else 'no' if met is False else '-'} |")
    missed = [(what, name) for what, _, met, name in rows if met is False]
    kernel_call_ms = 1000 * (
        _extra(results, "progress-overhead", "off_s", "nbparallel-kernel") or float("nan")
    )
    facts = {
        "cpu_peers": ", ".join(
            f"{lib} {speedup:.2f}x"
            for lib in PEERS
            if (speedup := _speedup(results, lib)) is not None
        ),
        "kernel_call_ms": kernel_call_ms,
        "kernel_budget_ms": kernel_call_ms * 0.05,
    }
    if missed:
        lines += ["", "Why the missed ones are missed:", ""]
        lines += [
            f"- **{what}**: {WHY_MISSED.get(name, 'not explained yet.').format(**facts)}"
            for what, name in missed
        ]
    return lines + [""]


def write_report(out: Path, runs: list[str], results: dict) -> None:
    lines = [
        "# nbparallel against its peers",
        "",
        "Commands that produced this file, in order (a later `--only` run replaces those workloads):",
        "",
        *(f"- {run}" for run in runs),
        "",
        f"On {platform.machine()}, Python {platform.python_version()}, 2 cores (shared, noisy: read ratios). "
        "Each library is used as a notebook user would (functions in `__main__`, lambdas where it can "
        "send them), in its own process, warm-up first. The libraries of a workload run interleaved in "
        "rounds (each round runs each library once, in a fresh process); a time is the median of the "
        "per-round medians, and a ratio is taken within each round, then its median and min-max over "
        "the rounds are shown: 'within noise' marks a ratio whose min-max straddles 1.0 (the two "
        "swapped places between rounds). Peak memory is the whole process tree.",
        "",
        *targets(results),
    ]
    for workload in WORKLOADS:
        if workload in results:
            lines += table(workload, results[workload])
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'results.md'}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--only",
        nargs="*",
        default=list(WORKLOADS),
        help="run these workloads again; the others keep their results from the last run",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: write results.md again from results.json",
    )
    args = parser.parse_args()
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    kept = out / "results.json"
    partial = args.only != list(WORKLOADS)
    saved = json.loads(kept.read_text()) if (partial or args.report_only) and kept.exists() else {}
    results: dict[str, dict[str, dict]] = saved.get("results", {})
    runs: list[str] = saved.get("runs", [])
    if not args.report_only:
        started = time.time()
        for workload in args.only:
            libraries, rounds, repeats, limit = WORKLOADS[workload]
            results[workload] = run_rounds(workload, libraries, rounds, repeats, limit)
        command = "python benchmarks/run.py" + (f" --only {' '.join(args.only)}" if partial else "")
        runs.append(
            f"`{command}`, run {time.strftime('%Y-%m-%d %H:%M')} in {time.time() - started:.0f} s"
        )
        print(f"ran in {time.time() - started:.0f} s", flush=True)
        kept.write_text(json.dumps({"runs": runs, "results": results}, indent=1))
    write_report(out, runs, results)


if __name__ == "__main__":
    main()
