"""The `parallel` object: map, map_async, imap, imap_unordered, starmap, submit, and the decorators.

A thin front end: it validates options, owns the session's backend (started lazily, reused by
every call), and hands each call to `calls`.

Importing it is cheap: the call machinery (`calls`: serialization, dill, progress bars) is
imported by the first call once it has launched the workers, which boot meanwhile.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from . import backends, chunking, errors
from .options import Options

if TYPE_CHECKING:
    import queue
    from concurrent.futures import Future

    from . import calls, recording
    from .background import MapHandle
    from .insights import Insights

_NO_ITEMS: Any = object()


class ParallelFunction:
    """A function decorated with `@parallel.map`: calling it maps it over an iterable.

    Keeps the function's name, docstring and signature; `.func` is the plain function.
    """

    def __init__(self, owner: Parallel, func: Callable[..., Any], options: dict[str, Any]) -> None:
        functools.update_wrapper(self, func)
        self.func = func
        self._owner = owner
        self._options = options

    def __call__(self, items: Iterable[Any], **options: Any) -> list[Any]:
        __tracebackhide__ = True
        return self._owner.map(self.func, items, **{**self._options, **options})

    def __repr__(self) -> str:
        return f"<parallel.map of {self.func!r}>"

    def __reduce__(self) -> tuple[Any, ...]:
        # Sent to a worker (captured by another function), it stays callable there; it needs
        # neither the pool nor the session's lock, so send the plain function and options.
        return _parallel_function, (self.func, self._options)


def _parallel_function(func: Callable[..., Any], options: dict[str, Any]) -> ParallelFunction:
    return ParallelFunction(_this_process_session(), func, options)


def _this_process_session() -> Parallel:
    """`nbparallel.parallel` of the process unpickling: a session sent to a worker means its own."""
    return parallel


class Parallel:
    """Parallel map over a persistent pool of workers; see the package docstring."""

    def __init__(self) -> None:
        self._options = Options()
        self._backends: dict[str, backends.Backend] = {}  # started on first use, one per kind
        self._lock = threading.Lock()
        self._partial: dict[int, Any] = {}
        self._insights: recording.Recorder | None = None  # of the last call with insights on
        self._setup_count = 0
        self._generation = 0  # shutdowns so far: a start in the background asked before one is void
        self._prestarted: backends.Backend | None = None  # started early, not yet used by a call

    # --- session ------------------------------------------------------------------------

    def configure(self, **options: Any) -> Options:
        """Set session defaults (any option of `Options`); returns the options in force.

        Changing `address` replaces the session's dask backend (the next call connects anew).
        `joblib=True` makes nbparallel joblib's default backend (scikit-learn's n_jobs=-1 then
        runs here); `joblib=False` gives the default back to loky.
        """
        if options.get("joblib") is not None:
            self._options.merged(session=True, **options)  # all options valid before any effect
            _make_joblib_default(options["joblib"])
        with self._lock:
            previous, self._options = self._options, self._options.merged(session=True, **options)
            retired = (
                self._backends.pop("dask", None)
                if previous.address is not self._options.address
                else None
            )
            unused = None
            if self._prestarted is not None and self._options.backend != "processes":
                unused, self._prestarted = self._prestarted, None  # no call will use it now
                self._backends.pop("processes", None)
            backend = self._backends.get(self._options.backend)
            if backend is not None:
                if backend.size != self._options.worker_count:
                    backend.resize(self._options.worker_count)
                backend.set_limits(
                    self._options.max_tasks_per_worker, self._options.max_worker_memory
                )
        for stale in (retired, unused):
            if stale is not None:
                stale.shutdown()
        return self._options

    @property
    def options(self) -> Options:
        return self._options

    def pool_starter(self) -> Callable[[], None]:
        """A function that starts the session's pool, for `prestart` to run on a thread of its
        own. Options set meanwhile or later still hold: a worker count resizes the pool, another
        backend stops it unused; after a `shutdown()` in between, it starts nothing."""
        with self._lock:
            return functools.partial(self._start_pool, self._generation)

    def _start_pool(self, generation: int) -> None:
        # Under the session's lock, so that a configure() or a call issued meanwhile waits for the
        # workers to be launched (not for them to boot), then applies to this pool.
        with self._lock:
            if (
                generation != self._generation
                or self._options.backend != "processes"
                or "processes" in self._backends
            ):
                return
            self._prestarted = self._backends["processes"] = backends.create(
                self._options, launch=True
            )

    def _get_backend(self, options: Options, launch: bool = False) -> backends.Backend:
        with self._lock:
            backend = self._backends.get(options.backend)
            if backend is self._prestarted:
                self._prestarted = None
            if backend is None:
                backend = self._backends[options.backend] = backends.create(
                    dataclasses.replace(
                        self._options, backend=options.backend, workers=options.workers
                    ),
                    launch,
                )
            if backend.size < options.worker_count:
                backend.resize(options.worker_count)
            return backend

    def _launch_early(self, options: Options, func: Any, items: Any = _NO_ITEMS) -> None:
        """The call's backend now, before the call machinery imports (dill...): the first call's
        workers boot meanwhile. Not for input its checks refuse or that has no items, nor in a
        worker (nested calls run serially there)."""
        if items is not _NO_ITEMS and not chunking.may_have_items(items):
            return
        if callable(func) and os.environ.get("NBPARALLEL_WORKER") != "1":
            self._get_backend(options, launch=True)

    def _session_backend(self) -> backends.Backend | None:
        return self._backends.get(self._options.backend)

    def status(self) -> backends.PoolStatus:
        """The workers of the session's backend: pid, busy or idle, tasks done, memory."""
        backend = self._session_backend()
        return backends.PoolStatus(backend.status() if backend is not None else [])

    def restart(self) -> None:
        """Replace every worker with a fresh process; every-worker setup code runs again."""
        backend = self._session_backend()
        if backend is not None:
            backend.restart()

    def run_on_every_worker(self, source: str, namespace: dict[str, Any] | None = None) -> int:
        """Run Python `source` once in every worker, and first thing in each worker started later.

        For imports, loading a model, opening a connection: names it defines are available to
        later tasks in that worker (where the notebook has no variable of that name). Notebook
        variables it reads come from `namespace` (default: `__main__`). Returns how many workers
        ran it; raises the first worker's exception.
        """
        namespace = vars(sys.modules["__main__"]) if namespace is None else namespace
        self._setup_count += 1
        filename = f"<every-worker cell {self._setup_count}>"
        options = self._options
        from . import calls

        return calls.run_setup(lambda: self._get_backend(options), source, namespace, filename)

    def partial_results(self) -> dict[int, Any]:
        """Results that finished before the most recent failed or interrupted call stopped.

        By input position; for `imap`, only those not yet yielded. Kept until another call fails.
        """
        return dict(sorted(self._partial.items()))

    def insights(self) -> Insights:
        """The record of the most recent call made with `insights=True`: per worker the time
        spent starting, waiting, working and moving data, the efficiency, the slowest items and
        hints; `.to_dataframe()`, `.to_chrome_trace(path)`. Kept until the next such call ends.

        Raises:
            LookupError: no call with insights on has ended in this session.
        """
        if self._insights is None:
            raise errors.no_insights()
        return self._insights.record()

    def shutdown(self) -> None:
        """Stop all workers of every backend now (every-worker setup is forgotten).

        The next call starts afresh. A dask cluster given by address or Client is left running;
        one nbparallel started itself is closed.
        """
        with self._lock:
            stopping, self._backends = list(self._backends.values()), {}
            self._generation += 1
            self._prestarted = None
        for backend in stopping:
            backend.shutdown()

    # --- calls --------------------------------------------------------------------------

    def map(self, func: Any = None, items: Iterable[Any] = _NO_ITEMS, /, **options: Any) -> Any:
        """`func` applied to every item, in parallel: a list in input order.

        Also a decorator: `@parallel.map` or `@parallel.map(workers=4)` turns a function into
        one that maps itself over an iterable.

        Raises:
            The function's own exception (its remote traceback as `__cause__`), TypeError for
            bad input, UnsendableError for a function that cannot be sent to the workers.
        """
        # IPython leaves frames that set __tracebackhide__ out of tracebacks: a failing map shows
        # the user's cell, then their function's own remote traceback, and none of ours.
        __tracebackhide__ = True
        if items is _NO_ITEMS:
            return self._decorator(func, options)
        return self._collect(func, items, options, "map")

    def imap(
        self, func: Callable[..., Any], items: Iterable[Any], /, **options: Any
    ) -> Iterator[Any]:
        """Results one by one in input order, as soon as each is ready; reads the input lazily."""
        return self._one_by_one(self._stream(func, items, options, "map", True))

    def imap_unordered(
        self, func: Callable[..., Any], items: Iterable[Any], /, **options: Any
    ) -> Iterator[Any]:
        """Results one by one in the order they finish."""
        return self._one_by_one(self._stream(func, items, options, "map", False))

    def map_async(
        self, func: Callable[..., Any], items: Iterable[Any], /, **options: Any
    ) -> MapHandle:
        """Like `map`, but returns at once: the call runs while other cells run.

        Its progress bar stays live in the calling cell. `handle.result()` waits for the list
        of results (or raises the call's error); `handle.cancel()` stops it. Bad input and
        unsendable functions raise here, at once.
        """
        self._launch_early(self._options.merged(**options), func, items)
        from . import background, serialize

        collected: list[Any] = []
        return background.MapHandle(
            serialize.function_name(func) if callable(func) else repr(func),
            lambda events: self._stream(func, items, options, "map", True, collected, events),
            collected,
        )

    def starmap(
        self, func: Callable[..., Any], items: Iterable[Any], /, **options: Any
    ) -> list[Any]:
        """`func(*args)` for every tuple of arguments: a list in input order."""
        __tracebackhide__ = True
        return self._collect(func, items, options, "star")

    def submit(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run `func(*args, **kwargs)` on a worker; returns a `concurrent.futures.Future`."""
        options = self._options
        self._launch_early(options, func)
        from . import calls

        return calls.submit(lambda: self._get_backend(options), func, args, kwargs, options)

    def submitter(self, func: Callable[..., Any], max_workers: int) -> calls.Submitter:
        """One call of `func` whose tasks are submitted one at a time (each returns a Future),
        on at most `max_workers` workers: how the joblib backend runs a joblib Parallel call."""
        from . import calls

        options = self._options
        return calls.Submitter(self._get_backend(options), func, options, max_workers)

    def _stream(
        self,
        func: Any,
        items: Iterable[Any],
        overrides: dict[str, Any],
        kind: str,
        ordered: bool,
        collected: list[Any] | None = None,
        background: queue.SimpleQueue[Any] | None = None,
    ) -> Iterator[list[Any]]:
        options = self._options.merged(**overrides)
        self._launch_early(options, func, items)
        from . import calls

        def keep_partial(unyielded: dict[int, Any]) -> None:
            self._partial = {**dict(enumerate(collected or ())), **unyielded}

        def keep_insights(recorder: recording.Recorder) -> None:
            self._insights = recorder

        return calls.stream(
            lambda: self._get_backend(options),
            func,
            items,
            options,
            kind,
            ordered,
            keep_partial,
            background,
            keep_insights,
        )

    @staticmethod
    def _one_by_one(batches: Iterator[list[Any]]) -> Iterator[Any]:
        from . import calls  # imported by now (see _stream)

        return calls.one_by_one(batches)

    def _collect(
        self, func: Any, items: Iterable[Any], overrides: dict[str, Any], kind: str
    ) -> list[Any]:
        __tracebackhide__ = True
        results: list[Any] = []  # keep_partial reads what arrived before a failure from here
        batches = self._stream(func, items, overrides, kind, True, collected=results)
        from . import calls

        return calls.collect(batches, results)

    def _decorator(self, func: Any, options: dict[str, Any]) -> Any:
        self._options.merged(**options)  # bad options fail at decoration time
        if func is None:
            return lambda f: self._decorator(f, options)
        if not callable(func):
            raise errors.not_callable(func)
        return ParallelFunction(self, func, options)

    def __repr__(self) -> str:
        return f"<nbparallel.parallel {self._options}>"

    def __reduce__(self) -> tuple[Any, ...]:
        # A function that uses `parallel` is sent with a reference to it, never a copy: its pool
        # belongs to this process, and in a worker the name means the worker's own session
        # (where nested calls run serially).
        return _this_process_session, ()


def _make_joblib_default(on: bool) -> None:
    try:
        from . import joblib_backend
    except ImportError:
        if on:
            raise errors.joblib_missing() from None
        return
    joblib_backend.register(make_default=on)


parallel = Parallel()
"""The process's session: `from nbparallel import parallel`."""
atexit.register(parallel.shutdown)
