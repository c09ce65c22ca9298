"""The walk of one load through the package: how many modules a ``Registry.load`` visits, and
which concepts it computes more than once.

    .venv/bin/python bench/load_walk.py [--json]

Loads a tiny random llama (tests/tiny_models.py, float32, on the CPU) with a fresh
:class:`~workbench.runtime.Registry` under ``sys.setprofile``, after one warm-up load (so
that imports and first-use caches are not counted), and reports:

* **the spec's walk**: every call of a workbench function that receives the load's
  :class:`LoadSpec` object itself as an argument, in call order, as a sequence of modules.
  A *stop* is a run of consecutive calls in one module (the walk entered the module); the
  *modules* are the distinct ones; a *return* is a stop in a module the walk had already
  left (``returns == stops - modules``). This is "following the spec of ``Registry.load``
  call by call" of issue 20, made mechanical.
* **the spec and entry walk**: the same, following the spec and the store entry it resolves to
  (calls that receive either): the store's estimate, layout and cache functions take the entry.
* **concepts computed per load**: calls of the functions that compute one concept each:
  the store lookup (``ModelStore.get``), the dtype resolution (``load_dtype``), the estimate,
  the cache profile and the layout transformers builds, the engine
  choice (``LoadSpec.uses_llamacpp``) and the precision label (``LoadSpec.precision``), the
  device's free memory (``workbench.devices.memory_free_bytes``, NVML's ``memory_info``) and the
  lease files (``LeaseBook.share``, ``LeaseFolder.list``). A CPU load reads no NVML and no
  lease; a GPU load's counts are tests/runtime/test_leases_load.py's (NVML's fake: one NVML
  memory read, two folder listings, both by ``LeaseBook._read_gpu``).

Counts are of calls, not time: the numbers are the same on every machine for one tree.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

#: (module suffix, function name) -> the concept it computes.
CONCEPTS = {
    ("workbench/store/store.py", "get"): "store lookup (ModelStore.get)",
    ("workbench/store/estimate.py", "load_dtype"): "dtype resolved (estimate.load_dtype)",
    ("workbench/store/estimate.py", "resolve_dtype"): "dtype resolved (estimate.resolve_dtype, before issue 20)",
    ("workbench/store/estimate.py", "estimate"): "memory estimated (estimate.estimate)",
    ("workbench/store/estimate.py", "cache_profile"): "cache profile asked (estimate.cache_profile)",
    ("workbench/store/layout.py", "model_layout"): "layout asked (layout.model_layout)",
    ("workbench/store/layout.py", "layout_or_reason"): "layout asked (layout.layout_or_reason)",
    ("workbench/runtime/spec.py", "uses_llamacpp"): "engine chosen (LoadSpec.uses_llamacpp)",
    ("workbench/runtime/spec.py", "precision"): "precision label (LoadSpec.precision)",
    ("workbench/devices/inventory.py", "memory_free_bytes"): "free memory read (devices.memory_free_bytes)",
    ("workbench/devices/nvml.py", "memory_info"): "NVML memory read (nvml.memory_info)",
    ("workbench/devices/leases/book.py", "share"): "GPU read for the fit (LeaseBook.share)",
    ("workbench/devices/leases/folder.py", "list"): "lease folder listed (LeaseFolder.list)",
}


@dataclass
class Walk:
    """What one load did: the spec's stops (module per stop), and calls per concept."""

    stops: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    #: The same walk following the spec *and* the store entry it resolves to (calls receiving either).
    entry_stops: list[str] = field(default_factory=list)
    concepts: dict[str, int] = field(default_factory=dict)
    #: The whole call tree below ``Registry.load`` through workbench code (calls made by a
    #: workbench function to a workbench function; callbacks from transformers are left out).
    tree_stops: list[str] = field(default_factory=list)

    @property
    def modules(self) -> int:
        return len(set(self.stops))

    @property
    def returns(self) -> int:
        return len(self.stops) - self.modules

    def summary(self) -> dict[str, Any]:
        visits = Counter(self.stops)
        tree = Counter(self.tree_stops)
        by_entry = Counter(self.entry_stops)
        return {"stops": len(self.stops), "modules": self.modules, "returns": self.returns,
                "stops_per_module": dict(visits.most_common()), "concepts": self.concepts,
                "spec_and_entry": {"stops": len(self.entry_stops), "modules": len(by_entry),
                                   "returns": len(self.entry_stops) - len(by_entry),
                                   "stops_per_module": dict(by_entry.most_common())},
                "tree": {"stops": len(self.tree_stops), "modules": len(tree),
                         "returns": len(self.tree_stops) - len(tree), "stops_per_module": dict(tree.most_common())},
                "walk": self.calls}


def _module(filename: str, package: str) -> str | None:
    if not filename.startswith(package):
        return None
    return filename[len(package) - len("workbench/"):]


def walk(registry: Any, spec: Any) -> tuple[Walk, Any]:
    """Load ``spec`` with ``registry`` under a profiler; returns the walk and the loaded model."""
    import workbench
    from workbench.store import ModelEntry

    package = str(Path(workbench.__file__).resolve().parent) + "/"
    found = Walk()
    concepts: Counter[str] = Counter()
    last: list[str | None] = [None]
    tree_last: list[str | None] = [None]
    entry_last: list[str | None] = [None]
    name = spec.model if isinstance(spec.model, str) else spec.model.name

    def is_entry(value: Any) -> bool:
        return isinstance(value, ModelEntry) and value.name == name

    def profile(frame: Any, event: str, _arg: Any) -> None:
        if event != "call":
            return
        code = frame.f_code
        module = _module(code.co_filename, package)
        if module is None:
            return
        concept = CONCEPTS.get((module, code.co_name))
        if concept is not None:
            concepts[concept] += 1
        caller = frame.f_back
        if caller is not None and _module(caller.f_code.co_filename, package) is not None \
                and not code.co_name.startswith("<") and module != tree_last[0]:
            found.tree_stops.append(module)
            tree_last[0] = module
        n_args = code.co_argcount + code.co_kwonlyargcount
        local = frame.f_locals
        args = [local.get(arg) for arg in code.co_varnames[:n_args]]
        if any(a is spec for a in args):
            found.calls.append(f"{module}:{code.co_name}")
            if module != last[0]:
                found.stops.append(module)
                last[0] = module
        if any(a is spec or is_entry(a) for a in args) and module != entry_last[0]:
            found.entry_stops.append(module)
            entry_last[0] = module

    sys.setprofile(profile)
    try:
        loaded = registry.load(spec)
    finally:
        sys.setprofile(None)
    found.concepts = dict(sorted(concepts.items()))
    return found, loaded


def measure() -> dict[str, Any]:
    """The walk of a CPU load of a tiny llama, after a warm-up load."""
    from tiny_models import build_tiny
    from workbench.runtime import LoadSpec, Registry
    from workbench.store import ModelStore

    with tempfile.TemporaryDirectory(prefix="load-walk-") as tmp:
        build_tiny("llama", Path(tmp) / "tiny-llama")
        store = ModelStore([Path(tmp)], cache_path=None)
        registry = Registry(store)
        registry.unload(registry.load(LoadSpec("tiny-llama")).name)  # warm-up: imports, caches
        spec = LoadSpec("tiny-llama")
        found, loaded = walk(registry, spec)
        registry.unload(loaded.name)
    import workbench

    return {"package": str(Path(workbench.__file__).parent), **found.summary()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print everything as JSON")
    args = ap.parse_args()
    result = measure()
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"spec walk: stops {result['stops']}, modules {result['modules']}, returns {result['returns']}")
    for module, n in result["stops_per_module"].items():
        print(f"  {n:3d}  {module}")
    both = result["spec_and_entry"]
    print(f"spec and entry walk: stops {both['stops']}, modules {both['modules']}, returns {both['returns']}")
    for module, n in both["stops_per_module"].items():
        print(f"  {n:3d}  {module}")
    tree = result["tree"]
    print(f"call tree: stops {tree['stops']}, modules {tree['modules']}, returns {tree['returns']}")
    for concept, n in result["concepts"].items():
        print(f"  {concept}: {n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
