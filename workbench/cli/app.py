"""The ``workbench`` command's parser and its one error handler (ARCHITECTURE.md section 3 is the contract).

Every command takes ``--json`` and then prints exactly one JSON document on
stdout; progress and logs go to stderr. Errors exit non-zero with a one-line
message naming the file or input at fault (and, with ``--json``, an error
document on stdout), usage errors included.

Any other exception is one line too (its type and message); the global ``--debug``
flag (``workbench --debug store seed``, or after the command) prints the traceback.

Each command group is a module of this package with a ``register(subparsers)``
(as vLLM's ``entrypoints/cli/`` is cut); the parser is built from them in
:data:`COMMAND_GROUPS` order, which is the order ``workbench --help`` lists them.
(Imported by name, not ``from . import``: no module of the package imports the package
itself, whose ``__init__`` imports this one.)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from ..errors import WorkbenchError
from .devices import register as devices_group
from .endpoints import register as endpoints_group
from .leases import register as leases_group
from .run import register as run_group
from .serve import register as serve_group
from .store import register as store_group

#: Each command group's ``register(subparsers)`` (one module each), in ``--help`` order.
COMMAND_GROUPS = (store_group, devices_group, leases_group, run_group, serve_group, endpoints_group)


def build_parser() -> argparse.ArgumentParser:
    """The whole ``workbench`` parser; each parsed namespace carries ``fn``, its command."""
    p = argparse.ArgumentParser(prog="workbench", description="Run large language models on your own GPUs.")
    p.add_argument("--debug", action="store_true", help="print the traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)
    for register in COMMAND_GROUPS:
        register(sub)
    return p


def _one_line(text: str) -> str:
    from ._output import printable

    return printable(" ".join(text.split()), keep="")


def _fail(args: argparse.Namespace, doc: dict[str, Any], line: str) -> int:
    if getattr(args, "json", False):
        json.dump(doc, sys.stdout, default=str)
        sys.stdout.write("\n")
    if getattr(args, "debug", False):
        traceback.print_exc()
    print(f"workbench: error: {_one_line(line)}", file=sys.stderr)
    return 1


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    # --debug is global but also accepted after any command, including those other modules
    # register: a subcommand leaves it unrecognised and it is picked out here.
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            args, extra = parser.parse_known_args(words)
            if "--debug" in extra:
                args.debug = True
                extra = [a for a in extra if a != "--debug"]
            if "--json" in extra and hasattr(args, "json"):
                # `workbench --json run ...`: every command takes --json, before it as after it.
                args.json = True
                extra = [a for a in extra if a != "--json"]
            if extra:
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:
        # argparse's usage and message go to stderr as usual; a --json caller still gets its
        # one document on stdout (-h and --help exit 0 and print only the help).
        sys.stderr.write(said.getvalue())
        if exc.code not in (0, None) and "--json" in words:
            lines = said.getvalue().strip().splitlines() or ["invalid arguments"]
            message = lines[-1].split(": error: ", 1)[-1]
            json.dump({"error": "UsageError", "message": message}, sys.stdout)
            sys.stdout.write("\n")
        raise
    sys.stderr.write(said.getvalue())
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    try:
        return args.fn(args)
    except WorkbenchError as exc:
        return _fail(args, exc.to_dict(), str(exc))
    except KeyboardInterrupt:
        if getattr(args, "json", False):
            json.dump({"error": "KeyboardInterrupt", "message": "interrupted"}, sys.stdout)
            sys.stdout.write("\n")
        print("workbench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`workbench store list --json | head`): nothing left to tell it.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:  # a bug or an unforeseen input: one line, the traceback on request
        message = _one_line(str(exc)) or "(no message)"
        line = f"{type(exc).__name__}: {message}"
        if not args.debug:
            line += " (rerun with --debug for the traceback)"
        return _fail(args, {"error": type(exc).__name__, "message": message}, line)
