"""Cold start: a fresh process to its first result, nbparallel beside the stdlib pools; and in a
real kernel, the first map after `%load_ext nbparallel` beside a warm one.

    python benchmarks/cold_start.py script [--rounds 15] [--baseline CHECKOUT]
    python benchmarks/cold_start.py kernel [--rounds 5]

`script`: each round runs every library once, each in a fresh interpreter, in an order that
alternates from round to round; the time is from just before the interpreter is started (in this
process) to the first result of `map(inc, range(10))` on 2 workers (in the child, on the same
monotonic clock). Ratios are paired: nbparallel against the stdlib spawn pool of the same round.
`--baseline` adds nbparallel from another checkout (e.g. the commit before a change), interleaved
the same way.

`kernel`: each round starts a real kernel through jupyter_client, runs `%load_ext nbparallel` in
one cell, waits `--pause` seconds (a user writing the next cell), then times inside the kernel a
first small map, then warm ones. The same with NBPARALLEL_PRESTART=0 shows what the pre-start saves.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBRARIES = ("nbparallel", "stdlib-spawn", "stdlib-fork")
WORKERS = 2


def inc(x):
    return x + 1


def child(library: str) -> None:
    """In a fresh interpreter: start the library's pool, map once, print the monotonic time."""
    if library.startswith("nbparallel"):
        from nbparallel import parallel

        parallel.configure(workers=WORKERS, progress=False)
        result = parallel.map(inc, range(10))
    else:
        import multiprocessing

        pool = multiprocessing.get_context(library.split("-")[1]).Pool(WORKERS)
        result = pool.map(inc, range(10))
    done = time.monotonic()
    assert result == list(range(1, 11)), result
    print(json.dumps(done))
    if not library.startswith("nbparallel"):
        pool.terminate()


def one_start(library: str, baseline: str | None) -> float:
    env = {**os.environ}
    if library == "nbparallel-baseline":
        env["PYTHONPATH"] = str(baseline)
    started = time.monotonic()
    output = subprocess.run(
        [sys.executable, __file__, "child", library],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return float(output.split()[-1]) - started


def spread(values: list[float]) -> str:
    quartiles = statistics.quantiles(values, n=4)
    return (
        f"{statistics.median(values):.2f}x (quartiles {quartiles[0]:.2f}-{quartiles[2]:.2f}, "
        f"min-max {min(values):.2f}-{max(values):.2f})"
    )


def script(rounds: int, baseline: str | None) -> None:
    libraries = (*LIBRARIES, "nbparallel-baseline") if baseline else LIBRARIES
    times: dict[str, list[float]] = {library: [] for library in libraries}
    for round_ in range(rounds + 1):  # round 0 warms the file cache and is not counted
        order = libraries if round_ % 2 else tuple(reversed(libraries))
        seconds = {library: one_start(library, baseline) for library in order}
        if round_:
            for library, value in seconds.items():
                times[library].append(value)
    print("| library | median s | min-max s | paired ratio to stdlib spawn |")
    print("| --- | --- | --- | --- |")
    for library in libraries:
        ratios = [a / b for a, b in zip(times[library], times["stdlib-spawn"], strict=True)]
        print(
            f"| {library} | {statistics.median(times[library]):.3f} | "
            f"{min(times[library]):.3f}-{max(times[library]):.3f} | {spread(ratios)} |"
        )
    if baseline:
        ratios = [
            a / b for a, b in zip(times["nbparallel"], times["nbparallel-baseline"], strict=True)
        ]
        print(f"\nnbparallel against the baseline, paired: {spread(ratios)}")


TIMED_MAP = (
    "import time as _t\n_s = _t.perf_counter()\n"
    "parallel.map(lambda x: x + 1, range(10))\n"
    "print(_t.perf_counter() - _s)"
)


def kernel_round(prestart: bool, pause: float, warm_repeats: int) -> tuple[float, float]:
    import shutil
    import tempfile

    sys.path.insert(0, str(ROOT))
    from tests.kernel import Kernel  # the repository's own real-kernel helper

    os.environ["NBPARALLEL_PRESTART"] = "1" if prestart else "0"  # inherited by the kernel
    directory = Path(tempfile.mkdtemp(prefix="nbparallel-cold-"))
    kernel = Kernel(directory)
    try:
        kernel.ok(f"%load_ext nbparallel\nparallel.configure(workers={WORKERS})")
        time.sleep(pause)  # the user writes the next cell: what the pre-start has to work with
        first = float(kernel.ok(TIMED_MAP).stdout.split()[-1])
        warm = [float(kernel.ok(TIMED_MAP).stdout.split()[-1]) for _ in range(warm_repeats)]
        return first, statistics.median(warm)
    finally:
        kernel.shutdown()
        shutil.rmtree(directory, ignore_errors=True)
        os.environ.pop("NBPARALLEL_PRESTART")


def kernel(rounds: int, pause: float) -> None:
    ratios: dict[bool, list[float]] = {True: [], False: []}
    firsts: dict[bool, list[float]] = {True: [], False: []}
    warms: list[float] = []
    for round_ in range(rounds):
        for prestart in (True, False) if round_ % 2 else (False, True):
            first, warm = kernel_round(prestart, pause, 9)
            firsts[prestart].append(first)
            ratios[prestart].append(first / warm)
            warms.append(warm)
    print(f"warm small map (progress widget on), median: {statistics.median(warms) * 1e3:.2f} ms")
    print(
        "| %load_ext then, after a pause, the first map | first map ms | first / warm (same kernel) |"
    )
    print("| --- | --- | --- |")
    for prestart, label in ((True, "pool started by %load_ext"), (False, "NBPARALLEL_PRESTART=0")):
        print(
            f"| {label} | {statistics.median(firsts[prestart]) * 1e3:.1f} | "
            f"{spread(ratios[prestart])} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["script", "kernel", "child"])
    parser.add_argument("library", nargs="?")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--pause", type=float, default=1.0)
    parser.add_argument("--baseline", help="a checkout whose nbparallel runs beside this one")
    args = parser.parse_args()
    if args.mode == "child":
        child(args.library)
    elif args.mode == "script":
        script(args.rounds, args.baseline)
    else:
        kernel(args.rounds, args.pause)


if __name__ == "__main__":
    main()
