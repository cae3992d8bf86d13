"""joblib's tasks on nbparallel's session pool: `joblib.parallel_config(backend="nbparallel")`.

Data flow::

    joblib.Parallel --submit(BatchedCalls)--> NbParallelBackend --Submitter.submit--> pool
        ^                                        |   (one nbparallel call per joblib call,
        +---- callback(future) <-- done ---------+    on at most n_jobs workers)

Each joblib `Parallel` call is one nbparallel call (`calls.Submitter`) of the module-level
`run_batch`, and each batch joblib makes is one of its tasks, with joblib's `BatchedCalls` as its
argument: it goes through `serialize.dumps` (the C pickler, with notebook functions and lambdas
inside `delayed(...)` by value with dill). One call, so the function is sent once, a fast worker
has its next batch queued behind the running one, and one cancel stops them all; everything else
(warm workers, errors as the user's own type, Stop, workers that never outlive the kernel) is the
pool's own. One progress bar per joblib call, advanced by each batch's size.

Only imported where joblib is installed (`nbparallel/__init__.py` registers it then).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future
from typing import Any

import joblib
from joblib._parallel_backends import (
    AutoBatchingMixin,
    FallbackToBackend,
    ParallelBackendBase,
    SequentialBackend,
    ThreadingBackend,
)

from . import calls, errors, serialize
from .progressbar import Progress

NAME = "nbparallel"
_ITEM_NOTE = "nbparallel: raised in worker pid"  # errors.item_note's start: says "item 0" here


def register(make_default: bool | None = None) -> None:
    """Register the backend with joblib (harmless twice); `make_default` True or False also
    makes it joblib's default backend, or gives the default back to loky."""
    joblib.register_parallel_backend(NAME, NbParallelBackend)
    if make_default is not None:
        from joblib import parallel as joblib_parallel

        if make_default:
            joblib_parallel.DEFAULT_BACKEND = NAME
        elif joblib_parallel.DEFAULT_BACKEND == NAME:
            joblib_parallel.DEFAULT_BACKEND = "loky"


def run_batch(batch: Any, first: int) -> list[Any]:
    """In a worker: run joblib's batch of tasks; a failing task's exception names it.

    Nested joblib calls inside a task run sequentially (the batch's nested backend): the pool
    already has a worker per CPU.
    """
    with joblib.parallel_config(backend=batch._backend, n_jobs=batch._n_jobs):
        results = []
        for offset, (func, args, kwargs) in enumerate(batch.items):
            try:
                results.append(func(*args, **kwargs))
            except Exception as error:
                if hasattr(error, "add_note"):
                    error.add_note(errors.joblib_task_note(os.getpid(), first + offset, func, args))
                raise
        return results


class _SentOnce:
    """A notebook function of one joblib call, serialized (by value, with dill) once for all its
    batches, as loky keeps one pickle per call; a worker unpickles the function itself."""

    __slots__ = ("reduction",)

    def __init__(self, reduction: tuple[Any, ...]) -> None:
        self.reduction = reduction

    def __reduce__(self) -> tuple[Any, ...]:
        return self.reduction


class NbParallelBackend(AutoBatchingMixin, ParallelBackendBase):
    """A joblib backend whose batches run on `nbparallel.parallel`'s pool."""

    supports_retrieve_callback = True  # hence generators and timeout= too (joblib's own checks)
    supports_inner_max_num_threads = False
    supports_sharedmem = False
    uses_threads = False
    default_n_jobs = 1  # joblib's meaning of n_jobs=None: one task at a time, unless configured

    def __init__(self, nesting_level: int | None = None, **kwargs: Any) -> None:
        super().__init__(nesting_level=nesting_level, **kwargs)
        self._lock = threading.Lock()
        self._jobs = 1  # workers a call may use at once (joblib's n_jobs, at most the pool's)
        self._submitter: calls.Submitter | None = None  # the joblib call's one nbparallel call
        self._sent: dict[int, tuple[Any, Any]] = {}  # id(function) -> (function, what is sent)
        self._progress: Progress | None = None
        self._failed = 0
        self._redrawing = threading.Event()

    # --- how many workers -------------------------------------------------------------------

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """joblib's n_jobs on the session pool: -1 is every worker, -2 all but one, a positive
        number at most the pool's size (the pool is never resized for joblib)."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None or calls.in_worker():
            return 1  # in a worker, the pool already uses every CPU
        size = _session().options.worker_count
        return max(size + 1 + n_jobs, 1) if n_jobs < 0 else min(n_jobs, size)

    def configure(
        self,
        n_jobs: int | None = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **backend_kwargs: Any,
    ) -> int:
        if prefer == "threads" or require == "sharedmem":
            raise FallbackToBackend(ThreadingBackend(nesting_level=self.nesting_level))
        n_jobs = self.effective_n_jobs(n_jobs)
        if n_jobs == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self.parallel = parallel
        self._jobs = n_jobs
        return n_jobs

    def get_nested_backend(self) -> tuple[Any, int | None]:
        return SequentialBackend(nesting_level=(self.nesting_level or 0) + 1), None

    # --- one joblib call --------------------------------------------------------------------

    def start_call(self) -> None:
        """A joblib Parallel call starts: its progress bar (the total, if joblib knows it), and a
        thread that redraws it (joblib's own loop never calls us while it waits)."""
        session = _session()
        with self._lock:
            self._failed = 0
            self._sent = {}  # a global changed between two joblib calls is seen by the next
            self._progress = progress = Progress(
                getattr(self.parallel, "n_tasks", None), session.options.progress, "joblib"
            )
        if progress.redraw_seconds is not None:
            self._redrawing = threading.Event()
            threading.Thread(
                target=self._redraw,
                args=(progress, self._redrawing),
                name="nbparallel-joblib-bar",
                daemon=True,
            ).start()

    def _redraw(self, progress: Progress, stopped: threading.Event) -> None:
        while not stopped.wait(progress.redraw_seconds or 0.1):
            with self._lock:
                if self._progress is not progress:
                    return
                progress.redraw()

    def stop_call(self) -> None:
        with self._lock:
            progress, self._progress = self._progress, None
            submitter, self._submitter = self._submitter, None
        if submitter is not None:
            submitter.close()
        self._redrawing.set()
        if progress is None:
            return
        if not getattr(self.parallel, "_exception", False):
            progress.close("done")
        else:
            progress.close("failed" if self._failed else "stopped")

    def submit(self, func: Any, callback: Any = None) -> Future[Any]:
        """Run a batch (joblib's `BatchedCalls`) on the pool; `callback(future)` when it ends."""
        # joblib counts a batch as dispatched just before submitting it: where its tasks start.
        first = max(getattr(self.parallel, "n_dispatched_tasks", len(func)) - len(func), 0)
        with self._lock:
            if self._submitter is None:  # one nbparallel call per joblib call, made on first use
                self._submitter = _session().submitter(run_batch, self._jobs)
            submitter = self._submitter
        # The batch goes to a worker only: its functions may be replaced by what is sent of them.
        func.items = [(self._sent_once(f), args, kwargs) for f, args, kwargs in func.items]
        try:
            future = submitter.submit(func, first)
        except (
            Exception
        ) as error:  # an argument that cannot be sent: joblib hears it as the outcome
            future = Future()
            future.set_exception(error)
        size = len(func)
        future.add_done_callback(lambda done: self._finished(done, size, callback))
        return future

    def _sent_once(self, function: Any) -> Any:
        known = self._sent.get(id(function))
        if known is not None and known[0] is function:
            return known[1]
        try:
            reduction = serialize.by_value(function)
        except Exception:  # sent the usual way, whose error names what cannot be sent
            reduction = None
        sent = function if reduction is None else _SentOnce(reduction)
        self._sent[id(function)] = (function, sent)  # the function is kept: its id stays its own
        return sent

    def _finished(self, future: Future[Any], size: int, callback: Any) -> None:
        """A batch ended (on the pool's thread): count it on the bar, tell joblib."""
        failed = not future.cancelled() and future.exception() is not None
        with self._lock:
            self._failed += failed
            if self._progress is not None:
                self._progress.advance(size, 1 if failed else 0)
        if callback is not None:
            callback(future)

    def retrieve_result_callback(self, future: Future[Any]) -> list[Any]:
        """The batch's results, or the task's own exception (named by its joblib task index)."""
        try:
            return future.result()
        except Exception as error:
            notes = getattr(error, "__notes__", None)
            if notes and any(errors.JOBLIB_TASK in note for note in notes):
                # The pool's own note says "item 0" (the batch); the worker's names the task.
                kept = [n for n in notes if not n.startswith(_ITEM_NOTE) or errors.JOBLIB_TASK in n]
                setattr(error, "__notes__", kept)  # noqa: B010 (mypy's 3.10 target has no notes)
            raise

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """After a failure, an interrupt or a timeout: queued batches never start and running
        ones are stopped (their workers replaced; the pool stays usable either way)."""
        with self._lock:
            submitter, self._submitter = self._submitter, None
        if submitter is not None:
            submitter.cancel()

    def terminate(self) -> None:
        with self._lock:
            submitter, self._submitter = self._submitter, None
        if submitter is not None:
            submitter.close()
        self.reset_batch_stats()

    def __reduce__(self) -> tuple[Any, ...]:
        return NbParallelBackend, ()


def _session() -> Any:
    from . import parallel

    return parallel
