"""A chunk as the timeline reads it, for tests and benchmarks that feed TimelineView directly:
the record a call with insights keeps (nbparallel.insights.ChunkSpan), made with known times."""

from __future__ import annotations

from nbparallel.insights import ChunkSpan as Span

__all__ = ["Span"]
