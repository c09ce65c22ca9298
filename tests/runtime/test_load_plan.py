"""One load resolves its plan once: the dtype the registry's plan resolved is the one the
weights load in, and the loader does not resolve it again (bench/load_walk.py counts the walk)."""

from __future__ import annotations

from workbench.runtime import LoadSpec, loader
from workbench.runtime import registry as registry_module


def test_the_loader_loads_in_the_plans_dtype_without_resolving_it(registry, monkeypatch):
    resolved: list[tuple[str, str]] = []
    real = registry_module.resolve_dtype

    def counted(entry, dtype):
        resolved.append((entry.name, dtype))
        return real(entry, dtype)

    def refused(entry, dtype):
        raise AssertionError(f"the loader resolved {dtype!r} for {entry.name} again")

    monkeypatch.setattr(registry_module, "resolve_dtype", counted)
    monkeypatch.setattr(loader, "resolve_dtype", refused)
    m = registry.load(LoadSpec("tiny-llama", dtype="auto"))
    # tiny-llama is saved in float32 (tests/tiny_models.py); "auto" is resolved once, by the plan.
    assert (resolved, str(next(m.model.parameters()).dtype), m.name) == (
        [("tiny-llama", "auto")], "torch.float32", "tiny-llama")
