"""Vision-language checkpoints: the estimate at bfloat16, int8 and nf4 against ``get_memory_footprint()``.

Tiny random Llava and Gemma 3 (tests/tiny_multimodal.py), loaded for real with
``AutoModelForImageTextToText`` (the class the runtime loads them with) and bitsandbytes' CPU
backend; the right value is transformers' own footprint of the loaded model, vision tower and
projector included. bitsandbytes skips the modules transformers tells it to (the head, and for
these families the vision tower where the model says so): the estimate must follow the same list.
"""

from __future__ import annotations

import pytest

from workbench.store import ModelStore, estimate


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny-llava", "tiny-gemma3"])
@pytest.mark.parametrize("quant", ["none", "int8", "nf4"])
def test_vlm_estimate_is_the_footprint_of_a_real_load(vlm_root, name, quant):
    import torch
    from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

    qc = {"none": None, "int8": BitsAndBytesConfig(load_in_8bit=True),
          "nf4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                    bnb_4bit_compute_dtype=torch.bfloat16)}[quant]
    entry = ModelStore([vlm_root], cache_path=None).get(name)
    model = AutoModelForImageTextToText.from_pretrained(vlm_root / name, dtype=torch.bfloat16,
                                                        quantization_config=qc, device_map="cpu")
    try:
        assert estimate(entry, "bfloat16", quant).weights_bytes == model.get_memory_footprint()
    finally:
        del model
