"""KV cache estimates against the cache a real forward pass leaves.

Each tiny model is saved by transformers, listed by the store, then run for 1,000
and 4,096 tokens; the right value is the sum of the key and value tensors' bytes
in the ``past_key_values`` the forward pass returns, in bfloat16. Windows are 256
tokens so both contexts exceed them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiny_models import build_from_config, build_unknown_cache_model
from workbench.errors import EstimateUnavailableError
from workbench.store import ModelStore, format_bytes, kv_cache_bytes
from workbench.store.estimate import cache_problem
from workbench.store.kv_cache import measure_cache

_C = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
          max_position_embeddings=8192)
CONFIGS: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", _C),
    "mistral-window": ("MistralConfig", dict(_C, sliding_window=256)),
    "qwen2-window": ("Qwen2Config", dict(_C, sliding_window=256, use_sliding_window=True, max_window_layers=2)),
    "qwen2-window-off": ("Qwen2Config", dict(_C, sliding_window=256, use_sliding_window=False)),
    "gemma2": ("Gemma2Config", dict(_C, head_dim=16, sliding_window=256)),
    "gemma3": ("Gemma3TextConfig", dict(_C, head_dim=16, sliding_window=256, sliding_window_pattern=3)),
    "falcon-multi-query": ("FalconConfig", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                multi_query=True, new_decoder_architecture=False,
                                                max_position_embeddings=8192)),
    "falcon-new-arch": ("FalconConfig", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_kv_heads=2,
                                             new_decoder_architecture=True, max_position_embeddings=8192)),
    "starcoder": ("GPTBigCodeConfig", dict(n_embd=64, n_layer=2, n_head=4, multi_query=True, n_positions=8192,
                                           bos_token_id=0, eos_token_id=0)),
    # BioGPT makes an all-ones attention mask that SDPA's mask code reads (.item(), impossible on the meta
    # device): the store measures it with eager attention.
    "biogpt": ("BioGptConfig", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                    max_position_embeddings=8192)),
}
# Configs written before transformers 5 carry no `layer_types`: the store must derive them as transformers does.
LEGACY = ("qwen2-window", "gemma2", "gemma3", "starcoder")


@pytest.fixture(scope="module")
def kv_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kv-models")
    for name, (cls, kwargs) in CONFIGS.items():
        build_from_config(cls, kwargs, root / name)
    for name in LEGACY:
        src, dest = root / name, root / f"{name}-legacy"
        dest.mkdir()
        for f in src.iterdir():
            os.link(f, dest / f.name) if f.name != "config.json" else None
        cfg = json.loads((src / "config.json").read_text())
        cfg.pop("layer_types", None)
        if cfg.get("model_type") == "gpt_bigcode":
            cfg.pop("num_key_value_heads", None)  # StarCoder's published config says only multi_query
        (dest / "config.json").write_text(json.dumps(cfg))
    return root


def _cache_bytes(folder: Path, *contexts: int) -> list[int]:
    """Bytes of keys and values in the cache bfloat16 forward passes leave after each of ``contexts`` tokens.

    The tokens go in as consecutive chunks of at most 512 over one cache (a prefill in
    pieces), so one model serves every context length and eager attention (Gemma 2)
    never builds a 4k x 4k score matrix.
    """
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 384, (1, max(contexts)), generator=gen)
    out, cache, done = [], None, 0
    for n in sorted(contexts):
        while done < n:
            step = min(512, n - done)
            with torch.no_grad():
                cache = model(ids[:, done:done + step], past_key_values=cache, use_cache=True).past_key_values
            done += step
        out.append(sum(t.nbytes for t in _layer_tensors(cache)))
    return out


def _layer_tensors(cache):
    """Every tensor the cache's layers hold (keys, values, conv and recurrent states), each once."""
    import torch

    seen = {}
    for layer in cache.layers:
        for value in vars(layer).values():
            for t in (value if isinstance(value, (list, tuple)) else [value]):
                if isinstance(t, torch.Tensor):
                    seen[id(t)] = t
    return list(seen.values())


@pytest.mark.slow
@pytest.mark.parametrize("name", [*CONFIGS, *(f"{n}-legacy" for n in LEGACY)])
def test_kv_estimate_matches_real_cache(kv_root, name):
    entry = ModelStore([kv_root], cache_path=None).get(name)
    for tokens, real in zip((1000, 4096), _cache_bytes(kv_root / name, 1000, 4096)):
        est = kv_cache_bytes(entry, tokens, "bfloat16")
        assert est is not None, (name, tokens, est, real)
        assert abs(est - real) <= 0.03 * real, (name, tokens, est, real)


def test_sliding_window_bounds_growth(kv_root):
    """Past the window only the full-attention layers grow (nothing to load for this one)."""
    store = ModelStore([kv_root], cache_path=None)
    full, slide = store.get("llama"), store.get("mistral-window")
    assert kv_cache_bytes(slide, 4096) == kv_cache_bytes(slide, 10_000) < kv_cache_bytes(full, 4096)
    qwen, off = store.get("qwen2-window"), store.get("qwen2-window-off")
    # Two of four layers slide: past the window the cache grows at half the rate of the one without.
    assert kv_cache_bytes(qwen, 10_000) - kv_cache_bytes(qwen, 5_000) == (
        kv_cache_bytes(off, 10_000) - kv_cache_bytes(off, 5_000)) // 2


def _cli(*args: str, store: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, WORKBENCH_STORE=str(store))
    return subprocess.run([sys.executable, "-m", "workbench.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300, check=True)


@pytest.mark.slow
def test_inspect_kv_label_and_number_agree(kv_root):
    """`store inspect` labels its KV figure bfloat16: JSON and text both give the bfloat16 cache of 1,000 tokens."""
    (real,) = _cache_bytes(kv_root / "llama", 1000)
    doc = json.loads(_cli("store", "inspect", "llama", "--json", store=kv_root).stdout)
    kv = doc["estimate"]["kv_cache_bytes_per_1k_tokens"]
    assert abs(kv - real) <= 0.03 * real
    text = _cli("store", "inspect", "llama", store=kv_root).stdout
    line = next(ln for ln in text.splitlines() if "KV cache per 1,000 tokens" in ln)
    assert "bfloat16" in line
    assert line.rstrip().endswith(format_bytes(kv))


def test_state_kept_on_modules_is_unavailable_never_zero(tmp_path):
    """recurrent_gemma's forward pass returns no cache and keeps its states as module attributes (what
    transformers' own real pass shows): the store says why it cannot measure that, never 0 bytes."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = build_unknown_cache_model(tmp_path / "recurrent")
    real = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        out = real(input_ids=torch.tensor([[1, 2, 3]]), use_cache=True)
    assert "cache" not in out
    assert any(isinstance(v, torch.Tensor) for m in real.modules() for v in vars(m).values())
    entry = ModelStore([tmp_path], cache_path=None).get("recurrent")
    assert kv_cache_bytes(entry, 1000) is None
    problem = cache_problem(entry)
    assert problem.startswith("estimate unavailable: recurrent: its forward pass returns no cache but keeps state")
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=torch.bfloat16)
    with pytest.raises(EstimateUnavailableError) as raised:
        measure_cache(meta, "recurrent")
    assert raised.value.context["reason"] == "cache"
