"""nbparallel: parallel map for notebooks.

    from nbparallel import parallel
    squares = parallel.map(lambda x: x * x, range(10_000))

Functions, lambdas and closures defined in a notebook (or a script, with no `__main__` guard)
run on a persistent pool of worker processes that never outlives its kernel.

The front end (`parallel` and what it needs: pools, calls, progress) is imported on first use,
not with the package: a worker process imports `nbparallel.worker`, and with it only the modules
that run tasks. In a running kernel the package starts the pool at once, in the background (see
`prestart`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from . import prestart
from .errors import (
    ClusterStartError,
    NbParallelError,
    OptionError,
    RemoteTraceback,
    ResultError,
    TaskExitError,
    TaskTimeoutError,
    UnsendableError,
    WorkerDiedError,
)
from .slots import report_progress as progress

if TYPE_CHECKING:  # imported on first use, by __getattr__; type checkers see them here
    from .api import Parallel, ParallelFunction, parallel
    from .backends import PoolStatus
    from .background import MapHandle
    from .options import Options

__all__ = [
    "ChunkSpan",
    "ClusterStartError",
    "Insights",
    "NbParallelError",
    "OptionError",
    "MapHandle",
    "Options",
    "Parallel",
    "ParallelFunction",
    "PoolStatus",
    "RemoteTraceback",
    "ResultError",
    "TaskExitError",
    "TaskTimeoutError",
    "UnsendableError",
    "WorkerDiedError",
    "parallel",
    "progress",
]
__version__ = "0.1.0"

_FRONT_END = {
    "parallel": "api",
    "Parallel": "api",
    "ParallelFunction": "api",
    "PoolStatus": "backends",
    "MapHandle": "background",
    "Options": "options",
    "Insights": "insights",  # what parallel.insights() returns, for annotations
    "ChunkSpan": "insights",
}


def __getattr__(name: str) -> Any:
    """`parallel`, `Parallel`, ...: the front end, imported on first use (PEP 562)."""
    module = _FRONT_END.get(name)
    if module is None:
        raise AttributeError(f"module 'nbparallel' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def _register_joblib_backend(joblib: Any = None) -> None:
    # Importing the module registers the backend, at its end: where it is the first to import
    # joblib (`configure(joblib=True)` before any `import joblib`), this hook runs while the
    # module is half made, with no `register` yet.
    from . import joblib_backend  # noqa: F401


def _run_joblib_in_the_task(joblib: Any) -> None:
    # In a worker, a joblib call inside a task runs in that task's process, as a parallel.map
    # there does: the pool has a worker per CPU already, and loky's processes, children of the
    # worker, outlived the kernel (loky keeps them for 5 minutes). Threads are still allowed
    # (prefer="threads"); joblib's own batches (joblib_backend.run_batch) set their backend.
    joblib.parallel.DEFAULT_BACKEND = "sequential"


# `joblib.parallel_config(backend="nbparallel")` works wherever joblib is imported, before or
# after nbparallel.
from .when_imported import when_imported  # noqa: E402

if os.environ.get("NBPARALLEL_WORKER") != "1":
    when_imported("joblib", _register_joblib_backend)
else:
    when_imported("joblib", _run_joblib_in_the_task)

if prestart.in_a_kernel():
    prestart.start_pool()


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext nbparallel`: the magics, `parallel` in the namespace, a sweep of orphans, and
    the pool started in the background, so that the first call finds its workers ready."""
    from . import lifecycle
    from .api import parallel
    from .magics import ParallelMagics

    ipython.register_magics(ParallelMagics(ipython, parallel))
    ipython.push({"parallel": parallel})
    stopped = lifecycle.reap_orphans()
    if stopped:
        print(
            f"nbparallel: stopped {stopped} worker process{'es' if stopped > 1 else ''} left "
            f"behind by a kernel that is gone"
        )
    prestart.start_pool()


def unload_ipython_extension(ipython: Any) -> None:
    """`%unload_ext nbparallel`: remove the magics and `parallel`, and stop the workers."""
    from .api import parallel

    magics = ipython.magics_manager.magics
    for kind in ("line", "cell"):
        magics[kind].pop("parallel", None)
    ipython.magics_manager.registry.pop("ParallelMagics", None)
    if ipython.user_ns.get("parallel") is parallel:
        del ipython.user_ns["parallel"]
    parallel.shutdown()
