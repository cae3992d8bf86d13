"""How many threads BLAS and OpenMP may start inside a joblib task, limited as loky limits its
workers (cpu_count // n_jobs), so that n_jobs tasks at once do not oversubscribe the machine.

loky sets OMP_NUM_THREADS, OPENBLAS_NUM_THREADS... in the environment of workers it starts for
one call. Ours are shared with `parallel.map` and started before the call, so the limit is set
with threadpoolctl around each joblib batch in the worker, and lifted after it: a plain map task
keeps the libraries' own thread counts. A library first loaded while a batch runs is limited from
the next batch on.
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
