"""The Quantization panel's status line during a study: percent done and the time left, from the pace so far;
before the study a placeholder instead of empty plots, after it the figures with the study's rows.

The clock is the panel's (injected): a study that runs at a steady pace of 120 s in all
must say, at each step it shows, that ``120 * (1 - done)`` seconds are left, whatever the
steps the study reports. The study itself is real (tiny-llama on the CPU).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from workbench.ui.quant_panel import QuantizationPanel, format_seconds

pytestmark = pytest.mark.slow

TOTAL_S = 120.0


def test_status_shows_percent_done_and_time_left_at_a_steady_pace(tiny_store: Path) -> None:
    panel: QuantizationPanel | None = None
    # Time is where a study of TOTAL_S seconds at a steady pace would be at the fraction reached so far.
    panel = QuantizationPanel(clock=lambda: 1000.0 + TOTAL_S * panel.progress[1])
    shown: list[str] = []
    try:
        panel.outputs.status.observe(lambda ch: shown.append(ch["new"]), names="value")
        # Before a study: what to do, and no empty canvases.
        assert "No study yet: choose precisions and Run" in panel.outputs.table.value
        assert panel.outputs.plots.layout.display == "none"
        study = panel.run("tiny-llama", ["float32", "bfloat16"], "cpu", eval_tokens=64, new_tokens=4,
                          kl_tokens=16, prompts=("Hello",))
        assert all(r.ok for r in study.rows), [r.error for r in study.rows]
        steps = [m for s in shown if (m := re.fullmatch(r"(.+) \((\d+)%\) &middot; about (.+) left", s))]
        assert len(steps) >= 3, shown  # loading, generating and scoring each variant, throttled to 0.25 s
        for m in steps:
            done = int(m.group(2)) / 100
            # The percent is rounded for display: the time left is that of the exact fraction, within 1 %.
            lo, hi = format_seconds(TOTAL_S * (1 - done - 0.005)), format_seconds(TOTAL_S * (1 - done + 0.005))
            assert m.group(3) in {lo, hi, format_seconds(TOTAL_S * (1 - done))}, m.group(0)
        assert shown[-1] == "done"
        # After it: both figures shown, each with a point (a bar) per variant, in the study's order.
        assert panel.outputs.plots.layout.display == "grid"
        labels = [r.variant.label for r in study.rows]
        assert list(panel.outputs.quality.data[0].text) == labels
        assert list(panel.outputs.speed.data[0].x) == labels
        assert list(panel.outputs.speed.data[0].y) == [r.tokens_per_s for r in study.rows]
        assert not any("left" in s for s in shown[:1]), shown[0]  # nothing is estimated before 5 % is done
    finally:
        panel.close()
