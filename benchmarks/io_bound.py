"""Threads versus processes on I/O-bound work: 400 HTTP requests to a local server that takes
20 ms to answer each with 64 KB (like a slow API or a network file system), 32 workers each.

    python benchmarks/io_bound.py        # writes benchmarks/results/io_bound.md

Runs against 127.0.0.1 only. Each backend gets a warm-up call, then 5 timed repetitions.
"""

from __future__ import annotations

import http.server
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from nbparallel import Parallel

REQUESTS, DELAY, SIZE, WORKERS, REPEATS = 400, 0.02, 64 * 1024, 32, 5


class SlowHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        time.sleep(DELAY)
        body = b"x" * SIZE
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def serve() -> None:
    """The server, in a process of its own so that it does not share a GIL with either backend."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowHandler)
    print(server.server_address[1], flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()  # until the benchmark closes our stdin


def main() -> None:
    server = subprocess.Popen(
        [sys.executable, __file__, "serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    base = f"http://127.0.0.1:{server.stdout.readline().strip()}/"
    urls = [f"{base}{n}" for n in range(REQUESTS)]

    def fetch(url: str) -> bytes:
        with urllib.request.urlopen(url) as response:
            return response.read()  # the data comes back to the notebook

    rows = []
    for backend in ("processes", "threads"):
        session = Parallel()
        session.configure(backend=backend, workers=WORKERS, progress=False)
        started = time.perf_counter()
        assert sum(map(len, session.map(fetch, urls))) == REQUESTS * SIZE
        first = time.perf_counter() - started  # includes starting the workers
        times = []
        for _ in range(REPEATS):
            started = time.perf_counter()
            assert sum(map(len, session.map(fetch, urls))) == REQUESTS * SIZE
            times.append(time.perf_counter() - started)
        session.shutdown()
        rows.append((backend, first, statistics.median(times), min(times), max(times)))
    serial = REQUESTS * DELAY
    best = min(median for _, _, median, _, _ in rows)
    lines = [
        "# I/O-bound work: threads versus processes",
        "",
        f"{REQUESTS} HTTP GETs to a local server answering each in {DELAY * 1000:.0f} ms with "
        f"{SIZE // 1024} KB; {WORKERS} workers; the first call (which starts the workers), then the "
        f"median of {REPEATS} more (serial would take about {serial:.1f} s).",
        "",
        "| backend | first call s | median s | min-max s | median, ratio to best |",
        "| --- | --- | --- | --- | --- |",
        *(
            f"| {b} | {f:.3f} | {m:.3f} | {lo:.3f}-{hi:.3f} | {m / best:.2f}x |"
            for b, f, m, lo, hi in rows
        ),
        "",
        f"Command: `python benchmarks/io_bound.py` (Python {sys.version.split()[0]}, this machine: 2 cores).",
    ]
    out = Path(__file__).parent / "results" / "io_bound.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    assert server.stdin is not None
    server.stdin.close()
    server.wait(10)


if __name__ == "__main__":
    serve() if sys.argv[1:] == ["serve"] else main()
