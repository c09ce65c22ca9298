"""Tiny random models of several architectures, built with transformers for tests.

They are real checkpoints (config, safetensors, a trained byte-level BPE tokenizer
with a ChatML template) small enough to build in well under a second each, so
the store, the runtime and the UI can be tested against the code paths real
models take without downloading anything.
"""

from __future__ import annotations

import shutil
from pathlib import Path

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = (
    "The capital of France is Paris. The quick brown fox jumps over the lazy dog. "
    "It was the best of times, it was the worst of times. Models run on GPUs and CPUs. "
    "Hello world! What is the answer? Tokens per second, time to first token, memory. "
) * 20

# Small enough to build fast, big enough that every quantized layer is a real bnb layer
# (bitsandbytes' 4-bit blocks are 64 weights; every dimension here is a multiple of 64).
_COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=256)

ARCHS: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", dict(_COMMON, tie_word_embeddings=True)),
    "mistral": ("MistralConfig", dict(_COMMON, tie_word_embeddings=False, sliding_window=None)),
    "qwen2": ("Qwen2Config", dict(_COMMON, tie_word_embeddings=True)),
    "phi3": ("Phi3Config", dict(_COMMON, tie_word_embeddings=False, pad_token_id=0)),
    "gpt2": ("GPT2Config", dict(n_embd=64, n_layer=2, n_head=4, n_positions=256, tie_word_embeddings=True)),
}


def build_tokenizer():
    """A byte-level BPE tokenizer trained on a few sentences, with ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator([_CORPUS], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token="<|endoftext|>", chat_template=CHATML,
    )


def build_tiny(arch: str, dest: Path, *, sharded: bool = False, dtype: str = "float32", seed: int = 0) -> Path:
    """Write a tiny random ``arch`` model (and tokenizer) to ``dest``; returns ``dest``.

    ``sharded`` splits the weights into several safetensors files with an index.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, GenerationConfig

    cls_name, kwargs = ARCHS[arch]
    tokenizer = build_tokenizer()
    vocab = ((len(tokenizer) + 63) // 64) * 64
    config = getattr(transformers, cls_name)(
        vocab_size=vocab, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **kwargs
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest, max_shard_size="60KB" if sharded else "10GB")
    tokenizer.save_pretrained(dest)
    return dest


def expected_params(folder: Path) -> int:
    """``sum(p.numel() for p in model.parameters())`` of the model loaded from ``folder``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def build_from_config(cls_name: str, kwargs: dict, dest: Path, *, dtype: str = "float32", seed: int = 0,
                      tokenizer: bool = True) -> Path:
    """Write a tiny random model of any transformers config class (``"MixtralConfig"``) to ``dest``.

    For architectures outside :data:`ARCHS` (mixtures of experts, sliding windows, multi-query
    attention) that only some tests need; ``vocab_size`` defaults to the tokenizer's, rounded up.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    kwargs = dict(kwargs)
    tok = build_tokenizer() if tokenizer else None
    kwargs.setdefault("vocab_size", 384)
    config = getattr(transformers, cls_name)(**kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    if tok is not None:
        tok.save_pretrained(dest)
    return dest


def build_unknown_cache_model(dest: Path) -> Path:
    """A tiny recurrent_gemma in bfloat16 at ``dest``: a model whose cache the store cannot measure (its
    forward pass returns no cache and keeps its recurrent states on its modules), that loads and generates."""
    return build_from_config("RecurrentGemmaConfig", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1,
        head_dim=16, lru_width=64, attention_window_size=32), dest, dtype="bfloat16")


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


def save_prequantized(src: Path, dest: Path, quant: str) -> Path:
    """Load ``src`` with bitsandbytes ``quant`` in bfloat16 on the CPU and save it to ``dest``.

    A pre-quantized checkpoint made as people make them (``save_pretrained`` after a
    quantized load), with the source's tokenizer files beside it.
    """
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    qc = (BitsAndBytesConfig(load_in_8bit=True) if quant == "int8" else
          BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant, bnb_4bit_compute_dtype=torch.bfloat16))
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16, device_map="cpu", quantization_config=qc)
    model.save_pretrained(dest)
    for name in _TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy(src / name, dest / name)
    return dest


def save_mxfp4(dest: Path) -> int:
    """A tiny GPT-OSS saved by transformers (bfloat16) with its expert matrices re-saved in MXFP4's
    layout with safetensors, as GPT-OSS checkpoints are; returns the ``numel`` of the model built.

    ``X_blocks``: ``[experts, in, out / 32 blocks, 16]`` bytes, two 4-bit values a byte; ``X_scales``:
    one exponent per 32 values; ``config.json`` says ``quant_method: mxfp4``.
    """
    import json

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from store.tiny_configs import tiny_config

    model = AutoModelForCausalLM.from_config(tiny_config("gpt_oss"), dtype=torch.bfloat16)
    model.save_pretrained(dest)
    numel = sum(p.numel() for p in model.parameters())
    tensors = {}
    for name, t in load_file(dest / "model.safetensors").items():
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            experts, rows, cols = t.shape  # stored transposed: [experts, out, in / 32 blocks, 16 bytes]
            tensors[f"{name}_blocks"] = torch.randint(0, 255, (experts, cols, rows // 32, 16), dtype=torch.uint8)
            tensors[f"{name}_scales"] = torch.full((experts, cols, rows // 32), 127, dtype=torch.uint8)
        else:
            tensors[name] = t
    save_file(tensors, dest / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((dest / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "mxfp4"}
    (dest / "config.json").write_text(json.dumps(cfg))
    build_tokenizer().save_pretrained(dest)
    return numel
