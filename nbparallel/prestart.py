"""When the pool starts before the first call: in a kernel, as soon as nbparallel is there.

A pool's first call would wait for its interpreters to start and import (about 0.1 s), and in a
kernel for ipywidgets to import (0.14 s more). In a running kernel (on `import nbparallel`) and on
`%load_ext nbparallel`, both happen in the background instead, while the user writes the next
cell. Never in a plain script (its first call starts the pool, as before), nor in a worker.
`NBPARALLEL_PRESTART=0` turns it off.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable

VARIABLE = "NBPARALLEL_PRESTART"


def in_a_kernel() -> bool:
    """True in a running Jupyter kernel's process (an IPython shell with a kernel), not in a worker."""
    if os.environ.get("NBPARALLEL_WORKER") == "1":
        return False
    ipython = sys.modules.get("IPython")  # a kernel has imported it long before; never import it
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None) is not None


def start_pool() -> None:
    """Start the session's pool in the background, and in a kernel import what its progress bars
    need; not with NBPARALLEL_PRESTART=0, nor in a worker. Returns at once."""
    if os.environ.get(VARIABLE, "1") == "0" or os.environ.get("NBPARALLEL_WORKER") == "1":
        return
    from .api import parallel

    threading.Thread(
        target=_start, args=(parallel.pool_starter(),), name="nbparallel-prestart", daemon=True
    ).start()


def _start(start_pool: Callable[[], None]) -> None:
    start_pool()  # first: the workers boot while the call machinery and the display import
    from . import calls, serialize  # noqa: F401  # calls: `import nbparallel` no longer imports it

    serialize.import_dill()
    if in_a_kernel():
        from . import progressbar

        progressbar.prepare_display()
