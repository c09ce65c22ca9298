"""UI tests drive panels through their public surface (``controls``, ``outputs``, ``figures``, methods).

A test that reaches into ``panel._something`` pins the implementation instead of what a notebook
user sees and can do, so a refactor breaks it for no reason; this scan keeps that from creeping back.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from workbench.ui.base import WidgetSet

TESTS = Path(__file__).resolve().parents[1]
# Every file that drives a panel: tests/ui, and any other test that imports a panel from the ui layer
# (panel tests also live beside the serve, store and devices layers).
SCANNED = sorted({*(TESTS / "ui").glob("*.py"),
                  *(p for p in TESTS.rglob("test_*.py") if "workbench.ui" in (t := p.read_text()) and "Panel" in t)})
# IPython's display protocol is public even though it starts with an underscore.
PROTOCOL = {"_repr_mimebundle_", "_repr_html_"}


def _private_accesses(path: Path, root: Path = TESTS) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if node.attr not in PROTOCOL:
                found.append(f"{path.relative_to(root)}:{node.lineno}: .{node.attr}")
    return found


def test_ui_tests_use_no_private_attributes() -> None:
    assert all(p.exists() for p in SCANNED)
    found = [hit for p in SCANNED for hit in _private_accesses(p)]
    assert found == [], "use panel.controls / panel.outputs / public methods instead:\n" + "\n".join(found)


def test_the_scan_catches_a_private_access(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("panel._filter.value = 'x'\nbundle = panel._repr_mimebundle_()\n")
    assert [hit.rsplit(": ", 1)[1] for hit in _private_accesses(probe, tmp_path)] == ["._filter"]


def test_widget_set_is_read_only() -> None:
    ws = WidgetSet(model="m", budgets={"cpu": "b"})
    assert ws.model == ws["model"] == "m"
    assert ws.budgets["cpu"] == "b"
    assert list(ws) == ["model", "budgets"]
    with pytest.raises(AttributeError, match="read-only"):
        ws.model = "other"
    with pytest.raises(TypeError):
        ws.budgets["cpu"] = "other"  # type: ignore[index]
    with pytest.raises(AttributeError, match="have: model, budgets"):
        _ = ws.quant


def test_quantization_panel_controls_drive_its_settings(tiny_store: Path) -> None:
    from workbench.ui.quant_panel import VARIANT_CHOICES, QuantizationPanel

    panel = QuantizationPanel()
    try:
        controls = panel.controls
        assert set(controls.variants) == set(VARIANT_CHOICES)
        label = VARIANT_CHOICES[-1]
        controls.variants[label].value = not controls.variants[label].value
        assert (label in panel.variants) == controls.variants[label].value
        controls.eval_tokens.value = 96
        assert panel.eval_tokens == 96
        assert "No study yet" in panel.outputs.table.value
        with pytest.raises(AttributeError, match="read-only"):
            panel.controls.run = None
    finally:
        panel.close()
