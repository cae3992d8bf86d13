"""scikit-learn and joblib on the nbparallel backend beside loky, in one run.

    python benchmarks/joblib_backend.py      # writes benchmarks/results/joblib_backend.md

Three workloads: `cross_val_score` of a random forest with cv=8, a 12-point `GridSearchCV`
(SVC, cv=3: 36 fits), and `Parallel(n_jobs=2)(delayed(f)(x) ...)` over 10,000 tiny items with a
lambda defined in `__main__` (as in a notebook). Each backend runs each workload in a fresh
interpreter: "cold" is the first call there (it starts the workers), "warm" the median of the
next REPEATS. The backends alternate, so both see the same load of the shared machine.
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


def main() -> None:
    rows = []
    for name in WORKLOADS:
        found = {}
        for backend in BACKENDS:
            done = subprocess.run(
                [sys.executable, __file__, "measure", backend, name],
                capture_output=True,
                text=True,
                timeout=600,
                check=True,
            )
            found[backend] = json.loads(done.stdout.splitlines()[-1])
        loky, ours = found["loky"], found["nbparallel"]
        cold = (loky[0], ours[0])
        warm = (statistics.median(loky[1:]), statistics.median(ours[1:]))
        rows.append(
            f"| {name} | {cold[0]:.3f} | {cold[1]:.3f} | {cold[1] / cold[0]:.2f}x "
            f"| {warm[0]:.3f} | {warm[1]:.3f} | {warm[1] / warm[0]:.2f}x |"
        )
        print(rows[-1], flush=True)
    import joblib
    import sklearn

    text = "\n".join(
        [
            "# scikit-learn and joblib: the nbparallel backend beside loky",
            "",
            "Each backend and workload in a fresh interpreter: cold is its first call (workers "
            f"start), warm the median of the next {REPEATS}. Ratio: nbparallel / loky (below "
            "1.00x: nbparallel faster).",
            "",
            "| workload | loky cold s | nbparallel cold s | cold ratio | loky warm s "
            "| nbparallel warm s | warm ratio |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
            "cross_val_score: random forest (50 trees), cv=8, 1,000 samples; grid_search: SVC, "
            "12 points, cv=3; tiny_items: `Parallel(n_jobs=2)` over 10,000 `x + offset` with a "
            "`__main__` lambda.",
            "",
            f"Command: `python benchmarks/joblib_backend.py` (Python {platform.python_version()}, "
            f"joblib {joblib.__version__}, scikit-learn {sklearn.__version__}, this machine: "
            "2 cores, shared with other runs).",
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
