"""Progress display: a widget in a notebook, a text bar on stderr elsewhere (tqdm.auto).

Knows nothing about pools: it is told how many items are done.
"""

from __future__ import annotations

from typing import Any


class Progress:
    """One bar for one call; does nothing (and imports nothing) when disabled."""

    def __init__(self, total: int | None, enabled: bool, description: str) -> None:
        self._bar: Any = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=description, unit="item", dynamic_ncols=True)

    def update(self, done: int) -> None:
        if self._bar is not None:
            self._bar.update(done)

    def close(self, ok: bool) -> None:
        """End the bar: finished on success; on failure, a notebook bar turns red."""
        if self._bar is None:
            return
        if not ok and hasattr(self._bar, "container"):
            self._bar.colour = None
            self._bar.disp(bar_style="danger", check_delay=False)
            self._bar.disp = lambda *_, **__: None  # keep the red state through close()
        self._bar.close()
        self._bar = None
