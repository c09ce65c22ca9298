"""MXFP4 checkpoints (GPT-OSS) counted as the values they hold, estimated as transformers loads them.

The fixture is a tiny GPT-OSS saved by transformers whose expert matrices are re-saved in
MXFP4's layout with safetensors (``X_blocks``: ``[..., blocks, 16]`` bytes, two 4-bit values
a byte; ``X_scales``: one exponent per 32 values). The right values: ``numel`` of the model
transformers builds, and ``get_memory_footprint()`` after transformers loads the MXFP4 file on
the CPU (it dequantizes there, quantizers/quantizer_mxfp4.py, to the dtype of the load).
"""

from __future__ import annotations

import torch

from tiny_models import save_mxfp4
from workbench.store import ModelStore, estimate


def test_mxfp4_params_and_cpu_footprint(tmp_path):
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "root" / "tiny-oss-mxfp4"
    numel = save_mxfp4(folder)
    entry = ModelStore([folder.parent], cache_path=None).get(folder.name)
    assert entry.status == "ok", entry.problem
    assert entry.quantization == "mxfp4"
    assert entry.params == numel  # values, not bytes: two a byte in the blocks, scales not counted

    loaded = AutoModelForCausalLM.from_pretrained(folder, device_map="cpu")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}  # dequantized on the CPU
    est = estimate(entry, "auto", device_type="cpu")
    assert est.weights_bytes + est.quant_state_bytes == loaded.get_memory_footprint()
    # Dequantized to the dtype asked, not always to bfloat16 (transformers' Mxfp4Dequantize casts to the
    # parameter's dtype): float16 keeps transformers' float32 modules, which the layout counts too.
    for asked in ("float32", "float16"):
        loaded = AutoModelForCausalLM.from_pretrained(folder, device_map="cpu", dtype=getattr(torch, asked))
        est = estimate(entry, asked, device_type="cpu")
        assert (est.dtype, est.total_bytes) == (asked, loaded.get_memory_footprint())
