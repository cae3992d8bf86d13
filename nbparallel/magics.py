"""`%%parallel` and `%parallel`: parse the line, build a function from the cell, call `parallel`.

%%parallel for path in files -> sizes [--workers N] [--chunksize N] [--unordered] [--no-progress]
                                      [--show-workers] [--insights] [--background] [--backend NAME]
%%parallel --every-worker
%parallel [status | workers N | restart | shutdown | insights]
"""

from __future__ import annotations

import ast
import linecache
import re
import types
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from .api import Parallel
from .options import BACKENDS

_SPEC = re.compile(
    r"^\s*for\s+(?P<target>.+?)\s+in\s+(?P<iterable>.+?)(?:\s*->\s*(?P<result>\S+))?\s*$"
)
_ITEM = "__nbparallel_item__"
_SPEC_HELP = (
    "write the loop as: %%parallel for NAME in ITERABLE [-> RESULT] [options], for example\n"
    "    %%parallel for path in files -> sizes --workers 4\n"
    "or, to run the cell once in every worker: %%parallel --every-worker"
)


def split_line(line: str) -> tuple[str, str]:
    """The loop part and the options part of a magic line (options start at the first ` --`)."""
    index = (" " + line).find(" --")
    if index < 0:
        return line.strip(), ""
    return line[: max(index - 1, 0)].strip(), line[max(index - 1, 0) :].strip()


def parse_loop(spec: str) -> tuple[str, str, str | None]:
    """(target, iterable, result name) from `for TARGET in ITERABLE [-> RESULT]`.

    Raises:
        UsageError: the line is not of that form, or a part is not valid Python.
    """
    match = _SPEC.match(spec)
    if not match:
        raise UsageError(f"%%parallel cannot read {spec!r}: {_SPEC_HELP}")
    target, iterable, result = match["target"], match["iterable"], match["result"]
    try:
        ast.parse(f"{target} = None")
    except SyntaxError:
        raise UsageError(f"%%parallel: {target!r} cannot be assigned to; {_SPEC_HELP}") from None
    try:
        ast.parse(iterable, mode="eval")
    except SyntaxError as error:
        raise UsageError(
            f"%%parallel: {iterable!r} is not a Python expression ({error.msg})"
        ) from None
    if result is not None and not result.isidentifier():
        raise UsageError(
            f"%%parallel: the result after '->' must be a variable name, got {result!r}"
        )
    return target, iterable, result


def cell_function(
    target: str, source: str, namespace: dict[str, Any], filename: str
) -> types.FunctionType:
    """The cell as a function of one item: binds `target`, runs the body, returns the last expression.

    Its globals are the notebook's, so what it uses is sent along like any notebook function;
    what it assigns are locals, and stay in the worker. Tracebacks show the cell's own lines.
    """
    body = ast.parse(source, filename).body
    if body and isinstance(body[-1], ast.Expr):
        body[-1] = ast.copy_location(ast.Return(value=body[-1].value), body[-1])
    function = ast.parse(f"def cell({_ITEM}):\n    {target} = {_ITEM}").body[0]
    assert isinstance(function, ast.FunctionDef)
    for node in ast.walk(function):  # the binding line is shown as the cell's first line
        if isinstance(node, (ast.stmt, ast.expr)):
            node.lineno = node.end_lineno = 1
    function.body.extend(body)
    module = ast.fix_missing_locations(ast.Module(body=[function], type_ignores=[]))
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    code = next(
        c for c in compile(module, filename, "exec").co_consts if isinstance(c, types.CodeType)
    )
    func = types.FunctionType(code, namespace, "%%parallel cell")
    func.__qualname__ = func.__name__
    return func


@magics_class
class ParallelMagics(Magics):
    """The `%%parallel` cell magic and the `%parallel` line magic."""

    def __init__(self, shell: Any, parallel: Parallel) -> None:
        super().__init__(shell)
        self._parallel = parallel
        self._cells = 0

    @magic_arguments()
    @argument("--workers", type=int, help="worker processes for this cell (default: the session's)")
    @argument("--chunksize", type=int, help="items sent to a worker together (default: automatic)")
    @argument("--unordered", action="store_true", help="collect results in the order they finish")
    @argument("--no-progress", action="store_true", help="do not show a progress bar")
    @argument("--show-workers", action="store_true", help="show the workers under the progress bar")
    @argument(
        "--insights",
        action="store_true",
        help="record where the workers' time goes (parallel.insights()) and show a timeline",
    )
    @argument(
        "--background",
        action="store_true",
        help="return at once: RESULT is a handle whose .result() is the list (see parallel.map_async)",
    )
    @argument(
        "--backend",
        default=None,
        help="where the loop runs: processes, threads or dask (default: the session's; "
        "--every-worker cells set up the session's backend)",
    )
    @argument(
        "--every-worker",
        action="store_true",
        help="run the cell once in every worker (and in each worker started later) instead "
        "of over items: for imports, loading a model, opening a connection",
    )
    @cell_magic("parallel")  # type: ignore[arg-type]
    def parallel_cell(self, line: str, cell: str) -> Any:
        """Run the cell once per item, in parallel, on the worker pool.

        %%parallel for NAME in ITERABLE [-> RESULT] [options]

        The body runs with NAME bound to each item of ITERABLE (any Python expression, evaluated
        in the notebook); the value of its last expression is collected. Results are bound to
        RESULT in input order, or shown as the cell's output when there is no '-> RESULT'
        (with --background, RESULT is a handle at once: RESULT.result() waits for the list).
        Notebook variables the body uses are sent along; assignments in the body stay in the
        workers. Example:

            %%parallel for path in files -> sizes
            text = open(path).read()
            len(text)

        %%parallel --every-worker runs the cell once in every worker instead: names it defines
        (imports, a loaded model, a connection) are available to later tasks in that worker,
        and workers started later run it first.
        """
        __tracebackhide__ = True  # see Parallel.map
        spec, option_text = split_line(line)
        args = parse_argstring(self.parallel_cell, option_text)
        if args.backend is not None and args.backend not in BACKENDS:
            raise UsageError(
                f"%%parallel: unknown backend {args.backend!r}; the backends are: {', '.join(BACKENDS)}"
            )
        if args.background and args.unordered:
            raise UsageError(
                "%%parallel: --background collects results in input order; drop --unordered"
            )
        self._cells += 1
        assert self.shell is not None
        source = self.shell.transform_cell(cell)
        namespace = self.shell.user_ns
        if args.every_worker:
            if spec:
                raise UsageError(
                    "%%parallel --every-worker runs the cell on every worker: it takes no 'for ... in ...'"
                )
            ignored = [
                flag
                for flag, given in (
                    ("--workers", args.workers is not None),
                    ("--chunksize", args.chunksize is not None),
                    ("--unordered", args.unordered),
                    ("--insights", args.insights),
                    ("--background", args.background),
                    ("--show-workers", args.show_workers),
                )
                if given
            ]
            if ignored:
                raise UsageError(
                    f"%%parallel --every-worker runs the cell once per worker, recording and "
                    f"showing nothing: drop {', '.join(ignored)}"
                )
            count = self._parallel.run_on_every_worker(source, namespace)
            print(f"ran on {count} workers")
            return None
        target, iterable, result = parse_loop(spec)
        try:
            options = self._parallel.options.merged(
                workers=args.workers,
                chunksize=args.chunksize,
                progress=False if args.no_progress else None,
                show_workers=True if args.show_workers else None,
                insights=True if args.insights else None,
                backend=args.backend,
            )
        except (TypeError, ValueError) as error:
            raise UsageError(f"%%parallel: {error}") from None
        func = cell_function(target, source, namespace, f"<%%parallel cell {self._cells}>")
        items = eval(iterable, namespace)  # noqa: S307 - the user's own expression, as in a for loop
        map_options = {
            "workers": options.workers,
            "chunksize": options.chunksize,
            "progress": options.progress,
            "show_workers": options.show_workers,
            "insights": options.insights,
            "backend": options.backend,
        }
        if args.background:
            results: Any = self._parallel.map_async(func, items, **map_options)
        elif args.unordered:
            results = list(self._parallel.imap_unordered(func, items, **map_options))
        else:
            results = self._parallel.map(func, items, **map_options)
        if result is None:
            return results
        namespace[result] = results
        return None

    @line_magic("parallel")  # type: ignore[arg-type]
    def parallel_line(self, line: str) -> Any:
        """Show or change the worker pool.

        %parallel              status: workers, pids, busy or idle, tasks done, memory
        %parallel workers N    use N workers from now on
        %parallel restart      replace every worker with a fresh process
        %parallel shutdown     stop all workers (the next call starts them again)
        %parallel insights     the table of the last call made with insights on
        """
        words = line.split()
        if not words or words == ["status"]:
            return self._parallel.status()
        if words == ["insights"]:
            try:
                return self._parallel.insights()
            except LookupError as missing:
                raise UsageError(f"%parallel insights: {missing}") from None
        if words[0] == "workers" and len(words) == 2:
            try:
                count = int(words[1])
                self._parallel.configure(workers=count)
            except (TypeError, ValueError):
                raise UsageError(
                    f"%parallel workers needs a positive whole number, got {words[1]!r}"
                ) from None
            print(f"nbparallel: {count} workers")
            return None
        if words == ["restart"]:
            self._parallel.restart()
            print("nbparallel: workers restarted")
            return None
        if words == ["shutdown"]:
            self._parallel.shutdown()
            print("nbparallel: workers stopped")
            return None
        raise UsageError(
            f"%parallel cannot read {line!r}; "
            "use: %parallel [status | workers N | restart | shutdown | insights]"
        )
