"""When the pool starts before the first call: in a kernel, as soon as nbparallel is there.

Starting a pool costs a notebook user the interpreters' start and their imports (about 0.1 s),
and the first cell that maps would wait for it. In a running kernel (on `import nbparallel`) and
on `%load_ext nbparallel`, the pool starts in the background instead, while the user writes the
next cell. Never in a plain script (its first call starts the pool, as before), nor in a worker.
`NBPARALLEL_PRESTART=0` turns it off.
"""

from __future__ import annotations

import os
import sys

VARIABLE = "NBPARALLEL_PRESTART"


def in_a_kernel() -> bool:
    """True in a running Jupyter kernel's process (an IPython shell with a kernel), not in a worker."""
    if os.environ.get("NBPARALLEL_WORKER") == "1":
        return False
    ipython = sys.modules.get("IPython")  # a kernel has imported it long before; never import it
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None) is not None


def start_pool() -> None:
    """Start the session's pool in the background, unless NBPARALLEL_PRESTART=0 or in a worker."""
    if os.environ.get(VARIABLE, "1") == "0" or os.environ.get("NBPARALLEL_WORKER") == "1":
        return
    from .api import parallel

    parallel.start_in_background()
