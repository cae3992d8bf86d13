"""scikit-learn and joblib on the nbparallel backend beside loky, in one run.

    python benchmarks/joblib_backend.py [ROUNDS [WORKLOAD ...]]   # writes results/joblib_backend.md

Three workloads: `cross_val_score` of a random forest with cv=8, a 12-point `GridSearchCV`
(SVC, cv=3: 36 fits), and `Parallel(n_jobs=2)(delayed(f)(x) ...)` over 10,000 tiny items with a
lambda defined in `__main__` (as in a notebook). Each round runs a workload in a fresh
interpreter on loky and in another on nbparallel, loky first in even rounds and second in odd
ones; the ratios are paired per round (the machine is shared and its load drifts: a pair sees
the same load). "Cold" is the first call (it starts the workers), "warm" the median of the
REPEATS calls after it.

The tiny items' floor: in the same interpreters, between the warm calls, the same generator
consumed by `Parallel(n_jobs=1)` (joblib's own work in the user's process, tasks run inline)
and by a plain loop (the user's `delayed(f)(x)` alone). No backend that leaves the generator
to joblib in the user's process can take less than the first; over loky's warm call it is the
lowest ratio the target can see.
"""

from __future__ import annotations

import collections
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

BACKENDS = ("loky", "nbparallel")
WORKLOADS = ("cross_val_score", "grid_search", "tiny_items")
REPEATS = 5
ROUNDS = 10


def workload(name: str):
    """The workload as a function of no arguments, with its data made beforehand."""
    from joblib import Parallel
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=1000, n_features=20, random_state=0)
    if name == "cross_val_score":
        from sklearn.ensemble import RandomForestClassifier
        from sklearn.model_selection import cross_val_score

        model = RandomForestClassifier(n_estimators=50, random_state=0)
        return lambda: cross_val_score(model, X, y, cv=8, n_jobs=-1)
    if name == "grid_search":
        from sklearn.model_selection import GridSearchCV
        from sklearn.svm import SVC

        grid = {"C": [0.1, 1, 10, 100], "gamma": ["scale", 0.01, 0.001]}
        return lambda: GridSearchCV(SVC(), grid, cv=3, n_jobs=-1).fit(X, y)
    return lambda: Parallel(n_jobs=2)(tiny_tasks())


offset = 1
tiny = lambda x: x + offset  # noqa: E731 - a notebook lambda, captured global and all


def tiny_tasks():
    from joblib import delayed

    return (delayed(tiny)(x) for x in range(10_000))


def sequential() -> None:
    from joblib import Parallel

    Parallel(n_jobs=1)(tiny_tasks())


def generator_alone() -> None:
    collections.deque(tiny_tasks(), maxlen=0)


# The tiny items' floor: what the user's process does whatever the backend.
FLOORS = {"sequential": sequential, "generator": generator_alone}


def seconds(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def measure(backend: str, name: str) -> None:
    """In a fresh interpreter: the cold call, then REPEATS warm ones (for the tiny items each
    followed by the floors); prints JSON seconds."""
    import joblib

    import nbparallel

    nbparallel.parallel.configure(progress=False)
    run = workload(name)
    floors = FLOORS if name == "tiny_items" else {}
    times: dict[str, list[float]] = {"calls": [], **{floor: [] for floor in floors}}
    with joblib.parallel_config(backend=backend):
        times["calls"].append(seconds(run))
        for _ in range(REPEATS):
            times["calls"].append(seconds(run))
            for floor, run_floor in floors.items():
                times[floor].append(seconds(run_floor))
    print(json.dumps(times))


TARGETS = {"cross_val_score": 1.0, "grid_search": 1.0, "tiny_items": 0.5}


def target_lines(ratios: dict[str, tuple[float, float]]) -> list[str]:
    """Each workload's cold and warm ratio against its target: met, or missed by how much."""
    lines = []
    for name, (cold, warm) in ratios.items():
        for kind, ratio in (("cold", cold), ("warm", warm)):
            target = TARGETS[name]
            verdict = "met" if ratio <= target else f"missed by {ratio / target:.2f}x"
            lines.append(f"{name} {kind} <= {target:.1f}x: {ratio:.2f}x, {verdict}")
    return lines


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"


def floor_line(floor_ratios: dict[str, list[float]], warm_loky: list[float]) -> str:
    """The tiny items' floors beside loky's warm call, paired per round."""
    sequential, generator = floor_ratios["sequential"], floor_ratios["generator"]
    return (
        f"Floor of the tiny items (same interpreters, between the warm calls): loky's warm call "
        f"{1000 * statistics.median(warm_loky):.0f} ms (median over rounds); "
        f"`Parallel(n_jobs=1)` on the same generator {spread(sequential)} of it, the generator "
        f"alone {spread(generator)}. No backend can go below the first: "
        + (
            "it is above the 0.5x target, which no backend can meet here."
            if statistics.median(sequential) > TARGETS["tiny_items"]
            else "it is below the 0.5x target, which leaves the backend "
            f"{TARGETS['tiny_items'] - statistics.median(sequential):.2f}x of loky's time."
        )
    )


def load_average() -> str:
    return " ".join(f"{each:.1f}" for each in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


def main(rounds: int, workloads: tuple[str, ...] = WORKLOADS) -> None:
    load_before = load_average()
    rows, ratios, notes = [], {}, []
    for name in workloads:
        cold_ratios, warm_ratios = [], []
        cold: dict[str, list[float]] = {backend: [] for backend in BACKENDS}
        floor_ratios: dict[str, list[float]] = {floor: [] for floor in FLOORS}
        warm_loky = []
        for round_number in range(rounds):  # a pair of fresh interpreters per round
            round_times = {}
            order = BACKENDS if round_number % 2 == 0 else BACKENDS[::-1]
            for backend in order:
                done = subprocess.run(
                    [sys.executable, __file__, "measure", backend, name],
                    capture_output=True,
                    text=True,
                    timeout=600,
                    check=True,
                )
                round_times[backend] = json.loads(done.stdout.splitlines()[-1])
                cold[backend].append(round_times[backend]["calls"][0])
            loky, ours = round_times["loky"]["calls"], round_times["nbparallel"]["calls"]
            cold_ratios.append(ours[0] / loky[0])
            warm_ratios.append(statistics.median(ours[1:]) / statistics.median(loky[1:]))
            warm_loky.append(statistics.median(loky[1:]))
            for floor, ratios_of_floor in floor_ratios.items():
                if floor in round_times["loky"]:  # both interpreters measured it: pooled
                    both = round_times["loky"][floor] + round_times["nbparallel"][floor]
                    ratios_of_floor.append(statistics.median(both) / warm_loky[-1])
        ratios[name] = (statistics.median(cold_ratios), statistics.median(warm_ratios))
        rows.append(
            f"| {name} | {statistics.median(cold['loky']):.3f} "
            f"| {statistics.median(cold['nbparallel']):.3f} | {spread(cold_ratios)} "
            f"| {spread(warm_ratios)} |"
        )
        print(rows[-1], flush=True)
        if floor_ratios["sequential"]:
            notes.append(floor_line(floor_ratios, warm_loky))
            print(notes[-1], flush=True)
    import joblib
    import sklearn

    text = "\n".join(
        [
            "# scikit-learn and joblib: the nbparallel backend beside loky",
            "",
            f"{rounds} rounds; in each, every workload runs in a fresh interpreter with loky and "
            "in another with nbparallel, loky first in even rounds and second in odd ones (the "
            "machine is shared: a pair sees the same load). Per "
            f"round, cold ratio = nbparallel's first call / loky's (workers start), warm ratio = "
            f"the medians of the {REPEATS} calls after it. Shown: the median of the paired ratios "
            "(min-max over rounds); below 1.00x nbparallel is faster.",
            "",
            "| workload | loky cold s | nbparallel cold s | cold ratio | warm ratio |",
            "| --- | --- | --- | --- | --- |",
            *rows,
            "",
            "Targets (issue 19): " + "; ".join(target_lines(ratios)) + ".",
            "",
            *[line for note in notes for line in (note, "")],
            "cross_val_score: random forest (50 trees), cv=8, 1,000 samples; grid_search: SVC, "
            "12 points, cv=3; tiny_items: `Parallel(n_jobs=2)` over 10,000 `x + offset` with a "
            "`__main__` lambda.",
            "",
            f"Command: `python benchmarks/joblib_backend.py {' '.join(sys.argv[1:])}` ({time.strftime('%Y-%m-%d')}, "
            f"load average before the run {load_before}, after {load_average()}, Python "
            f"{platform.python_version()}, joblib {joblib.__version__}, scikit-learn "
            f"{sklearn.__version__}, this machine: 2 cores, shared with other runs).",
            "",
        ]
    )
    out = Path(__file__).parent / "results" / "joblib_backend.md"
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["measure"]:
        measure(sys.argv[2], sys.argv[3])
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else ROUNDS, tuple(sys.argv[2:]) or WORKLOADS)
