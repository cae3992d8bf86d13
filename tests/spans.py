"""A chunk as the timeline reads it, for tests and benchmarks that feed TimelineView directly.

The same fields as nbparallel.insights.ChunkSpan (the record a call with insights keeps); this
stand-in lets the timeline be tested and measured on spans of known times.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, slots=True)
class Span:
    worker: int
    first_item: int
    items: int
    sent: float
    started: float | None
    finished: float | None
    received: float | None
    state: str
