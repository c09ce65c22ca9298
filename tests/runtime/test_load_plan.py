"""One load resolves its plan once: the dtype the registry's plan resolved is the one the
weights load in, and the loader does not resolve it again (bench/load_walk.py counts the walk).

The model is saved in bfloat16 and loaded on the CPU asked as ``"auto"`` and as ``"float32"``:
the stored dtype differs from one of the two answers whichever way a resolution goes wrong
(``"auto"`` taken as float32, or the asked float32 ignored for the checkpoint's), so a wrong
resolution fails here. The right answer for ``"auto"`` is what safetensors reads from the file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tiny_models import build_tiny
from workbench.runtime import LoadSpec, Registry, loader
from workbench.runtime import registry as registry_module
from workbench.store import ModelStore


@pytest.fixture(scope="module")
def bf16_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bf16")
    build_tiny("llama", root / "tiny-llama-bf16", dtype="bfloat16")
    return root


def _stored_dtypes(folder: Path) -> set[str]:
    """The dtypes of the tensors in the checkpoint, as the reference reader loads them."""
    from safetensors.torch import load_file

    return {str(t.dtype) for f in folder.glob("*.safetensors") for t in load_file(f).values()}


@pytest.mark.parametrize("asked", ["auto", "float32"])
def test_the_loader_loads_in_the_plans_dtype_without_resolving_it(bf16_root, monkeypatch, asked):
    stored = _stored_dtypes(bf16_root / "tiny-llama-bf16")
    assert stored == {"torch.bfloat16"}  # the premise: a checkpoint whose dtype float32 is not
    expected = {"auto": stored, "float32": {"torch.float32"}}[asked]
    resolved: list[tuple[str, str]] = []
    real = registry_module.resolve_dtype

    def counted(entry, dtype):
        resolved.append((entry.name, dtype))
        return real(entry, dtype)

    def refused(entry, dtype):
        raise AssertionError(f"the loader resolved {dtype!r} for {entry.name} again")

    monkeypatch.setattr(registry_module, "resolve_dtype", counted)
    monkeypatch.setattr(loader, "resolve_dtype", refused)
    registry = Registry(ModelStore([bf16_root], cache_path=None))
    m = registry.load(LoadSpec("tiny-llama-bf16", dtype=asked))
    try:
        loaded = {str(p.dtype) for p in m.model.parameters()}
        assert (resolved, loaded) == ([("tiny-llama-bf16", asked)], expected)
    finally:
        registry.unload_all()
