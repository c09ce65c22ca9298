"""vLLM's memory flags from the workbench's estimate and the GPUs' free memory.

vLLM takes ``--gpu-memory-utilization`` of each GPU's *total* memory for itself
(weights, activations, CUDA graphs, and all the rest as KV cache), and refuses to
start when that is more than the GPU has free. Its default, 0.9, takes a shared
GPU from everyone else. The workbench asks instead for what the model needs:

* weights: the store's estimate at the served precision, split evenly over the
  tensor- and pipeline-parallel GPUs (vLLM shards them evenly);
* :data:`ENGINE_OVERHEAD_BYTES` per GPU for the CUDA context, the activation peak
  vLLM profiles, and CUDA graphs;
* the cache for :data:`KV_SEQUENCES` sequences of ``max_model_len`` tokens (what grows
  with the context, :func:`workbench.store.estimate.kv_cache_bytes`, plus the fixed
  conv/recurrent state once per sequence, ``MemoryEstimate.cache_state_bytes``), or
  whatever is left of the free memory, if less (one sequence's state at least).

``--max-model-len`` is the model's context length, or the longest whose KV cache
fits beside the weights, whichever is smaller; vLLM needs room for at least one
sequence of that length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import InsufficientMemoryError, LoadSpecError
from ..store import MemoryEstimate, ModelEntry, format_bytes
from ..store.estimate import kv_cache_bytes
from .engines import VllmArgs
from .vllm_rules import check_max_model_len, check_parallel, check_vllm_args

GiB = 2**30
MiB = 2**20
#: Per GPU: CUDA context and cuBLAS workspace (~0.5 GiB), vLLM's profiled activation peak
#: and CUDA graphs for a small model (~0.5 GiB).
ENGINE_OVERHEAD_BYTES = 1 * GiB
#: Per GPU, left free for NVML's rounding and other processes' small allocations.
SAFETY_BYTES = 256 * MiB
#: Full-length sequences the KV cache is sized for (many more shorter ones fit).
KV_SEQUENCES = 8
#: vLLM's KV cache block, in tokens: max_model_len is rounded down to it.
BLOCK_TOKENS = 16
#: Shortest context worth serving.
MIN_MODEL_LEN = 256
#: Context assumed when the checkpoint does not say.
DEFAULT_CONTEXT = 4096


@dataclass(frozen=True)
class GpuMemory:
    """One chosen GPU's memory now (NVML): ``device`` (``"cuda:0"``), total and free bytes."""

    device: str
    total_bytes: int
    free_bytes: int


def _floor2(x: float) -> float:
    return math.floor(x * 100) / 100


def _ceil2(x: float) -> float:
    return math.ceil(x * 100 - 1e-9) / 100


def vllm_quantization(quant: str) -> str | None:
    """``"nf4"`` -> ``"bitsandbytes"`` (vLLM's in-flight 4-bit); ``"none"`` -> ``None``.

    Raises:
        LoadSpecError: int8 or fp4, which vLLM's bitsandbytes loader does not quantize to.
    """
    if quant == "none":
        return None
    if quant == "nf4":
        return "bitsandbytes"
    raise LoadSpecError(f"vLLM quantizes with bitsandbytes to 4-bit nf4 only, not {quant!r}",
                        hint="use --quant nf4 with vLLM, or --engine transformers for int8", quant=quant)


def derive_vllm_args(entry: ModelEntry, est: MemoryEstimate, gpus: Sequence[GpuMemory], *,
                     max_model_len: int | None = None, nodes: int = 1, quant: str = "none",
                     dtype: str = "auto") -> VllmArgs:
    """Tensor parallel size, memory utilisation and context length for ``vllm serve``.

    Args:
        entry: the store entry (its layers, KV heads and head size size the KV cache).
        est: the store's estimate at the served precision.
        gpus: the GPUs of this node (each node of a multi-node run is assumed alike).
        max_model_len: the context asked for; ``None`` picks the longest that fits.
        nodes: pipeline-parallel stages, one per node (Ray backend when more than 1).

    Raises:
        InsufficientMemoryError: the weights, or the KV cache of the context asked
            for, do not fit in the free memory of the smallest GPU.
        LoadSpecError: no GPU, a KV cache size the store cannot tell with no
            ``max_model_len`` given, or a flag vLLM's own rules refuse (:mod:`.vllm_rules`).
    """
    if not gpus:
        raise LoadSpecError("vLLM needs at least one GPU", hint="choose --device cuda:0[,cuda:1...]")
    # vLLM's own start-up rules first (workbench/serve/vllm_rules.py): a refusal costs nothing here.
    check_parallel(entry, [g.device for g in gpus], max(1, nodes))
    check_max_model_len(entry, max_model_len)
    tp = len(gpus)
    shards = tp * max(1, nodes)
    weights = -(-est.total_bytes // shards)
    smallest = min(gpus, key=lambda g: g.free_bytes)
    total = min(g.total_bytes for g in gpus)
    ceiling = min(smallest.free_bytes, total) - SAFETY_BYTES
    kv_token = kv_cache_bytes(entry, 1, est.dtype)
    kv_token = -(-kv_token // shards) if kv_token is not None else None
    # Conv and recurrent states: fixed per sequence, once for each sequence served at once.
    state = -(-(est.cache_state_bytes or 0) // shards)
    context = entry.context_length or DEFAULT_CONTEXT
    room = ceiling - weights - ENGINE_OVERHEAD_BYTES - state
    where = ", ".join(f"{g.device} {format_bytes(g.free_bytes)} free" for g in gpus)

    def refuse(what: str, hint: str) -> InsufficientMemoryError:
        return InsufficientMemoryError(
            f"{entry.name} in {est.label} under vLLM needs {what} on each of {tp} GPU(s); {where}", hint=hint,
            needed_bytes=weights + ENGINE_OVERHEAD_BYTES + SAFETY_BYTES, available_bytes=smallest.free_bytes,
            devices=[g.device for g in gpus], precision=est.label)

    if room < (kv_token or 0) * MIN_MODEL_LEN or room <= 0:
        raise refuse(f"{format_bytes(weights)} of weights and {format_bytes(ENGINE_OVERHEAD_BYTES)} of engine "
                     f"overhead, plus KV cache", "add GPUs (tensor parallel), use --quant nf4, or free memory")
    if kv_token == 0:  # nothing grows with the context (state-space models)
        length = max_model_len or context
        kv_budget = min(room, state * (KV_SEQUENCES - 1))
    elif kv_token is None:
        if max_model_len is None:
            raise LoadSpecError(f"the KV cache of {entry.name} cannot be estimated (no layer/head counts)",
                                hint="pass --max-model-len", name=entry.name)
        length = max_model_len
        kv_budget = room
    else:
        fits = room // kv_token
        if max_model_len is not None:
            if max_model_len * kv_token > room:
                raise refuse(f"{format_bytes(max_model_len * kv_token)} of KV cache for {max_model_len:,} tokens "
                             f"beside {format_bytes(weights)} of weights",
                             f"use --max-model-len {max(MIN_MODEL_LEN, (fits // BLOCK_TOKENS) * BLOCK_TOKENS)} "
                             "or less, or add GPUs")
            length = max_model_len
        else:
            length = min(context, fits)
            length = length if length == context else (length // BLOCK_TOKENS) * BLOCK_TOKENS
        kv_budget = min(room, kv_token * length * KV_SEQUENCES + state * (KV_SEQUENCES - 1))
    need = weights + ENGINE_OVERHEAD_BYTES + state + kv_budget
    util = min(_floor2(ceiling / total), _ceil2(need / total))
    if kv_token and max_model_len is None:
        # Rounding the fraction down may have cut the KV cache below one full sequence.
        left = int(util * total) - weights - ENGINE_OVERHEAD_BYTES - state
        if left < kv_token * length:
            length = (max(0, left) // kv_token // BLOCK_TOKENS) * BLOCK_TOKENS
            if length < MIN_MODEL_LEN:
                raise refuse("more memory than is free", "free memory on the GPUs, or add GPUs")
    args = VllmArgs(tensor_parallel_size=tp, gpu_memory_utilization=util, max_model_len=int(length),
                    quantization=vllm_quantization(quant), dtype=dtype,
                    pipeline_parallel_size=max(1, nodes), distributed_executor_backend="ray" if nodes > 1 else None)
    check_vllm_args(entry, args)
    return args
