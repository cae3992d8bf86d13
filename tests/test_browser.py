"""The progress widget in a real browser: JupyterLab in headless Chromium, driven by Playwright.

Proves what the kernel-level tests cannot: that the frontend renders the widget, that the bar
moves while the map runs (not only its final state), ends green, turns red for a failing map,
and shows the worker row; that the timeline of a call's workers draws its lanes, moves, and keeps
its summary. Screenshots are kept in test-artifacts/.
"""

from __future__ import annotations

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

# The live timeline (nbparallel.timeline) as a call's insights would feed it: four workers,
# chunks of known lengths (one failed, one worker starved for work), drawn 20 times a second on
# a clock that advances 0.2 s per redraw.
TIMELINE_CELLS = [
    f"""import sys, time
from IPython.display import display
from nbparallel.timeline import TimelineView
sys.path.insert(0, {str(ROOT)!r})
from tests.spans import Span  # the fields of nbparallel.insights.ChunkSpan

plan = []  # (worker, begin, seconds, failed): a worker's chunks back to back
for lane, lengths in enumerate([[0.4] * 9, [0.3, 0.5] * 4, [0.25] * 14, [0.6, 0.6]]):
    begin = 0.0
    for index, length in enumerate(lengths):
        plan.append((41000 + lane, begin, length, (lane, index) == (1, 4)))
        begin += length + 0.02

def spans_at(now):
    found = []
    for n, (worker, begin, length, failed) in enumerate(plan):
        if begin <= now:
            end = begin + length if begin + length <= now else None
            state = "running" if end is None else "failed" if failed else "done"
            found.append(Span(worker, 10 * n, 10, begin - 0.01, begin, end, end, state))
    return found""",
    """view = TimelineView(4)
display(view.widget)
for step in range(1, 19):
    view.update(spans_at(step * 0.2), 0.0, step * 0.2)
    time.sleep(0.05)
view.finish(spans_at(3.8), 0.0, 3.8, "efficiency 76% · worker 41003 waited 68% of the time "
            "for work: uneven chunks, try chunksize=5")""",
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


def test_the_timeline_renders_its_lanes_live_and_keeps_its_summary_in_jupyterlab(chromium, lab):
    with notebook_run(chromium, f"{lab.url}/lab/tree/timeline.ipynb", 900, RECORD_BLOCKS) as page:
        summary = page.locator(".nbparallel-timeline-summary")
        summary.wait_for(timeout=120_000)
        assert summary.inner_text().startswith("efficiency 76% · worker 41003 waited")

        timeline = page.locator(".nbparallel-timeline svg")
        assert timeline.count() == 1 and timeline.is_visible()
        lanes = page.locator(".nbparallel-timeline g.nbparallel-lane")
        assert lanes.count() == 4
        assert lanes.locator("text").all_text_contents() == ["41000", "41001", "41002", "41003"]
        # Drawn, not only in the DOM: the lanes have their width on the page.
        box = timeline.bounding_box()
        assert box is not None and box["width"] > 400 and box["height"] > 60
        assert page.locator('.nbparallel-timeline g[data-state="failed"] rect').count() == 1
        blocks = page.locator(".nbparallel-timeline g[data-state] rect").count()
        assert blocks >= 25, blocks
        seen = page.evaluate("() => window.nbparallelBlocks")
        assert len([n for n in seen if 0 < n < blocks]) >= 3, f"it did not move live: {seen}"
        body = page.inner_text("body")
        assert "Error displaying widget" not in body and "Loading widget" not in body

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "timeline-page.png"))
        output = page.locator(".jp-Cell").nth(1).locator(".jp-OutputArea-output")
        output.screenshot(path=str(ARTIFACTS / "timeline.png"))  # docs/timeline.png is one
