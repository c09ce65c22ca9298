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
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from ..errors import ConfigError
from .entry import ModelEntry, format_bytes

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
QUANTS = ("none", "int8", "nf4", "fp4")
# The precisions `workbench store inspect` reports (ARCHITECTURE.md section 3).
TABLE_PRECISIONS: tuple[tuple[str, str, str], ...] = (
    ("float32", "float32", "none"),
    ("bfloat16", "bfloat16", "none"),
    ("int8", "bfloat16", "int8"),
    ("nf4", "bfloat16", "nf4"),
)
_BLOCK = 64  # bitsandbytes' default 4-bit block size


def resolve_dtype(entry: ModelEntry, dtype: str) -> str:
    """``"auto"`` becomes the checkpoint's floating dtype (bfloat16 for GGUF or integer checkpoints)."""
    if dtype == "auto":
        return entry.dtype if entry.dtype in DTYPE_BYTES else "bfloat16"
    if dtype not in DTYPE_BYTES:
        raise ConfigError(f"dtype {dtype!r} is not supported", hint=f"use one of {', '.join(DTYPE_BYTES)} or 'auto'")
    return dtype


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a model needs on its devices at one precision.

    Attributes:
        weights_bytes: parameter bytes as ``get_memory_footprint()`` counts them.
        quant_state_bytes: bitsandbytes scales the footprint leaves out.
        load_peak_bytes: the most memory the load holds at once (full-precision
            copies made before quantization on the CPU, for example).
        kv_cache_bytes_per_1k_tokens: KV cache per 1,000 tokens of context, batch 1.
    """

    dtype: str
    quant: str
    double_quant: bool
    weights_bytes: int
    quant_state_bytes: int
    load_peak_bytes: int
    kv_cache_bytes_per_1k_tokens: int | None

    @property
    def total_bytes(self) -> int:
        """What the loaded weights hold on the device(s): weights plus quantization state."""
        return self.weights_bytes + self.quant_state_bytes

    @property
    def label(self) -> str:
        return self.dtype if self.quant == "none" else self.quant + ("+dq" if self.double_quant else "")

    @property
    def total_str(self) -> str:
        return format_bytes(self.total_bytes)

    def to_dict(self) -> dict[str, object]:
        return {
            "dtype": self.dtype, "quant": self.quant, "double_quant": self.double_quant,
            "weights_bytes": self.weights_bytes, "quant_state_bytes": self.quant_state_bytes,
            "total_bytes": self.total_bytes, "load_peak_bytes": self.load_peak_bytes,
            "kv_cache_bytes_per_1k_tokens": self.kv_cache_bytes_per_1k_tokens,
        }


def kv_cache_bytes(entry: ModelEntry, tokens: int = 1000, dtype: str = "bfloat16", batch: int = 1) -> int | None:
    """Keys and values for ``tokens`` of context: 2 x layers x KV heads x head dim x bytes."""
    if not (entry.num_layers and entry.num_kv_heads and entry.head_dim):
        return None
    width = DTYPE_BYTES.get(dtype, 2)
    return 2 * entry.num_layers * entry.num_kv_heads * entry.head_dim * width * tokens * batch


def estimate(
    entry: ModelEntry,
    dtype: str = "bfloat16",
    quant: str = "none",
    *,
    double_quant: bool = False,
    device_type: str = "cuda",
) -> MemoryEstimate:
    """Estimate the memory ``entry`` needs loaded at ``dtype`` with bitsandbytes ``quant``.

    Args:
        entry: a store entry with header statistics (``status == "ok"``).
        dtype: the compute dtype, transformers' name (``"bfloat16"``) or ``"auto"``.
        quant: ``"none"``, ``"int8"``, ``"nf4"`` or ``"fp4"``.
        double_quant: bitsandbytes' ``bnb_4bit_use_double_quant``.
        device_type: ``"cuda"`` or ``"cpu"``; the load peak differs (see below).

    Example:
        >>> est = estimate(entry, "bfloat16", "nf4")  # doctest: +SKIP
        >>> est.total_str  # doctest: +SKIP
        '110.5 MiB'
    """
    if quant not in QUANTS:
        raise ConfigError(f"quantization {quant!r} is not supported", hint=f"use one of {', '.join(QUANTS)}")
    if entry.params is None:
        raise ConfigError(f"{entry.name} has no readable weight headers, so its memory cannot be estimated",
                          hint=entry.problem or "check the entry with `workbench store inspect`")
    dtype = resolve_dtype(entry, dtype)
    width = DTYPE_BYTES[dtype]
    w = entry.weights
    full = entry.params * width
    if quant == "none":
        weights, state = full, 0
    else:
        other = (entry.params - w.linear_params) * width
        if quant == "int8":
            weights = w.linear_params + other
            state = w.linear_rows * 4
        else:
            weights = (w.linear_params + 1) // 2 + other
            blocks = -(-w.linear_params // _BLOCK)
            state = blocks + -(-blocks // 256) * 4 + 16 * w.linear_count if double_quant else blocks * 4
    # Peak during load: on the CPU, transformers materialises the full-precision
    # weights before bitsandbytes quantizes them, so the peak is the unquantized size
    # plus the quantized copy; on GPUs it quantizes tensor by tensor.
    if quant != "none" and device_type == "cpu":
        peak = full + weights + state
    else:
        peak = weights + state
    return MemoryEstimate(dtype, quant, double_quant if quant in ("nf4", "fp4") else False,
                          int(weights), int(state), int(peak), kv_cache_bytes(entry, 1000, dtype))


def estimate_table(entry: ModelEntry) -> dict[str, MemoryEstimate]:
    """Estimates at float32, bfloat16, int8 and nf4 (``store inspect``'s ``estimate``)."""
    return {label: estimate(entry, dtype, quant) for label, dtype, quant in TABLE_PRECISIONS}


class HasFreeMemory(Protocol):
    """Anything with a device name and free bytes (``workbench.devices.Device`` is one)."""

    name: str
    memory_free_bytes: int | None


@dataclass(frozen=True)
class Fit:
    device: str
    precision: str
    needed_bytes: int
    free_bytes: int | None

    @property
    def fits(self) -> bool:
        return self.free_bytes is not None and self.needed_bytes <= self.free_bytes


def fits_on(entry: ModelEntry, devices: Iterable[HasFreeMemory], context_tokens: int = 1000) -> list[Fit]:
    """Which precisions fit on which devices, with ``context_tokens`` of KV cache added.

    Example:
        >>> [f"{f.precision} on {f.device}" for f in fits_on(entry, devices) if f.fits]  # doctest: +SKIP
        ['bfloat16 on cuda:0', 'int8 on cuda:0', 'nf4 on cuda:0', 'nf4 on cpu']
    """
    table = estimate_table(entry)
    out = []
    for dev in devices:
        dev_type = "cpu" if dev.name == "cpu" else "cuda"
        for label, dtype, quant in TABLE_PRECISIONS:
            est = table[label] if dev_type == "cuda" else estimate(entry, dtype, quant, device_type="cpu")
            kv = kv_cache_bytes(entry, context_tokens, est.dtype) or 0
            need = max(est.total_bytes + kv, est.load_peak_bytes)
            out.append(Fit(dev.name, label, need, dev.memory_free_bytes))
    return out
