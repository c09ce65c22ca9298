"""How every ``workbench`` subcommand prints: one JSON document with ``--json``, else text; progress on stderr.

ARCHITECTURE.md section 3: with ``--json`` stdout holds exactly one JSON document,
and progress and logs go to stderr. Every command group's module in ``workbench/cli/``
adds its commands through :func:`add_command` (so each takes ``--json``) and prints
through these.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_command(parent: Any, name: str, fn: Any, help: str) -> argparse.ArgumentParser:
    """A subcommand ``name`` of ``parent`` (an ``add_subparsers()`` result) that runs ``fn(args)``
    and takes ``--json``; its help is also its description."""
    sp = parent.add_parser(name, help=help, description=help)
    sp.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    sp.set_defaults(fn=fn)
    return sp


def printable(text: Any, keep: str = "\n") -> str:
    """``text`` with every control character but those in ``keep`` shown escaped (``\\x1b``).

    Everything printed for people goes through this (or :func:`_cell`): names, problems and
    messages come from folders and files other users may have named (a shared store), and a
    model's answer from its vocabulary; an escape sequence in them would drive the terminal
    (retitle it, erase the line that says ``broken``, write the clipboard).
    """
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep else c.encode("unicode_escape").decode("ascii") for c in text)


def warn(msg: str) -> None:
    """A one-line warning on stderr (a shared store root that is not there, for one)."""
    print(f"workbench: warning: {printable(msg, keep='')}", file=sys.stderr, flush=True)


def emit(args: argparse.Namespace, doc: Any, text: str) -> None:
    """Print ``doc`` as JSON when ``args.json`` is set, else ``text``."""
    if args.json:
        json.dump(doc, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print(printable(text))


def _cell(value: Any) -> str:
    """One line: control characters (a newline or tab in a folder name) shown escaped, as ``ls`` does."""
    return printable(value, keep="")


def table(rows: list[list[Any]], header: list[str]) -> str:
    """Left-aligned columns two spaces apart, header first; one line per row whatever the cells hold."""
    cells = [[_cell(c) for c in r] for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*r).rstrip() for r in cells)


def progress(msg: str) -> None:
    """A progress line on stderr (stdout stays one JSON document)."""
    print(printable(msg), file=sys.stderr, flush=True)


def consume(stream: Any, *, live: bool) -> bool:
    """Read a :class:`~workbench.runtime.streaming.Stream` to its end, printing the answer to
    stdout as it arrives when ``live`` (reasoning goes to stderr, dimmed by nothing: plain text).

    Ctrl-C stops the stream; what arrived is kept in its result.

    Returns:
        Whether it was interrupted (the caller prints what arrived and exits 130).
    """
    interrupted = False

    def show(piece: Any) -> None:
        if live:
            out = sys.stdout if piece.kind == "content" else sys.stderr
            out.write(printable(piece.text, keep="\n\t"))
            out.flush()

    try:
        for piece in stream.pieces():
            show(piece)
    except KeyboardInterrupt:
        interrupted = True
        stream.stop()  # the producer ends within a step; what it sent meanwhile is shown too
        for piece in stream.pieces():
            show(piece)
    return interrupted


def finish_run(args: argparse.Namespace, doc: Any, text: str, summary: str, interrupted: bool) -> None:
    """The end of a streamed ``workbench run``: with ``--json`` the one document; else the answer
    was already printed, so a newline, and the summary on stderr (stdout stays the answer)."""
    if getattr(args, "json", False):
        emit(args, doc, text)
        return
    sys.stdout.write("\n")
    sys.stdout.flush()
    print(printable(("interrupted: " if interrupted else "") + summary), file=sys.stderr)


#: Field names written for people where the word alone would mislead.
LABELS = {"params": "Parameters", "size_bytes": "Size on disk", "context_length": "Context length (tokens)",
          "num_kv_heads": "KV heads", "dtype": "Weights dtype", "format": "Format", "root": "Store root"}


def _label(key: str) -> str:
    return LABELS.get(key) or key.removesuffix("_bytes").replace("_", " ").capitalize()


def _value(key: str, value: Any) -> str:
    from .._format import format_bytes

    if isinstance(value, bool):
        return "yes" if value else "no"
    if key.endswith("_bytes") and isinstance(value, (int, float)):
        return format_bytes(value)
    if key == "params" and isinstance(value, int):
        return f"{value:,} ({value / 1e6:.1f} M)" if value < 10**9 else f"{value:,} ({value / 1e9:.2f} B)"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_value("", v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k} {_value(k, v)}" for k, v in value.items())
    return _cell(value)


def record_summary(doc: dict[str, Any], skip: tuple[str, ...] = ()) -> list[str]:
    """``Label: value`` lines for people, generic over a record's fields: empty values (``None``,
    ``""``, ``[]``, ``{}``) are left out, bytes are sized, counts grouped, flags yes/no."""
    rows = [(_label(k), _value(k, v)) for k, v in doc.items()
            if k not in skip and v is not None and v != "" and v != [] and v != {} and v != ()]
    width = max((len(label) for label, _ in rows), default=0)
    return [f"{label + ':':<{width + 1}} {value}" for label, value in rows]
