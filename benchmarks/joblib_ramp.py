"""The joblib backend's batch sizes beside joblib's own ramp and loky, in one warm process.

    python benchmarks/joblib_ramp.py [ROUNDS]

`Parallel(n_jobs=2)(delayed(f)(x) ...)` over 10,000 tiny items with a `__main__` lambda, on:
loky; nbparallel with joblib's own auto-batching (AutoBatchingMixin: 2x per completed batch, no
bound); nbparallel as it is (`joblib_backend.grown_batch_size`); and `Parallel(n_jobs=1)`, the
floor. One process, warm workers, the cases interleaved in every round (the machine is shared:
neighbours in a round see the same load); ratios to loky paired per round. Prints the medians,
the batches per call and the ratios with their quartiles.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import joblib
from joblib import Parallel, delayed
from joblib._parallel_backends import AutoBatchingMixin

import nbparallel
from nbparallel.joblib_backend import NbParallelBackend

OURS = NbParallelBackend.compute_batch_size
offset = 1
tiny = lambda x: x + offset  # noqa: E731 - a notebook lambda, captured global and all


def on(backend: str, batch_size_rule=None):
    """A case: one warm call on `backend` (with that batch size rule), returning its batches."""

    def run() -> int:
        if batch_size_rule is not None:
            NbParallelBackend.compute_batch_size = batch_size_rule
        with joblib.parallel_config(backend=backend):
            call = Parallel(n_jobs=2)
            call(delayed(tiny)(x) for x in range(10_000))
            return call.n_dispatched_batches

    return run


def sequential() -> int:
    Parallel(n_jobs=1)(delayed(tiny)(x) for x in range(10_000))
    return 0


CASES = {
    "loky": on("loky"),
    "joblib's ramp": on("nbparallel", AutoBatchingMixin.compute_batch_size),
    "nbparallel": on("nbparallel", OURS),
    "n_jobs=1": sequential,
}


def main(rounds: int) -> None:
    nbparallel.parallel.configure(progress=False)
    for run in CASES.values():  # warm: workers started, functions imported
        run()
    seconds: dict[str, list[float]] = {name: [] for name in CASES}
    batches: dict[str, list[int]] = {name: [] for name in CASES}
    load = os.getloadavg()
    for _ in range(rounds):
        for name, run in CASES.items():
            started = time.perf_counter()
            batches[name].append(run())
            seconds[name].append(time.perf_counter() - started)
    print(f"{rounds} rounds, load average {load[0]:.1f} before, {os.getloadavg()[0]:.1f} after")
    for name in CASES:
        ratios = [ours / loky for ours, loky in zip(seconds[name], seconds["loky"], strict=True)]
        low, _, high = statistics.quantiles(ratios, n=4)
        print(
            f"{name:14s} {1000 * statistics.median(seconds[name]):6.1f} ms, "
            f"{statistics.median(batches[name]):3.0f} batches, "
            f"{statistics.median(ratios):.2f}x loky (quartiles {low:.2f}-{high:.2f})"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 60)
