"""What the progress widget costs a call in a real kernel, beside a `tqdm.notebook` bar around the
same call.

    python benchmarks/widget_cost.py [--rounds 300] [--baseline CHECKOUT]

One kernel, started through jupyter_client as JupyterLab starts one (`tests/kernel.py`), whose
messages are read as a frontend reads them; ipywidgets opens a comm for every widget model. Each
round runs, as cells in an order that rotates from round to round, three ways of making the same
call: `off` (progress=False), `bar` (nbparallel's widget, the default in a notebook) and `tqdm`
(progress=False inside `with tqdm(total=...) as bar: ...; bar.update(...)`), for three calls: a
tiny one (200,000 items of `x + 1`, about 20 ms on an idle machine), and two of about 60 ms on 2
workers, 4 items that each sleep 30 ms (the kernel is idle while they run) or keep a core busy
for 30 ms (the workers compete with the kernel for the 2 cores). Each cell times its call itself (perf_counter around it, inside the kernel). A fixed cost
is a cell's time minus the `off` cell's of the same round and call; ratios are paired per round.

Why tqdm goes around the call and not over its results: `for r in tqdm(parallel.map(...))` or
`tqdm(parallel.imap(...), total=n)` adds tqdm's per-item step (200,000 of them on the tiny call)
to its fixed cost, and nbparallel's bar has no per-item cost (its redraws are capped at 10 a
second, so neither bar redraws within these calls). Around the call, tqdm does what nbparallel's
bar does here: a bar shown before the call, its final count and colour after it.

`--baseline` starts a second kernel with another checkout's nbparallel (PYTHONPATH) and adds its
`off` and `bar` cells to every round, interleaved with the others.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 2
SETUP = f"""
import time
from nbparallel import parallel
from tqdm.notebook import tqdm
parallel.configure(workers={WORKERS})
_times = []

def spin(seconds):  # keeps a core busy for `seconds`, as a computation does
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
"""
CALLS = {
    "tiny": ("range(200_000)", "lambda x: x + 1"),
    "60ms-sleep": ("range(4)", "lambda x: time.sleep(0.03) or x"),
    "60ms-busy": ("range(4)", "lambda x: spin(0.03) or x"),
}
WAYS = {
    "off": "parallel.map({func}, {items}, progress=False)",
    "bar": "parallel.map({func}, {items})",
    "tqdm": (
        "with tqdm(total=len({items})) as _bar:\n"
        "    parallel.map({func}, {items}, progress=False)\n"
        "    _bar.update(len({items}))"
    ),
}


def cell(way: str, call: str) -> str:
    """A cell that makes the call one way and keeps how long it took, in the kernel."""
    items, func = CALLS[call]
    body = WAYS[way].format(func=func, items=items).replace("\n", "\n    ")
    return (
        f"_s = time.perf_counter()\nif True:\n    {body}\n_times.append(time.perf_counter() - _s)"
    )


class Session:
    """One kernel with nbparallel from `path` (None: as this interpreter finds it)."""

    def __init__(self, path: str | None) -> None:
        sys.path.insert(0, str(ROOT))
        from tests.kernel import Kernel  # the repository's own real-kernel helper

        saved = os.environ.get("PYTHONPATH")
        if path is not None:
            os.environ["PYTHONPATH"] = path  # inherited by the kernel
        try:
            self.directory = Path(tempfile.mkdtemp(prefix="nbparallel-widget-"))
            self.kernel = Kernel(self.directory)
        finally:
            if path is not None:
                os.environ.pop("PYTHONPATH")
                if saved is not None:
                    os.environ["PYTHONPATH"] = saved
        self.kernel.ok(SETUP)
        self.source = self.kernel.value("__import__('nbparallel').__file__")
        self.models: dict[str, int] = {}

    def run(self, way: str, call: str) -> float:
        before = len(self.kernel.widgets)
        self.kernel.ok(cell(way, call), timeout=120)
        self.models[way] = len(self.kernel.widgets) - before
        return self.kernel.value("_times[-1]")

    def close(self) -> None:
        self.kernel.ok("parallel.shutdown()")
        self.kernel.shutdown()
        shutil.rmtree(self.directory, ignore_errors=True)


def spread(values: list[float], scale: float = 1.0, unit: str = "") -> str:
    q = statistics.quantiles(values, n=10)
    return (
        f"{statistics.median(values) * scale:.2f}{unit} (quartiles "
        f"{statistics.quantiles(values, n=4)[0] * scale:.2f}-"
        f"{statistics.quantiles(values, n=4)[2] * scale:.2f}, "
        f"10-90% {q[0] * scale:.2f}-{q[-1] * scale:.2f})"
    )


def bootstrap_ratio_of_medians(
    top: list[float], bottom: list[float], resamples: int = 2000
) -> tuple[float, float]:
    """Where the ratio of two medians of paired rounds falls when the rounds are resampled
    (2.5% and 97.5%): a paired ratio of two small differences is undefined in rounds where the
    noise makes the bottom one near zero or negative."""
    chooser = random.Random(22)
    pairs = list(zip(top, bottom, strict=True))
    found = []
    for _ in range(resamples):
        sample = chooser.choices(pairs, k=len(pairs))
        below = statistics.median(b for _, b in sample)
        if below > 0:
            found.append(statistics.median(t for t, _ in sample) / below)
    found.sort()
    return found[int(0.025 * len(found))], found[int(0.975 * len(found)) - 1]


def measure(rounds: int, baseline: str | None) -> None:
    sessions = {"": Session(None)}
    if baseline:
        sessions["baseline "] = Session(baseline)
    runs = [(label, way) for label in sessions for way in WAYS if not (label and way == "tqdm")]
    times = {(label, way, call): [] for label, way in runs for call in CALLS}
    try:
        for label, way in runs:  # warm-up: every cell once, not counted
            for call in CALLS:
                sessions[label].run(way, call)
        for number in range(rounds):
            shift = number % len(runs)
            for call in CALLS:
                for label, way in runs[shift:] + runs[:shift]:
                    times[label, way, call].append(sessions[label].run(way, call))
        report(rounds, sessions, runs, times)
    finally:
        for session in sessions.values():
            session.close()


def report(rounds, sessions, runs, times) -> None:
    print(f"{rounds} rounds, {platform.python_version()}, load {os.getloadavg()}")
    for label, session in sessions.items():
        print(
            f"{label or 'this '}kernel: nbparallel from {session.source}; widget models "
            f"per cell: {session.models}"
        )
    for call in CALLS:
        print(f"\n## {call} call")
        for label, way in runs:
            print(f"{label}{way}: {spread(times[label, way, call], 1e3, ' ms')}")
        fixed = {}
        for label, way in runs:
            if way != "off":
                fixed[label, way] = [
                    on - off
                    for on, off in zip(
                        times[label, way, call], times[label, "off", call], strict=True
                    )
                ]
                on_off = [
                    on / off
                    for on, off in zip(
                        times[label, way, call], times[label, "off", call], strict=True
                    )
                ]
                print(
                    f"{label}{way} fixed cost: {spread(fixed[label, way], 1e3, ' ms')}; "
                    f"on/off {spread(on_off, 1, 'x')}"
                )
        ratios = [b / t for b, t in zip(fixed["", "bar"], fixed["", "tqdm"], strict=True) if t > 0]
        low, high = bootstrap_ratio_of_medians(fixed["", "bar"], fixed["", "tqdm"])
        print(
            f"bar fixed cost / tqdm fixed cost, paired: {spread(ratios, 1, 'x')} over "
            f"{len(ratios)} rounds with tqdm's > 0; ratio of medians "
            f"{statistics.median(fixed['', 'bar']) / statistics.median(fixed['', 'tqdm']):.2f}x "
            f"(95% of rounds resampled: {low:.2f}-{high:.2f}x)"
        )
        if ("baseline ", "bar") in fixed:
            ratios = [
                b / t for b, t in zip(fixed["", "bar"], fixed["baseline ", "bar"], strict=True)
            ]
            print(f"bar fixed cost / baseline's, paired: {spread(ratios, 1, 'x')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--baseline", help="a checkout whose nbparallel runs in a second kernel")
    args = parser.parse_args()
    measure(args.rounds, args.baseline)


if __name__ == "__main__":
    main()
