"""MXFP4 checkpoints (GPT-OSS) counted as the values they hold, estimated as transformers loads them.

The fixture is a tiny GPT-OSS saved by transformers whose expert matrices are re-saved in
MXFP4's layout with safetensors (``X_blocks``: ``[..., blocks, 16]`` bytes, two 4-bit values
a byte; ``X_scales``: one exponent per 32 values). The right values: ``numel`` of the model
transformers builds, and ``get_memory_footprint()`` after transformers loads the MXFP4 file on
the CPU (it dequantizes to bfloat16 there, quantizers/quantizer_mxfp4.py).
"""

from __future__ import annotations

import json

import torch

from workbench.store import ModelStore, estimate

from .tiny_configs import tiny_config


def test_mxfp4_params_and_cpu_footprint(tmp_path):
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "root" / "tiny-oss-mxfp4"
    model = AutoModelForCausalLM.from_config(tiny_config("gpt_oss"), dtype=torch.bfloat16)
    model.save_pretrained(folder)
    numel = sum(p.numel() for p in model.parameters())
    tensors = {}
    for name, t in load_file(folder / "model.safetensors").items():
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            experts, rows, cols = t.shape  # stored transposed: [experts, out, in / 32 blocks, 16 bytes]
            tensors[f"{name}_blocks"] = torch.randint(0, 255, (experts, cols, rows // 32, 16), dtype=torch.uint8)
            tensors[f"{name}_scales"] = torch.full((experts, cols, rows // 32), 127, dtype=torch.uint8)
        else:
            tensors[name] = t
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "mxfp4"}
    (folder / "config.json").write_text(json.dumps(cfg))
    from tiny_models import build_tokenizer

    build_tokenizer().save_pretrained(folder)

    entry = ModelStore([folder.parent], cache_path=None).get(folder.name)
    assert entry.status == "ok", entry.problem
    assert entry.quantization == "mxfp4"
    assert entry.params == numel  # values, not bytes: two a byte in the blocks, scales not counted

    loaded = AutoModelForCausalLM.from_pretrained(folder, device_map="cpu")
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())  # dequantized on the CPU
    est = estimate(entry, "auto", device_type="cpu")
    assert est.weights_bytes + est.quant_state_bytes == loaded.get_memory_footprint()
