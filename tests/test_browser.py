"""The progress widget in a real browser: JupyterLab in headless Chromium, driven by Playwright.

Proves what the kernel-level tests cannot: that the frontend renders the widget, that the bar
moves while the map runs (not only its final state), ends green, turns red for a failing map,
and shows the worker row; that a map with insights on draws the timeline of its workers inside
its bar, live, and keeps its summary. Screenshots are kept in test-artifacts/ (and the timeline's
in docs/, the README's picture, with NBPARALLEL_UPDATE_DOCS=1).
"""

from __future__ import annotations

import ast
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from .browser import CHROMIUM_FLAGS, JupyterLab, find_or_install_chromium
from .conftest import ROOT

ARTIFACTS = Path(
    os.environ.get(
        "NBPARALLEL_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"
    )
)

CELLS = [
    "from nbparallel import parallel\nimport time",
    "def measure(x):\n    time.sleep(0.1)\n    return x * x\n\n"
    "squares = parallel.map(measure, range(40), workers=2, chunksize=1, show_workers=True)",
    "assert squares == [x * x for x in range(40)]",
    "inverses = parallel.map(lambda x: 1 / (x - 5), range(10), workers=2, chunksize=1)",
]

# A map with insights on, as a user writes it: the bar gains the timeline of its workers. The
# items are uneven (one slow one), so that the picture shows a lane idle at the end.
TIMELINE_CELLS = [
    """from nbparallel import parallel
import time

def measure(seconds):
    time.sleep(seconds)
    return seconds

parallel.configure(workers=4)
parallel.map(measure, [0.0] * 4, progress=False)  # the workers start: the picture is all work""",
    """lengths = [0.1] * 14 + [1.0] + [0.1] * 17
timed = parallel.map(measure, lengths, chunksize=2, insights=True)""",
    "assert timed == lengths\nprint(sorted(str(row.pid) for row in parallel.insights().workers))",
]

# Counts the timeline's drawn blocks every 20 ms, from before Run All: proof that it moved.
RECORD_BLOCKS = """() => {
    window.nbparallelBlocks = [];
    setInterval(() => {
        const count = document.querySelectorAll('.nbparallel-timeline g[data-state] rect').length;
        const seen = window.nbparallelBlocks;
        if (seen[seen.length - 1] !== count) seen.push(count);
    }, 20);
}"""

# Records every distinct width of every bar, from before Run All: proof of live updates.
RECORD_WIDTHS = """() => {
    window.nbparallelWidths = [];
    setInterval(() => {
        document.querySelectorAll('.widget-hprogress .progress-bar').forEach((bar, index) => {
            const seen = window.nbparallelWidths[index] = window.nbparallelWidths[index] || [];
            if (seen[seen.length - 1] !== bar.style.width) seen.push(bar.style.width);
        });
    }, 20);
}"""

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(900),
]  # with installing Chromium on a fresh machine


@pytest.fixture(scope="module")
def chromium() -> str:
    path, why_not = find_or_install_chromium()
    if path is None:
        pytest.skip(why_not)
    return path


def write_notebook(path: Path, cells: list[str]) -> None:
    """A fresh notebook for each run: JupyterLab saves outputs into the one it opens."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code) for code in cells])
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(notebook, path)


@pytest.fixture
def lab(tmp_path):
    root = tmp_path / "notebooks"
    root.mkdir()
    write_notebook(root / "progress.ipynb", CELLS)
    write_notebook(root / "timeline.ipynb", TIMELINE_CELLS)
    server = JupyterLab(root, tmp_path)
    yield server
    server.stop()


def open_notebook(page, url: str) -> None:
    """Open a notebook and wait until its kernel is idle: ready for Run All."""
    page.goto(f"{url}?reset")
    # The toolbar says idle before a kernel exists; Run All then opens a kernel dialog.
    page.wait_for_function(
        """() => [...document.querySelectorAll('.jp-StatusBar-Item')].some(
            item => item.textContent.trim().endsWith('| Idle') && !item.textContent.includes('No Kernel'))""",
        timeout=60_000,
    )


@contextlib.contextmanager
def notebook_run(chromium: str, url: str, height: int, recorder: str) -> Iterator[Any]:
    """A page of Chromium on the notebook at `url`, where `recorder` (a script that watches the
    page) was started before Run All was clicked; closed on leaving."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": height})
            open_notebook(page, url)
            page.evaluate(recorder)
            page.click(".lm-MenuBar-itemLabel:text-is('Run')")
            page.click('.lm-Menu-item[data-command="runmenu:run-all"]')
            yield page
        finally:
            browser.close()


def test_progress_bars_render_move_and_end_green_then_red_in_jupyterlab(chromium, lab, tmp_path):
    with notebook_run(chromium, f"{lab.url}/lab/tree/progress.ipynb", 1300, RECORD_WIDTHS) as page:
        bars = page.locator(".widget-hprogress .progress-bar")
        page.wait_for_function(
            "() => document.querySelectorAll('.widget-hprogress .progress-bar.progress-bar-danger').length == 1",
            timeout=120_000,
        )
        page.get_by_text("ZeroDivisionError").first.wait_for(timeout=30_000)  # the map's own error
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "progress-widget.png"))
        top = page.locator(".jp-Cell").nth(1).bounding_box()
        bottom = page.locator(".nbparallel-progress").nth(1).bounding_box()
        assert top is not None and bottom is not None
        page.screenshot(
            path=str(ARTIFACTS / "progress-widget-cells.png"),
            clip={
                "x": top["x"],
                "y": top["y"],
                "width": top["width"],
                "height": bottom["y"] + bottom["height"] - top["y"] + 8,
            },
        )

        assert bars.count() == 2
        first, second = bars.nth(0), bars.nth(1)
        assert "progress-bar-success" in first.get_attribute("class")
        assert first.evaluate("bar => bar.style.width") == "100%"
        assert "progress-bar-danger" in second.get_attribute("class")
        widths = page.evaluate("() => window.nbparallelWidths[0]")
        moving = [w for w in widths if w not in ("", "0%", "100%")]
        assert len(moving) >= 3, f"the bar did not move live; widths seen: {widths}"
        numbers = page.locator(".nbparallel-progress .widget-html-content").all_inner_texts()
        assert any(text.startswith("40/40 items") for text in numbers), numbers
        assert any("1 error" in text for text in numbers), numbers
        assert page.locator(".nbparallel-worker").count() >= 2
        body = page.inner_text("body")
        assert "Error displaying widget" not in body and "Loading widget" not in body


def test_a_map_with_insights_draws_its_timeline_in_its_bar_live_in_jupyterlab(chromium, lab):
    """The bar of `parallel.map(..., insights=True)` renders with the timeline of its workers:
    a lane per worker, labelled with its pid, blocks for its chunks drawn while it ran, and the
    efficiency under it. Its picture is docs/timeline.png."""
    with notebook_run(chromium, f"{lab.url}/lab/tree/timeline.ipynb", 900, RECORD_BLOCKS) as page:
        pids = page.locator(".jp-Cell").nth(2).locator(".jp-OutputArea-output pre")
        pids.wait_for(timeout=120_000)  # the last cell printed the workers of the record
        workers = ast.literal_eval(pids.inner_text().strip())
        progress = page.locator(".jp-Cell").nth(1).locator(".nbparallel-progress")
        assert progress.count() == 1
        bar = progress.locator(".widget-hprogress .progress-bar")
        assert "progress-bar-success" in bar.get_attribute("class")
        assert bar.evaluate("bar => bar.style.width") == "100%"

        timeline = progress.locator(".nbparallel-timeline svg")  # inside the bar's widget
        assert timeline.count() == 1 and timeline.is_visible()
        lanes = timeline.locator("g.nbparallel-lane")
        assert sorted(lanes.locator("text").all_text_contents()) == workers
        assert len(workers) == 4
        # Drawn, not only in the DOM: the lanes have their width on the page.
        box = timeline.bounding_box()
        assert box is not None and box["width"] > 400 and box["height"] > 40
        blocks = timeline.locator("g[data-state] rect").count()
        done = timeline.locator('g[data-state="done"] rect').count()
        assert blocks == done >= 8, (blocks, done)  # 16 chunks; a few may have merged
        seen = page.evaluate("() => window.nbparallelBlocks")
        assert len([n for n in seen if 0 < n < blocks]) >= 3, f"it did not move live: {seen}"
        summary = progress.locator(".nbparallel-timeline-summary")
        assert summary.inner_text().startswith("efficiency "), summary.inner_text()
        body = page.inner_text("body")
        assert "Error displaying widget" not in body and "Loading widget" not in body

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "timeline-page.png"))
        output = page.locator(".jp-Cell").nth(1).locator(".jp-OutputArea-output")
        output.screenshot(path=str(ARTIFACTS / "timeline.png"))
        if os.environ.get("NBPARALLEL_UPDATE_DOCS") == "1":  # the README's picture
            output.screenshot(path=str(ROOT / "docs" / "timeline.png"))
