"""What llama.cpp holds for a GGUF entry: tensors at their stored types, its KV cache, its buffers.

A GGUF entry runs on llama.cpp (:mod:`workbench.runtime.llamacpp`), which memory-maps the
file and computes with its tensors as stored (Q4_1 stays Q4_1), so its memory is not the
transformers estimate of :mod:`workbench.store.estimate`. Parts, as llama.cpp reports them
when it loads (``load_tensors: CPU_Mapped model buffer size``, ``llama_kv_cache: CPU KV buffer
size``, ``llama_context: CPU output buffer size``, ``sched_reserve: CPU compute buffer size``):

* weights: the tensors' bytes at their ggml types (``llama_model_size``): block counts
  times block bytes from the ``gguf`` package's ``GGML_QUANT_SIZES``.
* KV cache: ggml-org/llama.cpp ``src/llama-kv-cache.cpp``, ``llama_kv_cache::llama_kv_cache``
  makes, for every layer that has a KV cache (``hparams.n_layer_kv()``) and every stream,
  ``k = ggml_new_tensor_3d(ctx, type_k, n_embd_head_k, n_head_kv(il), kv_size)`` and the same
  for ``v`` with ``type_v`` and ``n_embd_head_v``: ``n_layer x kv_size x (n_head_kv x head_dim)
  x row bytes of the type`` each, f16 (2 bytes) for both by default (``type_k``/``type_v``
  in ``llama_context_params``). ``kv_size`` is the context (``n_ctx``, cells).
* output buffer: one row of float32 logits per sequence (``n_vocab x 4 x n_seq``).
* compute buffer: ggml's graph allocator sizes it from the graph llama.cpp builds for a
  ``n_ubatch`` micro-batch, and llama.cpp exposes no formula. Its dominant part is the
  logits of a micro-batch (``n_vocab x n_ubatch x 4``: 96 MiB of the 98.25 MiB reported
  for SmolLM2-135M at n_ctx 1024); the rest, a few MiB, grows with the micro-batch's
  activations (``n_ubatch x (n_embd + 2 x n_embd_kv) x 4``) and the context
  (``n_ctx x n_embd_kv x 2``). tests/store/test_gguf_estimate.py holds the estimate to
  what llama.cpp reports.

Our own code because the parts llama.cpp allocates are only known once it has loaded;
a fit check must know them before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._records import Record
from ..errors import BrokenModelError, ConfigError
from .entry import ModelEntry, format_bytes

#: llama.cpp's defaults (``llama_context_default_params``): micro-batch and KV types.
DEFAULT_N_UBATCH = 512
DEFAULT_KV_TYPE = "f16"


def ggml_type_row_bytes(type_name: str, n: int) -> int:
    """Bytes of ``n`` elements of ggml type ``type_name`` (``"f16"``, ``"q8_0"``...), as ``ggml_row_size``.

    Raises:
        ConfigError: a type the ``gguf`` package does not know, or ``n`` not a multiple of its block.
    """
    import gguf

    try:
        qtype = gguf.GGMLQuantizationType[type_name.upper()]
    except KeyError:
        raise ConfigError(f"ggml type {type_name!r} is unknown",
                          hint="use f16, bf16, f32, q8_0, q4_0, q4_1, q5_0, q5_1 or iq4_nl") from None
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    if n % block:
        raise ConfigError(f"{n} elements are not whole {type_name} blocks of {block}",
                          hint="use f16 for this model's KV cache")
    return n // block * size


@dataclass(frozen=True)
class GGUFShape:
    """The hyperparameters llama.cpp sizes its buffers from, read from the GGUF's metadata."""

    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: tuple[int, ...]  # per layer (GGUF allows an array)
    head_dim_k: int
    head_dim_v: int
    n_vocab: int

    @property
    def n_embd_kv_max(self) -> int:
        return max(self.n_head_kv) * max(self.head_dim_k, self.head_dim_v)


def gguf_shape(metadata: dict[str, Any], tensors: Any = ()) -> GGUFShape:
    """:class:`GGUFShape` from a GGUF header's ``metadata`` (and tensors, for the vocabulary).

    Raises:
        BrokenModelError: the architecture's block count, embedding length or head count is missing.
    """
    from .gguf_header import GGUFArray

    arch = metadata.get("general.architecture")

    def get(key: str) -> Any:
        return metadata.get(f"{arch}.{key}")

    n_layer, n_embd, n_head = get("block_count"), get("embedding_length"), get("attention.head_count")
    if isinstance(n_head, list):
        n_head = max(n_head)
    if not all(isinstance(v, int) and v > 0 for v in (n_layer, n_embd, n_head)):
        raise BrokenModelError(f"the GGUF metadata of {arch!r} lacks block_count, embedding_length or head_count",
                               hint="re-convert the file with a current llama.cpp")
    kv = get("attention.head_count_kv")
    heads_kv = tuple(kv) if isinstance(kv, list) else (kv if isinstance(kv, int) else n_head,) * n_layer
    dk = get("attention.key_length") or n_embd // n_head
    dv = get("attention.value_length") or n_embd // n_head
    vocab = get("vocab_size")
    if not isinstance(vocab, int):
        tokens = metadata.get("tokenizer.ggml.tokens")
        vocab = tokens.length if isinstance(tokens, GGUFArray) else len(tokens or ())
    if not vocab:
        embd = next((t for t in tensors if t.name == "token_embd.weight"), None)
        vocab = embd.shape[-1] if embd is not None else 0
    return GGUFShape(n_layer, n_embd, n_head, heads_kv, dk, dv, vocab)


def llamacpp_kv_cache_bytes(shape: GGUFShape, n_ctx: int, type_k: str = DEFAULT_KV_TYPE,
                            type_v: str = DEFAULT_KV_TYPE) -> int:
    """Bytes of llama.cpp's KV cache for ``n_ctx`` cells (the rule of ``llama_kv_cache``, see the module)."""
    total = 0
    for heads in shape.n_head_kv:
        if heads:  # layers without attention (recurrent hybrids) keep no KV cells
            total += n_ctx * (ggml_type_row_bytes(type_k, heads * shape.head_dim_k)
                              + ggml_type_row_bytes(type_v, heads * shape.head_dim_v))
    return total


def _compute_bytes(shape: GGUFShape, n_ctx: int, n_ubatch: int) -> int:
    """The compute buffer: a micro-batch's logits, its activations, a context term (see the module)."""
    n_embd_kv = shape.n_embd_kv_max
    return (shape.n_vocab * n_ubatch * 4 + n_ubatch * (shape.n_embd + 2 * n_embd_kv) * 4
            + n_ctx * n_embd_kv * 2)


@dataclass(frozen=True)
class LlamaCppEstimate(Record):
    """Bytes llama.cpp holds for a GGUF at one context, by the parts its load log names.

    Attributes:
        n_ctx: the context, in tokens (llama.cpp's KV cells).
        n_ubatch: the micro-batch the compute buffer is sized for.
        type_k, type_v: the KV cache's ggml types.
        weights_bytes: tensors at their stored types (``llama_model_size``).
        kv_cache_bytes: the KV cache for ``n_ctx`` cells.
        output_bytes: the logits output buffer.
        compute_bytes: the compute buffer (estimated, see the module).
    """

    _json_properties = ("total_bytes",)

    n_ctx: int
    n_ubatch: int
    type_k: str
    type_v: str
    weights_bytes: int
    kv_cache_bytes: int
    output_bytes: int
    compute_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.output_bytes + self.compute_bytes

    @property
    def total_str(self) -> str:
        return format_bytes(self.total_bytes)


def estimate_llamacpp(source: ModelEntry | Any, n_ctx: int, *, type_k: str = DEFAULT_KV_TYPE,
                      type_v: str = DEFAULT_KV_TYPE, n_ubatch: int = DEFAULT_N_UBATCH,
                      n_seq: int = 1) -> LlamaCppEstimate:
    """What llama.cpp will hold for a GGUF entry (or a :class:`~workbench.store.gguf_header.GGUFHeader`).

    Args:
        source: a GGUF store entry, or a parsed header.
        n_ctx: context in tokens (all sequences together, as llama.cpp's ``n_ctx``).
        type_k, type_v: KV cache types (llama.cpp's ``type_k``/``type_v``; f16 by default).
        n_ubatch: llama.cpp's micro-batch (512 by default).
        n_seq: sequences decoded at once (one logits row each).

    Raises:
        ConfigError: not a GGUF entry, a non-positive context, or an unknown KV type.
        BrokenModelError: the header cannot be read or lacks the shape.
    """
    from .gguf_header import GGUFHeader, read_gguf_header

    if n_ctx <= 0:
        raise ConfigError(f"a context of {n_ctx} tokens is not possible", hint="use a positive n_ctx")
    if isinstance(source, GGUFHeader):
        hdr = source
    else:
        if source.format != "gguf" or not source.gguf_file:
            raise ConfigError(f"{source.name} is {source.format}, not GGUF", hint="llama.cpp runs GGUF entries only")
        hdr = read_gguf_header(source.folder / source.gguf_file)
    shape = gguf_shape(hdr.metadata, hdr.tensors)
    weights = 0
    for t in hdr.tensors:
        if t.nbytes is None:
            raise BrokenModelError(f"{hdr.path.name}: tensor {t.name} has ggml type {t.type_id}, unknown here",
                                   hint="upgrade the workbench (and gguf) to a release that knows it", path=hdr.path)
        weights += t.nbytes
    kv = llamacpp_kv_cache_bytes(shape, n_ctx, type_k, type_v)
    output = shape.n_vocab * 4 * max(1, n_seq)
    compute = _compute_bytes(shape, n_ctx, n_ubatch)
    return LlamaCppEstimate(n_ctx, n_ubatch, type_k, type_v, weights, kv, output, compute)


def runs_on_llamacpp(entry: ModelEntry, dtype: str = "auto", quant: str = "none", engine: str = "auto") -> bool:
    """The one rule for which engine a load uses: llama.cpp for a GGUF entry at its own quantization.

    ``engine="auto"`` picks llama.cpp for a GGUF entry loaded as stored (``dtype="auto"``,
    ``quant="none"``); a dtype or a bitsandbytes quantization asks for transformers'
    de-quantizing load instead. ``engine="llamacpp"`` or ``"transformers"`` decide themselves.
    """
    if engine != "auto":
        return engine == "llamacpp"
    return entry.format == "gguf" and dtype == "auto" and quant == "none"


_SHAPES: dict[tuple[str, int, int], tuple[GGUFShape, int]] = {}


def entry_shape(entry: ModelEntry) -> tuple[GGUFShape, int]:
    """``(shape, weights_bytes)`` of a GGUF entry, cached by file, size and mtime (fit tables ask often)."""
    from .gguf_header import read_gguf_header

    path = entry.folder / (entry.gguf_file or "")
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHAPES:
        hdr = read_gguf_header(path)
        if len(_SHAPES) > 64:
            _SHAPES.clear()
        _SHAPES[key] = (gguf_shape(hdr.metadata, hdr.tensors), sum(t.nbytes or 0 for t in hdr.tensors))
    return _SHAPES[key]


def llamacpp_parts(entry: ModelEntry, n_ctx: int, *, type_k: str = DEFAULT_KV_TYPE, type_v: str = DEFAULT_KV_TYPE,
                   n_ubatch: int = DEFAULT_N_UBATCH, n_seq: int = 1) -> dict[str, int]:
    """``{"kv_cache": ..., "compute_buffer": ...}`` for a GGUF entry at ``n_ctx`` (the fit check's parts)."""
    shape, _ = entry_shape(entry)
    compute = _compute_bytes(shape, n_ctx, n_ubatch) + shape.n_vocab * 4 * max(1, n_seq)  # and the output buffer
    return {"kv_cache": llamacpp_kv_cache_bytes(shape, n_ctx, type_k, type_v), "compute_buffer": compute}
