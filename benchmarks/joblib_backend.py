"""scikit-learn and joblib on the nbparallel backend beside loky, in one run.

    python benchmarks/joblib_backend.py      # writes benchmarks/results/joblib_backend.md

Three workloads: `cross_val_score` of a random forest with cv=8, a 12-point `GridSearchCV`
(SVC, cv=3: 36 fits), and `Parallel(n_jobs=2)(delayed(f)(x) ...)` over 10,000 tiny items with a
lambda defined in `__main__` (as in a notebook). Each round runs a workload in a fresh
interpreter on loky, then in another on nbparallel; the ratios are paired per round (the machine
is shared and its load drifts: a pair sees the same load). "Cold" is the first call (it starts
the workers), "warm" the median of the REPEATS calls after it.
"""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

BACKENDS = ("loky", "nbparallel")
WORKLOADS = ("cross_val_score", "grid_search", "tiny_items")
REPEATS = 5
ROUNDS = 5


def workload(name: str):
    """The workload as a function of no arguments, with its data made beforehand."""
    from joblib import Parallel, delayed
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
    offset = 1
    tiny = lambda x: x + offset  # noqa: E731 - a notebook lambda, captured global and all
    return lambda: Parallel(n_jobs=2)(delayed(tiny)(x) for x in range(10_000))


def measure(backend: str, name: str) -> None:
    """In a fresh interpreter: the cold call, then REPEATS warm ones; prints JSON seconds."""
    import joblib

    import nbparallel

    nbparallel.parallel.configure(progress=False)
    run = workload(name)
    times = []
    with joblib.parallel_config(backend=backend):
        for _ in range(REPEATS + 1):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
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


def main() -> None:
    rows, ratios = [], {}
    for name in WORKLOADS:
        cold_ratios, warm_ratios = [], []
        seconds: dict[str, list[float]] = {backend: [] for backend in BACKENDS}
        for _ in range(ROUNDS):  # a pair of fresh interpreters, loky then nbparallel, per round
            round_times = {}
            for backend in BACKENDS:
                done = subprocess.run(
                    [sys.executable, __file__, "measure", backend, name],
                    capture_output=True,
                    text=True,
                    timeout=600,
                    check=True,
                )
                round_times[backend] = json.loads(done.stdout.splitlines()[-1])
                seconds[backend].append(round_times[backend][0])
            loky, ours = round_times["loky"], round_times["nbparallel"]
            cold_ratios.append(ours[0] / loky[0])
            warm_ratios.append(statistics.median(ours[1:]) / statistics.median(loky[1:]))
        ratios[name] = (statistics.median(cold_ratios), statistics.median(warm_ratios))
        rows.append(
            f"| {name} | {statistics.median(seconds['loky']):.3f} "
            f"| {statistics.median(seconds['nbparallel']):.3f} | {spread(cold_ratios)} "
            f"| {spread(warm_ratios)} |"
        )
        print(rows[-1], flush=True)
    import joblib
    import sklearn

    text = "\n".join(
        [
            "# scikit-learn and joblib: the nbparallel backend beside loky",
            "",
            f"{ROUNDS} rounds; in each, every workload runs in a fresh interpreter with loky, then "
            "in another with nbparallel (the machine is shared: a pair sees the same load). Per "
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
            "cross_val_score: random forest (50 trees), cv=8, 1,000 samples; grid_search: SVC, "
            "12 points, cv=3; tiny_items: `Parallel(n_jobs=2)` over 10,000 `x + offset` with a "
            "`__main__` lambda.",
            "",
            f"Command: `python benchmarks/joblib_backend.py` ({time.strftime('%Y-%m-%d')}, Python "
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
        main()
