"""How many threads BLAS and OpenMP may start inside a task, limited as loky and dask limit
their workers, so that the workers' tasks at once do not oversubscribe the machine: each of
N tasks of a NumPy or scikit-learn model starting every CPU's worth of threads ran 5-10x slower
here than with cpus // N each (benchmarks/results/results.md, mpire-expensive-init).

A process worker starts with OMP_NUM_THREADS, OPENBLAS_NUM_THREADS... at cpus // pool size
(`worker_environment`). A joblib call runs n_jobs tasks at once on that shared pool, so its
limit, cpus // n_jobs, is set with threadpoolctl around each batch and lifted after it (`limited`);
a library first loaded while a batch runs is limited from the next batch on.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping
from typing import Any

# The variables loky sets, by the threadpoolctl API they govern. One the user set in the
# notebook's environment (which workers inherit) is theirs: its API is left alone, as loky does.
ENVIRONMENT = {
    "openmp": ("OMP_NUM_THREADS",),
    "blas": (
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "BLIS_NUM_THREADS",
        "VECLIB_MAXIMUM_THREADS",
    ),
}


def per_task(
    n_jobs: int, cpus: int, explicit: int | None, environ: Mapping[str, str]
) -> dict[str, int]:
    """The thread limit of each API inside a task of a call running `n_jobs` tasks at once:
    `explicit` (joblib's `inner_max_num_threads`) if given, else cpus // n_jobs (at least 1)."""
    if explicit is not None:
        return {api: explicit for api in ENVIRONMENT}
    threads = max(cpus // max(n_jobs, 1), 1)
    return {
        api: threads
        for api, names in ENVIRONMENT.items()
        if not any(name in environ for name in names)
    }


def worker_environment(workers: int, cpus: int, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables a process worker of a pool of `workers` starts with: each API's limit of
    `per_task`, under every name that API reads (the user's own variables stay as they are)."""
    return {
        name: str(threads)
        for api, threads in per_task(workers, cpus, None, environ).items()
        for name in ENVIRONMENT[api]
    }


# In a worker: threadpoolctl's view of the loaded libraries. Building it walks every shared
# library of the process (2.6 ms here); using it takes 30 us. Rebuilt when modules were imported
# since (a library such as OpenBLAS comes with the import of an extension module).
_controller: Any = None
_modules_when_built = -1


@contextlib.contextmanager
def limited(limits: Mapping[str, int]) -> Iterator[None]:
    """Within: the libraries of this process use at most `limits` threads (by API); after: their
    own counts again. Does nothing without limits or without threadpoolctl."""
    controller = _loaded_libraries() if limits else None
    if controller is None:
        yield
        return
    limiter = controller.limit(limits=dict(limits))
    try:
        yield
    finally:
        limiter.restore_original_limits()


def _loaded_libraries() -> Any:
    global _controller, _modules_when_built
    if _controller is None or len(sys.modules) != _modules_when_built:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # installed with nbparallel[joblib]; without it, no limits
            return None
        _modules_when_built = len(sys.modules)
        _controller = ThreadpoolController()
    return _controller
