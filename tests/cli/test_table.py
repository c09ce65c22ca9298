"""The text table keeps one line per row, whatever a folder name holds."""

from __future__ import annotations

from workbench.cli._output import table


def test_control_characters_are_escaped_one_line_per_row() -> None:
    out = table([["new\nline", "ok"], ["tab\there", "é <b>"]], ["name", "status"])
    lines = out.splitlines()
    assert len(lines) == 3
    assert lines[1].startswith("new\\nline")
    assert lines[2].startswith("tab\\there")
    assert "é <b>" in lines[2]
