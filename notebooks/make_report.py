"""``make report``: execute ``report.ipynb`` and write it as one offline HTML page, saying on stderr
how far it is and how long it takes.

``jupyter nbconvert --execute`` says nothing until the end: on a busy 2-core machine the report runs
for minutes (a load, prompts, a short quantization study) with no sign of life. This runs the same
two steps (nbclient's ``NotebookClient``, which nbconvert's ``ExecutePreprocessor`` is, then
nbconvert's ``HTMLExporter`` with ``report_nbconvert_config.json``) and uses nbclient's own
``on_cell_start``/``on_cell_executed`` hooks to print, per code cell, its number, its heading, its
seconds and the seconds so far. The expected total comes from the last run on this machine (kept
beside the report as ``report-timing.json``); before a first run, from :data:`FIRST_RUN_S`.

Usage::

    python notebooks/make_report.py [--output-dir reports] [--output report.html]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
NOTEBOOK = HERE / "report.ipynb"
CONFIG = HERE / "report_nbconvert_config.json"
#: Seconds a first run may take on a 2-core CPU with other work beside it: the report's test (this
#: script, then a browser opening the page) took 10 min 14 s on 2026-12-02 with the load average at
#: 12-17 (a browser test beside it); a quiet machine takes less. Later runs expect what the last one took.
FIRST_RUN_S = 600
#: Per cell, at most: a kernel that hangs fails the report instead of running forever.
CELL_TIMEOUT_S = 900
TIMING = "report-timing.json"


def _say(text: str) -> None:
    print(f"[report] {text}", file=sys.stderr, flush=True)


def _heading(nb: Any, index: int) -> str:
    """The markdown heading above cell ``index`` ("Devices and a load"), or its first code line."""
    for cell in reversed(nb.cells[:index]):
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    first = nb.cells[index].source.strip().splitlines()
    return first[0][:60] if first else ""


def _seconds(s: float) -> str:
    s = max(0, round(s))
    return f"{s} s" if s < 60 else f"{s // 60} min {s % 60:02d} s"


def last_timing(path: Path) -> list[float] | None:
    """Per-code-cell seconds of the last run, if it was of a notebook with as many code cells."""
    try:
        cells = json.loads(path.read_text())["cell_s"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return [float(c) for c in cells] if isinstance(cells, list) else None


def make_report(output_dir: Path, output: str = "report.html", notebook: Path = NOTEBOOK) -> Path:
    """Execute ``notebook`` (progress on stderr) and write its HTML to ``output_dir / output``."""
    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter
    from traitlets.config.loader import JSONFileConfigLoader

    # The panels render their static twins even when run from a JupyterLab or VS Code terminal,
    # whose environment would otherwise make them render live widgets (blank in the HTML).
    os.environ["WORKBENCH_DISPLAY"] = "static"
    nb = nbformat.read(notebook, as_version=4)
    # The cells nbclient runs (and calls the hooks for): code cells with source.
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip()]
    output_dir.mkdir(parents=True, exist_ok=True)
    timing_path = output_dir / TIMING
    last = last_timing(timing_path)
    if last is not None and len(last) != len(code):
        last = None
    expected = sum(last) if last else FIRST_RUN_S
    basis = "as the last run here took" if last else "at most, on a busy 2-core CPU; later runs expect what this one takes"
    _say(f"executing {notebook.name}: {len(code)} code cells, about {_seconds(expected)} in all ({basis})")

    started = time.monotonic()
    cell_started = [started]
    cell_s: list[float] = []

    def on_start(cell: Any, cell_index: int, **_: Any) -> None:
        if cell_index in code:
            cell_started[0] = time.monotonic()
            n = code.index(cell_index) + 1
            _say(f"cell {n}/{len(code)} ({_heading(nb, cell_index)}) running")

    def on_done(cell: Any, cell_index: int, **_: Any) -> None:
        if cell_index not in code:
            return
        now = time.monotonic()
        cell_s.append(now - cell_started[0])
        n = len(cell_s)
        left = f", about {_seconds(sum(last[n:]))} left" if last else ""
        _say(f"cell {n}/{len(code)} done in {now - cell_started[0]:.1f} s; {now - started:.1f} s so far{left}")

    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", store_widget_state=False,
                            resources={"metadata": {"path": str(notebook.parent)}},
                            on_cell_start=on_start, on_cell_executed=on_done)
    client.execute()
    config = JSONFileConfigLoader(CONFIG.name, path=str(CONFIG.parent)).load_config()
    html, _ = HTMLExporter(config=config).from_notebook_node(nb)
    target = output_dir / output
    target.write_text(html, encoding="utf-8")
    total = time.monotonic() - started
    timing_path.write_text(json.dumps({"total_s": total, "cell_s": cell_s}))
    _say(f"wrote {target} in {total:.1f} s ({_seconds(total)})")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=Path("reports"))
    parser.add_argument("--output", default="report.html")
    parser.add_argument("--notebook", type=Path, default=NOTEBOOK)
    args = parser.parse_args(argv)
    make_report(args.output_dir, args.output, args.notebook)
    return 0


if __name__ == "__main__":
    sys.exit(main())
