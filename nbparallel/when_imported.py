"""Run a function once a module has been imported: now if it is already, else right after the
import that first loads it. So that `import nbparallel` need not import joblib (0.1 s and NumPy)
for `joblib.parallel_config(backend="nbparallel")` to work after a later `import joblib`.

The finder and the loader follow importlib's protocols without deriving from `importlib.abc`,
whose import (importlib.resources, tempfile, shutil...) would cost every script 6 ms.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import types
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import importlib.machinery


def when_imported(name: str, action: Callable[[types.ModuleType], None]) -> None:
    """Call `action(module)` once `name` is imported."""
    module = sys.modules.get(name)
    if module is not None:
        action(module)
        return
    sys.meta_path.insert(0, _Watch(name, action))


class _Watch:
    """Finds nothing itself: it asks the other finders, and wraps the loader of `name` so that
    `action` runs once the module has executed. It removes itself after its one use."""

    def __init__(self, name: str, action: Callable[[types.ModuleType], None]) -> None:
        self._name, self._action = name, action
        self._searching = threading.local()

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self._name or getattr(self._searching, "on", False):
            return None
        self._searching.on = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._searching.on = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader, action, watch = spec.loader, self._action, self

        class _Then:
            def create_module(self, spec: Any) -> types.ModuleType | None:
                return loader.create_module(spec)

            def exec_module(self, module: types.ModuleType) -> None:
                loader.exec_module(module)
                if watch in sys.meta_path:
                    sys.meta_path.remove(watch)
                action(module)

        spec.loader = _Then()  # type: ignore[assignment]  # a Loader by protocol
        return spec
