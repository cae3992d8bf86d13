"""Calls that run in the background: the cell returns at once with a handle (`parallel.map_async`).

The call runs on a thread of its own, in the calling cell's context (so its progress widget and
printed output stay in that cell) while other cells run. The handle waits for, or stops, it.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future
from typing import Any

from . import calls, errors

CANCEL_SECONDS = 10.0  # how long cancel() waits for the call to stop


class MapHandle:
    """A map running in the background: `result()`, `done()`, `cancel()`, `exception()`.

    The results are the same list `parallel.map` returns; an error is the same exception.
    """

    def __init__(
        self,
        name: str,
        start: Callable[[queue.SimpleQueue[Any]], Iterator[list[Any]]],
        collected: list[Any],
    ) -> None:
        """`start(events)` checks the call and returns its lazy results, a list per chunk (see `calls.stream`),
        which are collected into `collected`."""
        self.name = name
        self._collected = collected
        self._events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._future: Future[list[Any]] = Future()
        self._future.set_running_or_notify_cancel()
        self._cancelled = False
        results = start(self._events)  # bad input and unsendable functions raise here, at once
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run,
            args=(self._collect, results),
            name=f"nbparallel-map-async-{name}",
            daemon=True,
        )
        self._thread.start()

    def _collect(self, results: Iterator[list[Any]]) -> None:
        try:
            calls.collect(results, self._collected)  # what arrived stays there if the call stops
        except calls.CallStopped:
            self._future.set_exception(CancelledError(f"map_async of {self.name} was cancelled"))
        except BaseException as error:
            self._future.set_exception(error)
        else:
            self._future.set_result(self._collected)

    def result(self, timeout: float | None = None) -> list[Any]:
        """The results in input order, once all are in (waits up to `timeout` seconds).

        Raises:
            The call's own exception; concurrent.futures.CancelledError after `cancel()`;
            TimeoutError if `timeout` passed first.
        """
        __tracebackhide__ = True  # see Parallel.map
        return self._future.result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return self._future.exception(timeout)

    def done(self) -> bool:
        return self._future.done()

    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> bool:
        """Stop the call: running items are stopped, queued ones dropped (their workers replaced).

        Returns False if it had ended already. Results finished before stopping are in
        `parallel.partial_results()`.

        Raises:
            NbParallelError: the call did not stop within CANCEL_SECONDS (it is waiting for its
                input's next item, which nbparallel cannot interrupt).
        """
        if self._future.done():
            return False
        self._events.put(calls.STOP)
        self._thread.join(CANCEL_SECONDS)
        if self._thread.is_alive():  # it reads no events: stuck in the input's own next()
            raise errors.cancel_unanswered(self.name, CANCEL_SECONDS)
        self._cancelled = isinstance(self._future.exception(), CancelledError)
        return self._cancelled

    def __repr__(self) -> str:
        if not self._future.done():
            state = "running"
        elif self._cancelled:
            state = "cancelled"
        elif self._future.exception() is not None:
            state = f"failed: {type(self._future.exception()).__name__}"
        else:
            state = f"done: {len(self._future.result())} results"
        return f"<map_async of {self.name}: {state}>"
