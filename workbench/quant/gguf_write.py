"""Write a llama-family safetensors model as an F16/F32 GGUF, for llama.cpp's quantizer.

llama-cpp-python ships neither llama.cpp's ``convert_hf_to_gguf.py`` nor any converter
(its wheel holds the ``llama_cpp`` package and the shared libraries only), so the study
writes the unquantized GGUF it quantizes from with the ``gguf`` package's ``GGUFWriter``,
following what ``convert_hf_to_gguf.py`` does for ``LlamaForCausalLM``: tensor names from
``gguf.get_tensor_name_map(MODEL_ARCH.LLAMA)``, the query and key projections permuted to
llama.cpp's rotary layout (``LlamaModel.permute``), 1-D tensors (norms) kept in float32, the
tokenizer as a ``gpt2`` BPE vocabulary (tokens in id order, padded to the model's vocabulary
with ``[PAD{i}]`` as the converter does, merges from ``tokenizer.json``).

Only the ``llama`` model type is written (SmolLM2, Llama, TinyLlama...); others raise.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._bounded_read import load_json, read_text
from ..errors import ConfigError
from ..store.limits import TEMPLATE_MAX_BYTES, json_max_bytes

#: Output types this writer produces: ``GGUFWriter`` tensor dtype per name.
OUT_TYPES = ("F16", "F32")


def _json(path: Path) -> Any:
    # The folder may be a shared store's (another user's): bounded, and no symlink followed out of it.
    return load_json(path, json_max_bytes(path.name), follow_symlinks=False)


def _permute(w: Any, n_head: int, n_head_kv: int | None) -> Any:
    """``convert_hf_to_gguf.py`` ``LlamaModel.permute``: HF's rotary halves to llama.cpp's interleaved pairs."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tokenizer(folder: Path, vocab_size: int) -> tuple[list[bytes], list[int], list[str]]:
    """``(tokens, token_types, merges)`` from ``tokenizer.json`` (a byte-level BPE)."""
    import gguf

    doc = _json(folder / "tokenizer.json")
    model = doc.get("model") or {}
    if model.get("type") != "BPE":
        raise ConfigError(f"{folder}: tokenizer.json is a {model.get('type')} tokenizer, not BPE",
                          hint="give the study an F16 GGUF of the model instead (gguf_source=)")
    by_id = {int(i): t for t, i in model["vocab"].items()}
    added = {int(a["id"]): a for a in doc.get("added_tokens") or ()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i in added:
            tokens.append(added[i]["content"].encode())
            types.append(int(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED))
        elif i in by_id:
            tokens.append(by_id[i].encode())
            types.append(int(gguf.TokenType.NORMAL))
        else:
            tokens.append(f"[PAD{i}]".encode())
            types.append(int(gguf.TokenType.UNUSED))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or ()]
    return tokens, types, merges


def write_gguf(folder: str | Path, dest: str | Path, *, out_type: str = "F16",
               weight_files: Sequence[str] | None = None) -> Path:
    """Write the safetensors model in ``folder`` as one GGUF file at ``dest``; returns ``dest``.

    Args:
        folder: a model folder (``config.json``, ``*.safetensors``, ``tokenizer.json``).
        dest: the ``.gguf`` file to write (its folder exists).
        out_type: ``"F16"`` or ``"F32"`` for the 2-D weights.
        weight_files: the weight files by name, as the store's scan checked them
            (``ModelEntry.weight_files``); default: the folder's ``*.safetensors``.

    Raises:
        ConfigError: not a ``llama`` model, no ``tokenizer.json`` BPE, or an unknown ``out_type``.
    """
    import gguf
    import numpy as np
    from safetensors import safe_open

    folder, dest = Path(folder), Path(dest)
    if out_type not in OUT_TYPES:
        raise ConfigError(f"GGUF output type {out_type!r} is not written here", hint=f"use one of {OUT_TYPES}")
    cfg = _json(folder / "config.json")
    if cfg.get("model_type") != "llama":
        raise ConfigError(f"{folder} is a {cfg.get('model_type')!r} model; the study writes GGUF only for llama",
                          hint="give the study an F16 GGUF of the model (gguf_source=), or compare store GGUFs")
    if not (folder / "tokenizer.json").is_file():
        raise ConfigError(f"{folder} has no tokenizer.json", hint="give the study an F16 GGUF (gguf_source=)")
    n_head, n_kv = int(cfg["num_attention_heads"]), int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"])
    n_layer = int(cfg["num_hidden_layers"])
    w = gguf.GGUFWriter(str(dest), "llama")
    _add_metadata(w, cfg, folder, out_type)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layer)
    tied = bool(cfg.get("tie_word_embeddings"))
    files = ([folder / f for f in weight_files] if weight_files is not None
             else sorted(folder.glob("*.safetensors")))
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open has keys(), not iteration)
                if key.endswith("rotary_emb.inv_freq") or (tied and key == "lm_head.weight"):
                    continue
                name = names.get_name(key, try_suffixes=(".weight", ".bias"))
                if name is None:
                    raise ConfigError(f"{file}: tensor {key!r} has no llama.cpp name", hint="not a plain llama model")
                data = f.get_tensor(key).float().numpy()
                if key.endswith("q_proj.weight"):
                    data = _permute(data, n_head, n_head)
                elif key.endswith("k_proj.weight"):
                    data = _permute(data, n_head, n_kv)
                w.add_tensor(name, data.astype(np.float16 if out_type == "F16" and data.ndim > 1 else np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dest


def _add_metadata(w: Any, cfg: dict[str, Any], folder: Path, out_type: str) -> None:
    """The llama hyper-parameters, file type, tokenizer and chat template, as ``convert_hf_to_gguf.py`` writes them."""
    import gguf

    n_head, n_kv = int(cfg["num_attention_heads"]), int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"])
    hidden, n_layer = int(cfg["hidden_size"]), int(cfg["num_hidden_layers"])
    vocab = int(cfg["vocab_size"])
    file_type = gguf.LlamaFileType.MOSTLY_F16 if out_type == "F16" else gguf.LlamaFileType.ALL_F32
    w.add_name(folder.name)
    w.add_context_length(int(cfg.get("max_position_embeddings") or 2048))
    w.add_embedding_length(hidden)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(int(cfg["intermediate_size"]))
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(int(cfg.get("head_dim") or hidden // n_head))
    # transformers 5 writes rope_theta inside rope_parameters; older configs at the top.
    theta = cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta") or 10000.0
    w.add_rope_freq_base(float(theta))
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps") or 1e-5))
    w.add_vocab_size(vocab)
    w.add_file_type(int(file_type))
    tokens, types, merges = _tokenizer(folder, vocab)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    if merges:
        w.add_token_merges(merges)
    for key, adder in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id),
                       ("pad_token_id", w.add_pad_token_id)):
        value = cfg.get(key)
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, int):
            adder(value)
    template = _chat_template(folder)
    if template:
        w.add_chat_template(template)


def _chat_template(folder: Path) -> str | None:
    """The model's chat template (``tokenizer_config.json`` or ``chat_template.jinja``), or None."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return read_text(jinja, TEMPLATE_MAX_BYTES, follow_symlinks=False)
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        value = _json(cfg).get("chat_template")
        return value if isinstance(value, str) else None
    return None
