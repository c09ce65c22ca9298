"""One load resolves its dtype once: the store's estimate decides it (store.estimate.load_dtype, the
one rule), the registry's plan takes the estimate's answer, and the loader loads in it without
resolving it again (bench/load_walk.py counts the walk).

The model is saved in bfloat16 and loaded on the CPU asked as ``"auto"`` and as ``"float32"``:
the stored dtype differs from one of the two answers whichever way a resolution goes wrong
(``"auto"`` taken as float32, or the asked float32 ignored for the checkpoint's), so a wrong
resolution fails here. The right answer for ``"auto"`` is what safetensors reads from the file.
An MXFP4 checkpoint, which transformers dequantizes on the CPU whatever was asked, is where the
estimate's and the plan's answers would part if the plan resolved the dtype on its own: the
parameters of the model transformers built say which is right.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from tiny_models import build_tiny, save_mxfp4
from workbench.runtime import LoadSpec, Registry, loader
from workbench.runtime import registry as registry_module
from workbench.store import ModelStore

# The module, not the function workbench.store re-exports under the same name.
estimate_module = importlib.import_module("workbench.store.estimate")


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
    real = estimate_module.load_dtype

    def counted(entry, dtype):
        resolved.append((entry.name, dtype))
        return real(entry, dtype)

    def refused(entry, dtype):
        raise AssertionError(f"{dtype!r} for {entry.name} resolved again, not taken from the estimate")

    monkeypatch.setattr(estimate_module, "load_dtype", counted)  # the estimate's: the one resolution
    monkeypatch.setattr(registry_module, "load_dtype", refused)
    monkeypatch.setattr(loader, "load_dtype", refused)
    registry = Registry(ModelStore([bf16_root], cache_path=None))
    m = registry.load(LoadSpec("tiny-llama-bf16", dtype=asked))
    try:
        loaded = {str(p.dtype) for p in m.model.parameters()}
        assert (resolved, loaded) == ([("tiny-llama-bf16", asked)], expected)
    finally:
        registry.unload_all()


@pytest.fixture(scope="module")
def mxfp4_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mxfp4")
    save_mxfp4(root / "tiny-oss-mxfp4")
    return root


@pytest.mark.parametrize(("asked", "holds"), [("auto", "bfloat16"), ("float32", "float32")])
def test_what_the_estimate_counts_is_what_an_mxfp4_load_holds(mxfp4_root, asked, holds):
    """transformers dequantizes MXFP4 on the CPU (no kernels) to the dtype the load asks for (its warning
    says bf16, but Mxfp4Dequantize casts to the parameter's dtype): the dtype the estimate counts is the
    one the plan hands to from_pretrained, and the one the parameters of the model transformers built
    have; the footprint is the estimate's. (Before, the estimate counted bfloat16 whatever was asked
    while the plan loaded float32: half the footprint.)"""
    registry = Registry(ModelStore([mxfp4_root], cache_path=None))
    m = registry.load(LoadSpec("tiny-oss-mxfp4", dtype=asked))
    try:
        loaded = {str(p.dtype) for p in m.model.parameters()}
        assert (m.fit.estimate.dtype, loaded) == (holds, {f"torch.{holds}"})
        assert m.footprint_bytes == m.fit.estimate.total_bytes
    finally:
        registry.unload_all()
