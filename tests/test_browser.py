"""The progress widget in a real browser: JupyterLab in headless Chromium, driven by Playwright.

Proves what the kernel-level tests cannot: that the frontend renders the widget, that the bar
moves while the map runs (not only its final state), ends green, turns red for a failing map,
and shows the worker row. A screenshot is kept in test-artifacts/.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

from .browser import CHROMIUM_FLAGS, JupyterLab, find_or_install_chromium

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


@pytest.fixture
def lab(tmp_path):
    root = tmp_path / "notebooks"
    root.mkdir()
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code) for code in CELLS])
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(
        notebook, root / "progress.ipynb"
    )  # a fresh one: JupyterLab saves outputs into it
    server = JupyterLab(root, tmp_path)
    yield server
    server.stop()


def test_progress_bars_render_move_and_end_green_then_red_in_jupyterlab(chromium, lab, tmp_path):
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1300})
            page.goto(f"{lab.url}/lab/tree/progress.ipynb?reset")
            # The toolbar says idle before a kernel exists; Run All then opens a kernel dialog.
            page.wait_for_function(
                """() => [...document.querySelectorAll('.jp-StatusBar-Item')].some(
                    item => item.textContent.trim().endsWith('| Idle') && !item.textContent.includes('No Kernel'))""",
                timeout=60_000,
            )
            page.evaluate(RECORD_WIDTHS)
            page.click(".lm-MenuBar-itemLabel:text-is('Run')")
            page.click('.lm-Menu-item[data-command="runmenu:run-all"]')

            bars = page.locator(".widget-hprogress .progress-bar")
            page.wait_for_function(
                "() => document.querySelectorAll('.widget-hprogress .progress-bar.progress-bar-danger').length == 1",
                timeout=120_000,
            )
            page.get_by_text("ZeroDivisionError").first.wait_for(
                timeout=30_000
            )  # the map's own error
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
        finally:
            browser.close()
