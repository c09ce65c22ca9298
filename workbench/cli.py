"""The ``workbench`` command (ARCHITECTURE.md section 3 is its contract).

Every command takes ``--json`` and then prints exactly one JSON document on
stdout; progress and logs go to stderr. Errors exit non-zero with a one-line
message naming the file or input at fault (and, with ``--json``, an error
document on stdout).

Any other exception is one line too (its type and message); the global ``--debug``
flag (``workbench --debug store seed``, or after the command) prints the traceback.

Store roots are checked before a command uses them: a root that is a file, a user store
that cannot be read (or written, for ``seed``, ``import`` and ``delete --yes``) is an
error. A shared root that is missing or unreadable is a one-line warning on stderr and the
command goes on without its models: on JupyterHub the team's folder may be an unmounted
share on one node, and users still want to list and run their own models.

Heavy libraries are imported inside the commands that need them, so
``workbench store list`` never imports torch.
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

from . import _cli_output as output
from .errors import ConfigError, WorkbenchError
from .precision import DTYPES, QUANTS
from .serve import cli as serve_cli


def _warn(msg: str) -> None:
    print(f"workbench: warning: {msg}", file=sys.stderr, flush=True)


def open_store(*, write: bool = False) -> Any:
    """The configured :class:`~workbench.store.ModelStore`, its roots checked first.

    Commands that other modules register should open the store through this, so that a
    bad root reads the same everywhere. Missing shared roots become warnings on stderr.

    Raises:
        StoreRootError, ReadOnlyStoreError: see :func:`workbench.store.roots.check_roots`.
    """
    from .store import ModelStore

    store = ModelStore()
    for problem in store.check_roots(write=write):
        _warn(str(problem))
    return store


# -- store ------------------------------------------------------------------------------------


def cmd_store_list(args: argparse.Namespace) -> int:
    from .store import format_bytes

    store = open_store()
    entries = store.list()
    rows = [[e.name + (f" (shadowed by {e.shadowed_by})" if e.shadowed else ""), e.format, e.status, e.params_str,
             e.dtype or "-", format_bytes(e.size_bytes), str(e.context_length or "-"), e.quantization or "-",
             f"{e.root} ({'rw' if e.writable else 'read-only'})"] for e in entries]
    text = output.table(rows, ["NAME", "FORMAT", "STATUS", "PARAMS", "DTYPE", "SIZE", "CONTEXT", "QUANT", "ROOT"]) \
        if entries else (f"The store ({', '.join(str(r.path) for r in store.roots)}) is empty: "
                         "run `workbench store seed` or `workbench store import PATH`.")
    problems = [f"  {e.name}: {e.problem}" for e in entries if e.problem]
    if problems:
        text += "\n\nProblems:\n" + "\n".join(problems)
    output.emit(args, [e.to_dict() for e in entries], text)
    return 0


def cmd_store_inspect(args: argparse.Namespace) -> int:
    from .errors import EstimateUnavailableError
    from .store import cache_problem, cache_state_bytes, estimate_table, format_bytes, kv_cache_bytes

    entry = open_store().get(args.name)
    doc = entry.to_dict()
    # For people: the record's fields as a summary (as the Store tab's details), then memory.
    lines = output.record_summary(doc, skip=("weights", "name"))
    lines.insert(0, f"{entry.name}")
    table = None
    if entry.ok:
        try:
            table = estimate_table(entry)
        except EstimateUnavailableError as exc:
            doc["estimate"] = None
            doc["estimate_problem"] = str(exc)
            lines.append(f"Memory estimate unavailable: {exc}")
    if table is not None:
        doc["estimate"] = {label: est.total_bytes for label, est in table.items()}
        # The cache in bfloat16, as the label says (the table's first row is float32): the part that
        # grows with the context and the part fixed per sequence, measured from transformers' own cache.
        doc["estimate"]["kv_cache_bytes_per_1k_tokens"] = kv_cache_bytes(entry, 1000, "bfloat16")
        doc["estimate"]["cache_state_bytes"] = cache_state_bytes(entry, "bfloat16")
        problem = cache_problem(entry)
        if problem is not None:
            doc["estimate"]["cache_problem"] = problem
        doc["estimate_detail"] = {label: est.to_dict() for label, est in table.items()}
        lines.append("Memory to load the weights:")
        lines += [f"  {label:<9} {format_bytes(est.total_bytes)}" for label, est in table.items()]
        if problem is not None:
            lines.append(f"KV cache (bfloat16): {problem}")
        else:
            lines.append(f"KV cache per 1,000 tokens (bfloat16): "
                         f"{format_bytes(doc['estimate']['kv_cache_bytes_per_1k_tokens'])}")
            lines.append(f"Fixed cache state per sequence (bfloat16): "
                         f"{format_bytes(doc['estimate']['cache_state_bytes'])}")
        fits = _fits(entry)
        if fits is not None:
            doc["fits"] = fits
            lines.append("Fits now: " + (", ".join(f"{f['precision']} on {f['device']}" for f in fits if f["fits"])
                                         or "nowhere with the memory free now"))
    elif "estimate" not in doc:
        doc["estimate"] = None
    output.emit(args, doc, "\n".join(lines))
    return 0


def _fits(entry: Any) -> list[dict[str, Any]] | None:
    """Each precision on each device alone, as :func:`workbench.runtime.fit.fit_table` checks it (the load's rule)."""
    try:
        from .devices import list_devices
    except ImportError:
        return None
    from .runtime.fit import fit_table

    out = []
    for chk in fit_table(entry, [d.name for d in list_devices()]):
        [b] = chk.budgets
        out.append({"device": b.device, "precision": chk.estimate.label, "needed_bytes": chk.needed_bytes,
                    "free_bytes": b.free_bytes, "leased_bytes": b.leased_bytes,
                    "available_bytes": chk.available_bytes, "parts": chk.parts, "fits": chk.fits,
                    "context_tokens": chk.context_tokens, "message": chk.message})
    return out


def cmd_store_seed(args: argparse.Namespace) -> int:
    from .store.importer import DEFAULT_MODEL_NAME, seed

    store = open_store(write=True)
    already = (store.user_root / DEFAULT_MODEL_NAME).is_dir()
    entry = seed(store, check=not args.no_check, progress=output.progress)
    verb = "already in" if already else "seeded into"
    output.emit(args, {**entry.to_dict(), "seeded": not already}, f"{entry.name} {verb} {entry.root}")
    return 0


def cmd_store_import(args: argparse.Namespace) -> int:
    from .store.importer import import_path

    if args.root:  # an administrator filling a shared root; the user store plays no part
        from .store.shared import import_into_root

        entry = import_into_root(args.path, args.root, name=args.name, check=args.check, progress=output.progress,
                                 convert=args.convert)
    else:
        entry = import_path(args.path, open_store(write=True), name=args.name, check=args.check,
                            progress=output.progress, convert=args.convert)
    output.emit(args, entry.to_dict(), f"imported {entry.name} into {entry.root} ({entry.params_str} parameters)")
    return 0


def cmd_store_delete(args: argparse.Namespace) -> int:
    store = open_store(write=args.yes)
    plan = store.plan_delete(args.name)
    if not args.yes:
        output.emit(args, {"plan": plan.describe(), "frees_bytes": plan.frees_bytes, "deleted": False},
              f"would {plan.describe()}; pass --yes to do it")
        return 0
    freed = store.execute(plan)
    output.emit(args, {"plan": plan.describe(), "frees_bytes": freed, "deleted": True}, f"done: {plan.describe()}")
    return 0


# -- devices and run --------------------------------------------------------------------------


def cmd_devices(args: argparse.Namespace) -> int:
    from .devices import devices_report, format_devices

    report = devices_report()
    output.emit(args, report, format_devices(report))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if args.endpoint:
        # The engine behind an endpoint was placed and quantized when it started: these would be ignored.
        local = [flag for flag, used in (("a model name", args.name), ("--device", args.device != "cpu"),
                                         ("--dtype", args.dtype != "auto"), ("--quant", args.quant != "none"),
                                         ("--allow-pickle", args.allow_pickle),
                                         ("--trust-remote-code", args.trust_remote_code)) if used]
        if local:
            raise ConfigError(f"{', '.join(local)} cannot go with --endpoint {args.endpoint}",
                              hint="an endpoint serves the model its engine was started with: drop them, "
                                   "or run a store model without --endpoint")
        from .serve.cli import cmd_run_endpoint

        return cmd_run_endpoint(args)
    if not args.name:
        raise ConfigError("no model given", hint="pass a store entry name, or --endpoint NAME")
    from .runtime.oneshot import run_once

    open_store()  # a bad root fails here in one line, before torch is imported
    devices = [d.strip() for d in args.device.split(",") if d.strip()]
    report = run_once(
        args.name, args.prompt, devices=devices, dtype=args.dtype, quant=args.quant,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
        allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code,
        progress=None if args.json else output.progress, system_prompt=args.system,
        engine=args.engine, n_ctx=args.n_ctx,
        # The answer on stdout as it is generated (`ollama run`); --json: one document at the end.
        stream_to=lambda s: output.consume(s, live=not args.json),
    )
    summary = (f"[{report.new_tokens} tokens, TTFT {report.ttft_s:.3f} s, {report.tokens_per_s:.1f} tokens/s, "
               f"load {report.load_s:.2f} s, footprint {report.footprint_bytes / 2**20:.1f} MiB on "
               f"{', '.join(report.devices)}]")
    output.finish_run(args, report.to_dict(), report.text, summary, report.interrupted)
    return 130 if report.interrupted else 0


# -- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="workbench", description="Run large language models on your own GPUs.")
    p.add_argument("--debug", action="store_true", help="print the traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)

    def add(parent: Any, name: str, fn: Any, help: str) -> argparse.ArgumentParser:
        sp = parent.add_parser(name, help=help, description=help)
        sp.add_argument("--json", action="store_true", help="print one JSON document on stdout")
        sp.set_defaults(fn=fn)
        return sp

    store = sub.add_parser("store", help="the model store").add_subparsers(dest="store_command", required=True)
    add(store, "list", cmd_store_list, "list every entry in every store root, broken and unsafe ones included")
    sp = add(store, "inspect", cmd_store_inspect, "one entry with its memory estimate")
    sp.add_argument("name")
    sp = add(store, "seed", cmd_store_seed, "import the embedded SmolLM2-135M-Instruct into the user store")
    sp.add_argument("--no-check", action="store_true", help="skip the check generation")
    sp = add(store, "import", cmd_store_import,
             "add a GGUF file (kept at its quantization, run by llama.cpp) or a model folder")
    sp.add_argument("path")
    sp.add_argument("--name", help="the entry's name (default: the file or folder name)")
    sp.add_argument("--convert", action="store_true",
                    help="de-quantize a GGUF file to a bfloat16 safetensors folder for transformers instead")
    sp.add_argument("--check", action="store_true", help="check an imported GGUF with a greedy generation")
    sp.add_argument("--root", help="import into this store root instead of the user store, readable by every user "
                                   "(folders 0755, files 0644): an administrator filling a shared root")
    sp = add(store, "delete", cmd_store_delete, "delete an entry from the user store (a plan unless --yes)")
    sp.add_argument("name")
    sp.add_argument("--yes", action="store_true", help="really delete")

    add(sub, "devices", cmd_devices, "the GPUs and CPU this session can use")
    from .cli_leases import register as register_leases

    register_leases(sub)

    sp = add(sub, "run", cmd_run, "load a model, generate once, unload (or ask an endpoint: --endpoint NAME)")
    sp.add_argument("name", nargs="?", help="a store entry name (not with --endpoint)")
    sp.add_argument("--endpoint", default=None, help="ask this registered endpoint instead of loading a model")
    sp.add_argument("--prompt", required=True)
    sp.add_argument("--device", default="cpu", help="cpu, or cuda:0[,cuda:1...]")
    sp.add_argument("--dtype", default="auto", choices=DTYPES)
    sp.add_argument("--quant", default="none", choices=QUANTS)
    sp.add_argument("--max-new-tokens", type=int, default=64)
    sp.add_argument("--temperature", type=float, default=0.0, help="0 means greedy")
    sp.add_argument("--seed", type=int, default=None)
    sp.add_argument("--system", default=None, help="a system prompt (default: the chat template's own, if any)")
    sp.add_argument("--engine", default="auto", choices=("auto", "llamacpp", "transformers"),
                    help="auto: llama.cpp for a GGUF entry at its own quantization, transformers otherwise")
    sp.add_argument("--n-ctx", type=int, default=None, help="llama.cpp's context in tokens (default 4096)")
    sp.add_argument("--allow-pickle", action="store_true", help="allow pickle checkpoints (weights_only=True)")
    sp.add_argument("--trust-remote-code", action="store_true", help="allow this model's own Python code")
    serve_cli.register(sub)
    return p


def _one_line(text: str) -> str:
    return " ".join(text.split())


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


if __name__ == "__main__":
    sys.exit(main())
