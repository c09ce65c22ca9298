"""Every curated notebook runs top to bottom on a CPU with the embedded model, and shows what it promises.

Executed by nbclient (what ``nbconvert --execute`` uses), so these also check the
static side: no live front end, panels render their static twins.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from .conftest import NOTEBOOKS, REPO, outputs_text, widget_outputs

pytestmark = pytest.mark.slow

_PLOTLY_JS = re.compile(r"<script[^>]*>\s*/\*\*\s*\* plotly\.js v[\s\S]*?</script>")


def test_every_notebook_is_tested() -> None:
    tested = {"00-start-here", "01-model-store", "02-load-and-place", "03-prompting", "04-telemetry",
              "05-quantization-study", "report"}
    assert {p.stem for p in NOTEBOOKS.glob("*.ipynb")} == tested


def test_notebooks_are_stored_without_outputs() -> None:
    import nbformat

    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), path.name


def test_widget_scan_finds_a_widget_view() -> None:
    """The check every notebook run goes through (conftest.run_notebook) can fail."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    clean = nbformat.v4.new_code_cell("1 + 1", outputs=[nbformat.v4.new_output(
        "execute_result", data={"text/plain": "2"}, execution_count=1)])
    bar = nbformat.v4.new_code_cell("import_model(...)", outputs=[nbformat.v4.new_output(
        "display_data", data={"application/vnd.jupyter.widget-view+json": {"model_id": "x", "version_major": 2,
                                                                          "version_minor": 0},
                              "text/plain": "  0%|          | 0/272"})])
    nb.cells = [clean, bar]
    assert widget_outputs(nb) == ["cell 1: application/vnd.jupyter.widget-view+json ('import_model(...)')"]
    nb.cells = [clean]
    assert widget_outputs(nb) == []


def test_library_progress_bars_leave_no_widget_in_a_headless_kernel(notebook_env) -> None:
    """What the GGUF import runs under: transformers' bars and the GGUF reader's ``tqdm.auto`` loop.

    The last cell is the control: a bare ``tqdm.auto`` bar in the same kernel is a widget view.
    """
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "import transformers.modeling_gguf_pytorch_utils as gguf_utils\n"
            "from transformers.utils import logging as hf_logging\n"
            "from workbench.store.importer import library_progress_bars_off\n"
            "with library_progress_bars_off():\n"
            "    n = sum(1 for _ in gguf_utils.tqdm(range(50), desc='Converting and de-quantizing GGUF tensors...'))\n"
            "    n += sum(1 for _ in hf_logging.tqdm(range(50), desc='Loading weights'))\n"
            "n, hf_logging.is_progress_bar_enabled()"),
        nbformat.v4.new_code_cell("from tqdm.auto import tqdm\nsum(1 for _ in tqdm(range(5)))"),
    ]
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(notebook_env)}}).execute()
    assert "(100, True)" in outputs_text(nb)  # the loops ran, and the bars are back on afterwards
    found = widget_outputs(nb)
    assert found, found
    assert all(f.startswith("cell 1:") for f in found), found


def test_00_start_here(run_notebook) -> None:
    nb = run_notebook("00-start-here.ipynb")
    text = outputs_text(nb)
    # No Jupyter server session started this kernel, so the panels render static twins.
    assert "'static'" in text
    assert "Loading widget" not in text
    assert "application/vnd.jupyter.widget-view+json" not in str(nb)
    assert "SmolLM2-135M-Instruct" in text
    assert "Telemetry" in text
    assert "Paris" in text
    assert "Tokens/s" in text


def test_01_model_store(run_notebook) -> None:
    text = outputs_text(run_notebook("01-model-store.ipynb"))
    assert "truncated-model" in text
    assert "'broken'" in text
    assert "pickled-model" in text
    assert "'unsafe'" in text
    assert "smollm2-from-gguf" in text
    assert "'gguf'" in text  # kept at its own quantization (llama.cpp)
    assert "Fits now" in text
    assert "nf4" in text


def test_02_load_and_place(run_notebook) -> None:
    text = outputs_text(run_notebook("02-load-and-place.ipynb"))
    assert "does not fit" in text
    assert ": fits" in text
    assert "freed" in text
    assert "footprint" in text
    assert "'cpu'" in text  # the placement dict


def test_03_prompting(run_notebook) -> None:
    text = outputs_text(run_notebook("03-prompting.ipynb"))
    # Greedy, like the seed check: the one fact asserted is the one `store seed` relies on.
    assert "Paris" in text
    assert "Tokens/s" in text
    assert "Batch" in text
    assert "ttft_s" in text


def test_04_telemetry(run_notebook) -> None:
    text = outputs_text(run_notebook("04-telemetry.ipynb"))
    assert "Plotly.newPlot" in text
    assert "plotly.js v" in text  # plotly.js inline, once
    assert text.count("plotly.js v") == 1
    assert "load_started" in text
    assert "unload" in text
    assert "time_s,type,cpu_percent" in text


def test_05_quantization_study(run_notebook) -> None:
    text = outputs_text(run_notebook("05-quantization-study.ipynb"))
    for label in ("bfloat16", "int8", "nf4+dq", "fp4"):
        assert label in text
    assert "ppl" in text
    assert "Recommendation" in text
    assert "of the memory" in text
    assert "Memory vs quality" in text
    assert "Plotly.newPlot" in text
    assert text.count("plotly.js v") == 1


def test_report_renders_offline_and_says_how_far_it_is(notebook_env: Path, tmp_path: Path) -> None:
    """``make report``'s own script (notebooks/make_report.py): on stderr, each code cell as it runs and
    finishes with its seconds and the seconds so far, the expected total first, the total last; a second
    run expects what the first took. The HTML: plots with plotly.js inline, tables, the answer; no CDN,
    no widgets, and not one network request in a browser."""
    import subprocess
    import sys

    import nbformat

    code_cells = sum(1 for c in nbformat.read(notebook_env / "report.ipynb", as_version=4).cells
                     if c.cell_type == "code" and c.source.strip())
    reports = tmp_path / "reports"
    run = subprocess.run([sys.executable, str(notebook_env / "make_report.py"), "--output-dir", str(reports)],
                         capture_output=True, text=True, timeout=3600, cwd=notebook_env)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [ln for ln in run.stderr.splitlines() if ln.startswith("[report] ")]
    assert re.fullmatch(rf"\[report\] executing report\.ipynb: {code_cells} code cells, about .+ in all "
                        r"\(at most, on a busy 2-core CPU; .+\)", lines[0]), lines[0]
    done = [re.fullmatch(r"\[report\] cell (\d+)/(\d+) done in ([\d.]+) s; ([\d.]+) s so far", ln) for ln in lines]
    done = [m for m in done if m]
    assert [int(m.group(1)) for m in done] == list(range(1, code_cells + 1)), lines
    so_far = [float(m.group(4)) for m in done]
    assert so_far == sorted(so_far)
    assert so_far[-1] >= sum(float(m.group(3)) for m in done) - 0.1 * code_cells
    total = re.fullmatch(r"\[report\] wrote (.+) in ([\d.]+) s \(.+\)", lines[-1])
    assert total, lines[-1]
    assert Path(total.group(1)) == reports / "report.html", lines[-1]
    assert float(total.group(2)) >= so_far[-1]
    # The next run expects what this one took (read back, not run again: a second run costs minutes).
    sys.path.insert(0, str(notebook_env))
    try:
        import make_report

        assert make_report.last_timing(reports / make_report.TIMING) == pytest.approx(
            [float(m.group(3)) for m in done], abs=0.06)
    finally:
        sys.path.remove(str(notebook_env))
        sys.modules.pop("make_report", None)

    html = (reports / "report.html").read_text(encoding="utf-8")
    out = reports / "report.html"
    (REPO / "test-output").mkdir(exist_ok=True)
    shutil.copyfile(out, REPO / "test-output" / "report.html")

    assert html.count("plotly.js v") == 1, "plotly.js should be inlined exactly once"
    assert "Plotly.newPlot" in html
    assert "<table" in html
    assert "Paris" in html
    assert "Tokens/s" in html
    assert "freed" in html
    assert "load_finished" in html
    assert "Memory vs quality" in html
    assert "Recommendation" in html  # the short quantization study
    assert "Loading widget" not in html
    assert "widget-view+json" not in html
    # plotly.js itself mentions CDNs (map tiles and icons it never fetches here); the page must not.
    page = _PLOTLY_JS.sub("", html)
    assert len(page) < len(html) - 1_000_000
    for cdn in ("cdn.jsdelivr", "cdn.plot.ly", "unpkg.com", "cdnjs.cloudflare.com/ajax/libs/require.js",
                "cdnjs.cloudflare.com/ajax/libs/mathjax"):
        assert cdn not in page, cdn
    # (nbconvert's Mermaid loader names its CDN too, but imports it only where a diagram is: none here;
    # the browser below says whether anything is fetched.)

    chromium = Path("/usr/bin/chromium")
    assert chromium.exists(), "Debian chromium is missing: `make chromium` installs it"
    from playwright.sync_api import sync_playwright

    failed: list[str] = []
    outside: list[str] = []

    def route(r) -> None:
        url = r.request.url
        if url.startswith(("file:", "data:", "blob:", "http://127.0.0.1", "http://localhost")):
            r.continue_()
        else:  # no network at all: only the file itself (and what it inlines) may load
            outside.append(url)
            r.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page_ = browser.new_page(viewport={"width": 1200, "height": 1600})
            page_.on("requestfailed", lambda req: failed.append(f"{req.url} ({req.failure})"))
            page_.route("**/*", route)
            page_.goto(out.as_uri(), wait_until="load")
            page_.locator(".js-plotly-plot .main-svg").first.wait_for(state="attached", timeout=30_000)
            assert page_.locator(".js-plotly-plot").count() >= 1
            assert "Paris" in page_.inner_text("body")
            page_.wait_for_load_state("networkidle")
        finally:
            browser.close()
    assert (failed, outside) == ([], [])
