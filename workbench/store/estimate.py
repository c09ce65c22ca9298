"""Memory estimates from header statistics, before anything is loaded.

The estimate is built to match what transformers' ``model.get_memory_footprint()``
reports after the load (parameters and buffers, counted by element size), so the
two can be compared; bitsandbytes' quantization state (absmax scales), which the
footprint does not count but the device must hold, is reported beside it.

How bitsandbytes stores weights, and so how we count them:

* ``int8`` (LLM.int8): linear weights 1 byte each, plus one float32 scale per
  output row (``SCB``);
* ``nf4``/``fp4``: linear weights packed two per byte, plus one absmax per block
  of 64 weights: float32, or with double quantization one byte per block plus a
  float32 per 256 blocks;
* embeddings, the output head, norms and biases keep the compute dtype.

The load peak (:func:`load_peak`) is what a load holds at once, which on the CPU
is far above the footprint: see there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._records import Record
from ..errors import BrokenModelError, ConfigError
from ..precision import DTYPE_BYTES, FOUR_BIT, QUANTS, DeviceKind, precision_label
from .entry import ModelEntry, format_bytes
from .kv_cache import CacheProfile, gguf_kv_bytes_per_token

# The precisions `workbench store inspect` reports (ARCHITECTURE.md section 3).
TABLE_PRECISIONS: tuple[tuple[str, str, str], ...] = (
    ("float32", "float32", "none"),
    ("bfloat16", "bfloat16", "none"),
    ("int8", "bfloat16", "int8"),
    ("nf4", "bfloat16", "nf4"),
)
_BLOCK = 64  # bitsandbytes' default 4-bit block size


def load_dtype(entry: ModelEntry, dtype: str) -> str:
    """The dtype a load of ``entry`` asked at ``dtype`` holds its weights in: the one rule for it.

    ``"auto"`` becomes the checkpoint's floating dtype (bfloat16 for GGUF or integer checkpoints).
    An MXFP4 checkpoint that transformers dequantizes (no kernels) holds this dtype too, not always
    bfloat16 as its warning says: ``Mxfp4Dequantize`` (``integrations/mxfp4.py``) dequantizes "to the
    dtype of the parameter they load into", the model's dtype (tests/runtime/test_load_plan.py).

    The store's :func:`estimate` counts the weights at this dtype (its :attr:`MemoryEstimate.dtype`);
    the runtime's load plan takes the estimate's answer and hands it to ``from_pretrained``, so what
    is counted and what is loaded cannot differ.

    Raises:
        ConfigError: a dtype that is neither ``"auto"`` nor one of :data:`DTYPE_BYTES`.
    """
    if dtype == "auto":
        return entry.dtype if entry.format != "gguf" and entry.dtype in DTYPE_BYTES else "bfloat16"
    if dtype not in DTYPE_BYTES:
        raise ConfigError(f"dtype {dtype!r} is not supported", hint=f"use one of {', '.join(DTYPE_BYTES)} or 'auto'")
    return dtype


@dataclass(frozen=True)
class MemoryEstimate(Record):
    """Bytes a model needs on its devices at one precision.

    Attributes:
        weights_bytes: parameter bytes as ``get_memory_footprint()`` counts them.
        quant_state_bytes: bitsandbytes scales the footprint leaves out.
        load_peak_bytes: the most memory the load holds at once (full-precision
            copies made before quantization on the CPU, for example).
        kv_cache_bytes_per_1k_tokens: the cache that grows with the context, after 1,000 tokens, batch 1
            (``None``: unavailable, ``cache_problem`` says why).
        cache_state_bytes: the cache fixed per sequence (conv and recurrent states), batch 1.
        cache_problem: why the cache could not be measured (``"estimate unavailable: ..."``), else ``None``.
    """

    _json_properties = ("total_bytes",)

    dtype: str
    quant: str
    double_quant: bool
    weights_bytes: int
    quant_state_bytes: int
    load_peak_bytes: int
    kv_cache_bytes_per_1k_tokens: int | None
    cache_state_bytes: int | None = None
    cache_problem: str | None = None

    @property
    def total_bytes(self) -> int:
        """What the loaded weights hold on the device(s): weights plus quantization state."""
        return self.weights_bytes + self.quant_state_bytes

    @property
    def label(self) -> str:
        return precision_label(self.dtype, self.quant, self.double_quant)

    @property
    def total_str(self) -> str:
        return format_bytes(self.total_bytes)


def cache_profile(entry: ModelEntry) -> CacheProfile | str | None:
    """The cache transformers builds for ``entry`` (:mod:`workbench.store.kv_cache`), or why it cannot be told.

    ``None`` for GGUF entries (llama.cpp's rule applies, :func:`kv_cache_bytes`).

    Raises:
        EstimateUnavailableError: the skeleton is beyond the bounds of
            :func:`workbench.store.skeleton.skeleton_budget`.
    """
    return _profile_of(entry, _built(entry))


def _built(entry: ModelEntry):  # -> ModelLayout | str | None
    """The layout transformers builds for ``entry`` (:func:`workbench.store.layout.layout_or_reason`), or
    why not; ``None`` for GGUF. One ask gives an estimate both its weights' layout and its cache."""
    if entry.format == "gguf":
        return None
    if entry.format != "safetensors" or not entry.path.is_dir():
        return f"{entry.name} is not a model folder transformers can build"
    from .coverage import shapes_if_checked
    from .layout import layout_or_reason

    return layout_or_reason(entry.path, shapes=lambda: shapes_if_checked(entry))  # one build for coverage too


def _profile_of(entry: ModelEntry, found: Any) -> CacheProfile | str | None:
    """:func:`cache_profile` from :func:`_built`'s answer."""
    if found is None:
        return None
    if isinstance(found, str):
        return f"estimate unavailable: {found}"
    if found.cache is None:
        return f"estimate unavailable: {found.cache_problem}"
    return found.cache


def kv_cache_bytes(entry: ModelEntry, tokens: int = 1000, dtype: str = "bfloat16", batch: int = 1) -> int | None:
    """Bytes of the cache that grows with the context, after ``tokens`` tokens of ``batch`` sequences.

    Measured from the cache transformers builds (:func:`cache_profile`): sliding windows,
    compressed latents and layers without keys and values included. GGUF: llama.cpp's keys and
    values (:func:`workbench.store.kv_cache.gguf_kv_bytes_per_token`). ``None`` when unavailable
    (:func:`cache_problem` says why).

    Raises:
        EstimateUnavailableError: the skeleton is beyond the bounds of the skeleton budget.
    """
    return _kv_bytes(entry, cache_profile(entry), tokens, dtype, batch)


def cache_state_bytes(entry: ModelEntry, dtype: str = "bfloat16", batch: int = 1) -> int | None:
    """Bytes of the cache fixed per sequence (conv and recurrent states) for ``batch`` sequences; see
    :func:`kv_cache_bytes`."""
    return _state_bytes(entry, cache_profile(entry), dtype, batch)


def cache_problem(entry: ModelEntry) -> str | None:
    """``"estimate unavailable: REASON"`` when the cache of ``entry`` cannot be measured, else ``None``."""
    return _problem(entry, cache_profile(entry))


# The three above, from one cache_profile answer (an estimate asks it once for all three).
Profile = CacheProfile | str | None


def _kv_bytes(entry: ModelEntry, profile: Profile, tokens: int, dtype: str, batch: int) -> int | None:
    width = DTYPE_BYTES.get(dtype, 2)
    if profile is None:
        rate = gguf_kv_bytes_per_token(entry.num_layers, entry.num_kv_heads, entry.head_dim, width)
        return None if rate is None else rate * tokens * batch
    if isinstance(profile, str):
        return None
    return profile.kv_bytes(tokens, width, batch)


def _state_bytes(entry: ModelEntry, profile: Profile, dtype: str, batch: int) -> int | None:
    if profile is None:
        return 0 if entry.num_layers else None
    if isinstance(profile, str):
        return None
    return profile.state_bytes(DTYPE_BYTES.get(dtype, 2), batch)


def _problem(entry: ModelEntry, profile: Profile) -> str | None:
    if profile is None and not (entry.num_layers and entry.num_kv_heads and entry.head_dim):
        return f"estimate unavailable: the GGUF header of {entry.name} lacks its layer and head counts"
    return profile if isinstance(profile, str) else None


def _cache_fields(entry: ModelEntry, dtype: str, profile: Profile) -> tuple[int | None, int | None, str | None]:
    return _kv_bytes(entry, profile, 1000, dtype, 1), _state_bytes(entry, profile, dtype, 1), _problem(entry, profile)


def estimate(
    entry: ModelEntry,
    dtype: str = "bfloat16",
    quant: str = "none",
    *,
    double_quant: bool = False,
    device_type: DeviceKind = "cuda",
) -> MemoryEstimate:
    """Estimate the memory ``entry`` needs loaded at ``dtype`` with bitsandbytes ``quant``.

    Args:
        entry: a store entry with header statistics (``status == "ok"``).
        dtype: the compute dtype, transformers' name (``"bfloat16"``) or ``"auto"``.
        quant: ``"none"``, ``"int8"``, ``"nf4"`` or ``"fp4"``.
        double_quant: bitsandbytes' ``bnb_4bit_use_double_quant``.
        device_type: ``"cuda"`` or ``"cpu"``; the load peak differs (see below).

    Weights are counted as the installed transformers materialises them
    (:mod:`workbench.store.layout`: fused MoE experts and routers stay in ``dtype``,
    bitsandbytes quantizes ``nn.Linear`` weights only), from headers when that model
    cannot be built. A pre-quantized checkpoint (``entry.quant_method``) is estimated
    as saved: ``quant`` must be ``"none"`` (or its own quantization's name).

    Raises:
        ConfigError: an unknown dtype or quantization, an entry without headers, or a second
            quantization of a pre-quantized checkpoint.

    Example:
        >>> est = estimate(entry, "bfloat16", "nf4")  # doctest: +SKIP
        >>> est.total_str  # doctest: +SKIP
        '110.5 MiB'

    Raises:
        ConfigError: an unknown ``dtype`` or ``quant``.
        BrokenModelError: the entry's weight headers could not be read (a broken entry).
        EstimateUnavailableError: the model transformers would build is beyond the bounds
            of :func:`workbench.store.skeleton.skeleton_budget`.
    """
    if entry.quant_method is not None:
        return _prequantized(entry, dtype, quant, device_type)
    if quant not in QUANTS:
        raise ConfigError(f"quantization {quant!r} is not supported", hint=f"use one of {', '.join(QUANTS)}")
    if entry.params is None:
        raise BrokenModelError(f"{entry.name} has no readable weight headers, so its memory cannot be estimated",
                               hint=entry.problem or "check the entry with `workbench store inspect`",
                               name=entry.name, path=entry.path)
    dtype = load_dtype(entry, dtype)
    width = DTYPE_BYTES[dtype]
    w = entry.weights
    found = _built(entry)
    layout = None if found is None or isinstance(found, str) else found
    if layout is not None:
        # What the installed transformers builds (workbench/store/layout.py): fused experts,
        # routers and buffers included, quantized only where bitsandbytes replaces nn.Linear.
        linear, rows, count = layout.linear_params, layout.linear_rows, layout.linear_count
        full = layout.unquantized_bytes(width, dtype)
        other = layout.other_bytes(width, dtype)
    else:  # from headers alone (GGUF, or no torch): 2-D weights but experts' and routers' are linear
        linear, rows, count = w.linear_params, w.linear_rows, w.linear_count
        full = entry.params * width
        other = (entry.params - linear) * width
    if quant == "none":
        weights, state = full, 0
    else:
        if quant == "int8":
            weights = linear + other
            state = rows * 4
        else:
            weights = (linear + 1) // 2 + other
            blocks = -(-linear // _BLOCK)
            state = blocks + -(-blocks // 256) * 4 + 16 * count if double_quant else blocks * 4
    peak = load_peak(entry, dtype, quant, weights + state, device_type)
    return MemoryEstimate(dtype, quant, double_quant if quant in FOUR_BIT else False,
                          int(weights), int(state), int(peak),
                          *_cache_fields(entry, dtype, _profile_of(entry, found)))


def _prequantized(entry: ModelEntry, dtype: str, quant: str, device_type: DeviceKind) -> MemoryEstimate:
    """A pre-quantized checkpoint loads only as saved: its footprint at the config's dtype.

    bitsandbytes checkpoints load into the same modules a quantized load builds, so the
    layout rule applies (with the checkpoint's ``llm_int8_skip_modules``); the side tensors
    (absmax, SCB...) are the quantization state. Other formats keep their packed weights
    and scales as buffers the footprint counts: the bytes as stored, float tensors at the dtype.
    """
    from .prequant import BNB_QUANTS, bnb_skip_modules, double_quant, mxfp4_stays_packed

    saved = entry.quantization or entry.quant_method or "unknown"
    if quant not in ("none", saved):
        raise ConfigError(f"{entry.name} is already quantized ({saved}) and loads only as saved, not as {quant!r}",
                          hint="load it with quant='none' (it keeps its own quantization)")
    if entry.params is None:
        raise ConfigError(f"{entry.name} has no readable weight headers, so its memory cannot be estimated",
                          hint=entry.problem or "check the entry with `workbench store inspect`")
    dtype = load_dtype(entry, dtype)
    width = DTYPE_BYTES[dtype]
    w = entry.weights
    dq = False
    state = w.quant_state_bytes
    layout = None
    if entry.quant_method == "bitsandbytes" and saved in BNB_QUANTS and entry.path.is_dir():
        from .layout import model_layout

        dq = saved != "int8" and double_quant(entry.path)
        layout = model_layout(entry.path, skip_modules=bnb_skip_modules(entry.path))
    if entry.quant_method == "mxfp4" and entry.path.is_dir() and not mxfp4_stays_packed(device_type):
        # transformers dequantizes MXFP4 without its kernels, to the load's dtype (load_dtype):
        # the load holds the full-precision model its skeleton is (one ask for its weights and cache).
        found = _built(entry)
        if found is not None and not isinstance(found, str):
            weights = found.unquantized_bytes(width, dtype)
            peak = load_peak(entry, dtype, saved, weights, device_type)
            return MemoryEstimate(dtype, saved, False, int(weights), 0, int(peak),
                                  *_cache_fields(entry, dtype, _profile_of(entry, found)))
    if layout is not None:
        linear = layout.linear_params
        packed = linear if saved == "int8" else (linear + 1) // 2
        weights = packed + layout.other_bytes(width, dtype)
    elif entry.quant_method == "bitsandbytes":
        weights = w.packed_bytes + (entry.params - w.linear_params) * width
    else:
        weights = w.packed_bytes + state + (entry.params - w.linear_params) * width
        state = 0
    peak = load_peak(entry, dtype, saved, weights + state, device_type)
    return MemoryEstimate(dtype, saved, dq, int(weights), int(state), int(peak),
                          *_cache_fields(entry, dtype, cache_profile(entry)))


def precisions(entry: ModelEntry) -> tuple[tuple[str, str, str], ...]:
    """``(label, dtype, quant)`` rows an entry can load at: the four of the table, or as saved."""
    if entry.quant_method is not None:
        return ((entry.quantization or entry.quant_method, "auto", "none"),)
    if entry.format == "gguf":  # as stored, on llama.cpp (workbench/store/gguf_estimate.py), then de-quantized
        return (((entry.quantization or entry.dtype or "gguf") + " (llama.cpp)", "auto", "none"),) + TABLE_PRECISIONS
    return TABLE_PRECISIONS


#: Tensors read between two heap trims while the runtime quantizes on the CPU
#: (the loader trims at this pace; the CPU load peak counts what lingers between trims).
TRIM_EVERY = 8
# glibc serves allocations above its largest mmap threshold (32 MiB) with mmap, and
# gives them back at once on free: only smaller tensors linger between trims.
_LINGER_MAX = 32 * 2**20
# A CPU load also holds the tokenizer, the config and the model's Python objects, and
# transformers' loader threads keep small scratch in their heaps: 30-40 MB seen for
# SmolLM2-135M, whatever the precision.
_CPU_LOAD_OVERHEAD = 64 * 2**20


def load_peak(entry: ModelEntry, dtype: str, quant: str, loaded_bytes: int, device_type: DeviceKind = "cuda") -> int:
    """The most memory a load holds at once on ``device_type``, for ``loaded_bytes`` of final weights.

    Measured, not guessed (tests/runtime/test_memory.py checks peak RSS against this):

    * GPUs: transformers quantizes tensor by tensor as it reads, so the peak is the
      loaded weights (one full-precision tensor at a time on top is small).
    * CPU, quantized: the checkpoint is memory-mapped and every page of it is read
      (resident in RSS until the file closes) while bitsandbytes quantizes each
      tensor through a float32 copy; the full-precision pages, the quantized
      weights, and the scratch of the tensors freed since the last heap trim are
      held together. Seen for SmolLM2-135M nf4: 314-352 MiB peak against a 110 MB footprint.
    * CPU, converting dtype (a bfloat16 checkpoint loaded as float32): the mapped
      checkpoint plus the converted copy.
    * CPU, same dtype: the weights stay views of the mapped file.

    Every CPU load also holds the tokenizer and loader scratch (``_CPU_LOAD_OVERHEAD``).

    GGUF checkpoints are dequantized to a float32 state dict before the model is
    built, so they count four bytes a parameter for the file.
    """
    w = entry.weights
    if entry.format == "gguf":
        disk = (entry.params or 0) * 4
    else:
        disk = sum(w.bytes_by_dtype.values()) or (entry.params or 0) * DTYPE_BYTES.get(dtype, 2)
    if device_type != "cpu":
        return loaded_bytes
    avg_linear = w.linear_params // max(1, w.linear_count)
    width = DTYPE_BYTES.get(dtype, 2)
    if quant != "none":
        scratch = min(avg_linear * (width + 4), 2 * _LINGER_MAX)
        return disk + loaded_bytes + TRIM_EVERY * scratch + _CPU_LOAD_OVERHEAD
    converting = entry.format == "gguf" or (entry.dtype is not None and entry.dtype != dtype)
    if converting:
        # transformers dequantizes GGUF tensors to float32 before casting them.
        source = 4 if entry.format == "gguf" else DTYPE_BYTES.get(entry.dtype or dtype, 4)
        scratch = min(avg_linear * (source + width), 2 * _LINGER_MAX)
        return disk + loaded_bytes + TRIM_EVERY * scratch + _CPU_LOAD_OVERHEAD
    return loaded_bytes + _CPU_LOAD_OVERHEAD


def llamacpp_memory_estimate(entry: ModelEntry) -> MemoryEstimate:
    """The store's :class:`MemoryEstimate` row for a GGUF entry on llama.cpp.

    Weights at their stored types; no bitsandbytes state; the load peak is the weights
    (llama.cpp memory-maps the file and reads it once); KV per 1,000 tokens by llama.cpp's rule.
    """
    from .gguf_estimate import entry_shape, llamacpp_kv_cache_bytes

    shape, weights = entry_shape(entry)
    label = entry.quantization or entry.dtype or "gguf"
    return MemoryEstimate(label, "none", False, int(weights), 0, int(weights),
                          llamacpp_kv_cache_bytes(shape, 1000))


def estimate_table(entry: ModelEntry) -> dict[str, MemoryEstimate]:
    """Estimates at float32, bfloat16, int8 and nf4 (``store inspect``'s ``estimate``).

    A pre-quantized checkpoint has one row, its own quantization (``{"nf4": ...}``): it
    loads only as saved.
    """
    from .gguf_estimate import runs_on_llamacpp

    return {label: llamacpp_memory_estimate(entry) if runs_on_llamacpp(entry, dtype, quant)
            else estimate(entry, dtype, quant) for label, dtype, quant in precisions(entry)}
