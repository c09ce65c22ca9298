"""``workbench store list|inspect|seed|import|delete``: the model store (ARCHITECTURE.md section 3).

Store roots are checked before a command uses them: a root that is a file, a user store
that cannot be read (or written, for ``seed``, ``import`` and ``delete --yes``) is an
error. A shared root that is missing or unreadable is a one-line warning on stderr and the
command goes on without its models: on JupyterHub the team's folder may be an unmounted
share on one node, and users still want to list and run their own models.
"""

from __future__ import annotations

import argparse
from typing import Any

from ._output import _cell, add_command, emit, progress, record_summary, table, warn


def open_store(*, write: bool = False) -> Any:
    """The configured :class:`~workbench.store.ModelStore`, its roots checked first.

    Every command opens the store through this, so that a bad root reads the same
    everywhere. Missing shared roots become warnings on stderr.

    Raises:
        StoreRootError, ReadOnlyStoreError: see :func:`workbench.store.roots.check_roots`.
    """
    from ..store import ModelStore

    store = ModelStore()
    for problem in store.check_roots(write=write):
        warn(str(problem))
    return store


def cmd_store_list(args: argparse.Namespace) -> int:
    from ..store import format_bytes

    store = open_store()
    entries = store.list()
    rows = [[e.name + (f" (shadowed by {e.shadowed_by})" if e.shadowed else ""), e.format, e.status, e.params_str,
             e.dtype or "-", format_bytes(e.size_bytes), str(e.context_length or "-"), e.quantization or "-",
             f"{e.root} ({'rw' if e.writable else 'read-only'})"] for e in entries]
    text = table(rows, ["NAME", "FORMAT", "STATUS", "PARAMS", "DTYPE", "SIZE", "CONTEXT", "QUANT", "ROOT"]) \
        if entries else (f"The store ({', '.join(str(r.path) for r in store.roots)}) is empty: "
                         "run `workbench store seed` or `workbench store import PATH`.")
    # One line each whatever a name or a problem holds (a newline in another user's folder name).
    problems = [f"  {_cell(e.name)}: {_cell(e.problem)}" for e in entries if e.problem]
    if problems:
        text += "\n\nProblems:\n" + "\n".join(problems)
    emit(args, [e.to_dict() for e in entries], text)
    return 0


def cmd_store_inspect(args: argparse.Namespace) -> int:
    from ..errors import EstimateUnavailableError
    from ..store import cache_problem, cache_state_bytes, estimate_table, format_bytes, kv_cache_bytes
    from ..store.coverage import verified

    # The skeleton the estimate builds also says whether the checkpoint covers the model (store/coverage.py).
    entry = verified(open_store().get(args.name))
    doc = entry.to_dict()
    # For people: the record's fields as a summary (as the Store tab's details), then memory.
    # A dense model's expert fields say nothing (0 shared experts, active = all): not printed.
    dense = ("shared_experts", "active_params") if doc.get("num_experts") is None else ()
    lines = record_summary(doc, skip=("weights", "name", *dense))
    lines.insert(0, _cell(entry.name))
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
        # A GGUF entry runs on llama.cpp, whose cache is f16 by default (the same two bytes a value).
        kind = "f16, llama.cpp" if entry.format == "gguf" else "bfloat16"
        if problem is not None:
            lines.append(f"KV cache ({kind}): {problem}")
        else:
            lines.append(f"KV cache per 1,000 tokens ({kind}): "
                         f"{format_bytes(doc['estimate']['kv_cache_bytes_per_1k_tokens'])}")
            lines.append(f"Fixed cache state per sequence ({kind}): "
                         f"{format_bytes(doc['estimate']['cache_state_bytes'])}")
        fits = _fits(entry)
        if fits is not None:
            doc["fits"] = fits
            lines.append("Fits now: " + (", ".join(f"{f['precision']} on {f['device']}" for f in fits if f["fits"])
                                         or "nowhere with the memory free now"))
    elif "estimate" not in doc:
        doc["estimate"] = None
    emit(args, doc, "\n".join(lines))
    return 0


def _fits(entry: Any) -> list[dict[str, Any]] | None:
    """Each precision on each device alone, as :func:`workbench.runtime.fit.fit_table` checks it (the load's rule)."""
    try:
        from ..devices import list_devices
    except ImportError:
        return None
    from ..runtime.fit import fit_table

    out = []
    for chk in fit_table(entry, [d.name for d in list_devices()]):
        [b] = chk.budgets
        out.append({"device": b.device, "precision": chk.estimate.label, "needed_bytes": chk.needed_bytes,
                    "free_bytes": b.free_bytes, "leased_bytes": b.leased_bytes,
                    "available_bytes": chk.available_bytes, "parts": chk.parts, "fits": chk.fits,
                    "context_tokens": chk.context_tokens, "message": chk.message})
    return out


def cmd_store_seed(args: argparse.Namespace) -> int:
    from ..store.importer import DEFAULT_MODEL_NAME, seed

    store = open_store(write=True)
    already = (store.user_root / DEFAULT_MODEL_NAME).is_dir()
    entry = seed(store, check=not args.no_check, progress=progress)
    verb = "already in" if already else "seeded into"
    emit(args, {**entry.to_dict(), "seeded": not already}, f"{entry.name} {verb} {entry.root}")
    return 0


def cmd_store_import(args: argparse.Namespace) -> int:
    from ..store.importer import import_path

    if args.root:  # an administrator filling a shared root; the user store plays no part
        from ..store.shared import import_into_root

        entry = import_into_root(args.path, args.root, name=args.name, check=args.check, progress=progress,
                                 convert=args.convert)
    else:
        entry = import_path(args.path, open_store(write=True), name=args.name, check=args.check,
                            progress=progress, convert=args.convert)
    emit(args, entry.to_dict(), f"imported {entry.name} into {entry.root} ({entry.params_str} parameters)")
    return 0


def cmd_store_delete(args: argparse.Namespace) -> int:
    store = open_store(write=args.yes)
    plan = store.plan_delete(args.name)
    if not args.yes:
        emit(args, {"plan": plan.describe(), "frees_bytes": plan.frees_bytes, "deleted": False},
              f"would {plan.describe()}; pass --yes to do it")
        return 0
    freed = store.execute(plan)
    emit(args, {"plan": plan.describe(), "frees_bytes": freed, "deleted": True}, f"done: {plan.describe()}")
    return 0


def register(subparsers: Any) -> None:
    """Add ``store`` and its commands to the ``workbench`` command's subparsers."""
    store = subparsers.add_parser("store", help="the model store").add_subparsers(dest="store_command", required=True)
    add_command(store, "list", cmd_store_list, "list every entry in every store root, broken and unsafe ones included")
    sp = add_command(store, "inspect", cmd_store_inspect, "one entry with its memory estimate")
    sp.add_argument("name")
    sp = add_command(store, "seed", cmd_store_seed, "import the embedded SmolLM2-135M-Instruct into the user store")
    sp.add_argument("--no-check", action="store_true", help="skip the check generation")
    sp = add_command(store, "import", cmd_store_import,
                     "add a GGUF file (kept at its quantization, run by llama.cpp) or a model folder")
    sp.add_argument("path")
    sp.add_argument("--name", help="the entry's name (default: the file or folder name)")
    sp.add_argument("--convert", action="store_true",
                    help="de-quantize a GGUF file to a bfloat16 safetensors folder for transformers instead")
    sp.add_argument("--check", action="store_true", help="check an imported GGUF with a greedy generation")
    sp.add_argument("--root", help="import into this store root instead of the user store, readable by every user "
                                   "(folders 0755, files 0644): an administrator filling a shared root")
    sp = add_command(store, "delete", cmd_store_delete, "delete an entry from the user store (a plan unless --yes)")
    sp.add_argument("name")
    sp.add_argument("--yes", action="store_true", help="really delete")
