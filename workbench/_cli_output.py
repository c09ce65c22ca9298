"""How every ``workbench`` subcommand prints: one JSON document with ``--json``, else text; progress on stderr.

ARCHITECTURE.md section 3: with ``--json`` stdout holds exactly one JSON document,
and progress and logs go to stderr. The subcommands live in several modules
(``cli.py``, ``cli_leases.py``, ``serve/cli.py``); they print through these.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def emit(args: argparse.Namespace, doc: Any, text: str) -> None:
    """Print ``doc`` as JSON when ``args.json`` is set, else ``text``."""
    if args.json:
        json.dump(doc, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print(text)


def _cell(value: Any) -> str:
    """One line: control characters (a newline or tab in a folder name) shown escaped, as ``ls`` does."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def table(rows: list[list[Any]], header: list[str]) -> str:
    """Left-aligned columns two spaces apart, header first; one line per row whatever the cells hold."""
    cells = [[_cell(c) for c in r] for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*r).rstrip() for r in cells)


def progress(msg: str) -> None:
    """A progress line on stderr (stdout stays one JSON document)."""
    print(msg, file=sys.stderr, flush=True)
