"""nbparallel: parallel map for notebooks.

    from nbparallel import parallel
    squares = parallel.map(lambda x: x * x, range(10_000))

Functions, lambdas and closures defined in a notebook (or a script, with no `__main__` guard)
run on a persistent pool of worker processes that never outlives its kernel.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

from .api import Parallel, ParallelFunction, PoolStatus
from .background import MapHandle
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
from .options import Options
from .slots import report_progress as progress
from .when_imported import when_imported

__all__ = [
    "ClusterStartError",
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

parallel = Parallel()
atexit.register(parallel.shutdown)


def _register_joblib_backend(joblib: Any = None) -> None:
    from . import joblib_backend

    joblib_backend.register()


# `joblib.parallel_config(backend="nbparallel")` works wherever joblib is imported, before or
# after nbparallel; not in workers (nested joblib calls there run sequentially).
if os.environ.get("NBPARALLEL_WORKER") != "1":
    when_imported("joblib", _register_joblib_backend)


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext nbparallel`: the magics, `parallel` in the namespace, and a sweep of orphans."""
    from . import lifecycle
    from .magics import ParallelMagics

    ipython.register_magics(ParallelMagics(ipython, parallel))
    ipython.push({"parallel": parallel})
    stopped = lifecycle.reap_orphans()
    if stopped:
        print(
            f"nbparallel: stopped {stopped} worker process{'es' if stopped > 1 else ''} left "
            f"behind by a kernel that is gone"
        )


def unload_ipython_extension(ipython: Any) -> None:
    """`%unload_ext nbparallel`: remove the magics and `parallel`, and stop the workers."""
    magics = ipython.magics_manager.magics
    for kind in ("line", "cell"):
        magics[kind].pop("parallel", None)
    ipython.magics_manager.registry.pop("ParallelMagics", None)
    if ipython.user_ns.get("parallel") is parallel:
        del ipython.user_ns["parallel"]
    parallel.shutdown()
