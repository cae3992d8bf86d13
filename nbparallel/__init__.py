"""nbparallel: parallel map for notebooks.

    from nbparallel import parallel
    squares = parallel.map(lambda x: x * x, range(10_000))

Functions, lambdas and closures defined in a notebook (or a script, with no `__main__` guard)
run on a persistent pool of worker processes that never outlives its kernel.
"""

from __future__ import annotations

import atexit

from .api import Parallel, ParallelFunction, PoolStatus
from .errors import (
    NbParallelError,
    OptionError,
    RemoteTraceback,
    ResultError,
    UnsendableError,
    WorkerDiedError,
)
from .options import Options

__all__ = [
    "NbParallelError",
    "OptionError",
    "Options",
    "Parallel",
    "ParallelFunction",
    "PoolStatus",
    "RemoteTraceback",
    "ResultError",
    "UnsendableError",
    "WorkerDiedError",
    "parallel",
]
__version__ = "0.1.0"

parallel = Parallel()
atexit.register(parallel.shutdown)
