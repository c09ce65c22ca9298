"""vLLM's own start-up rules for the flags the workbench derives, applied before anything starts.

vLLM checks its configuration when it starts, after CUDA and NCCL are up (on a real
machine, a minute or more) and after the GPUs were leased: a refusal the model's
config already implied. These are the same rules, read from vLLM's source (cited per
rule), checked when the command is built, each refusal naming the rule and what would work:

* ``--tensor-parallel-size``: ``vllm/config/model.py`` ``ModelConfig.verify_with_parallel_config``:
  "Total number of attention heads ({heads}) must be divisible by tensor parallel size ({tp})".
* ``--pipeline-parallel-size``: ``vllm/distributed/utils.py`` ``get_pp_indices`` gives each stage
  ``num_hidden_layers // pp_size`` layers (the remainder spread over the others), so more
  stages than layers leave a stage without a layer.
* ``--gpu-memory-utilization``: ``vllm/config/cache.py`` ``CacheConfig.gpu_memory_utilization``
  (``Field(default=0.9, gt=0, le=1)``): a fraction in (0, 1].
* ``--max-model-len``: ``vllm/config/model.py`` ``_get_and_verify_max_len``: "User-specified
  max_model_len ... is greater than the derived max_model_len" (from ``max_position_embeddings``
  and its kin in ``config.json``; the store reads the same field into ``context_length``).
* ``--quantization``: ``vllm/config/model.py`` ``ModelConfig._verify_quantization``: a method in
  ``vllm/model_executor/layers/quantization/__init__.py`` ``QUANTIZATION_METHODS``, and, for a
  pre-quantized checkpoint, the one its ``quantization_config.quant_method`` names.

Our own code because vLLM is not importable here (it pins its own torch in its own
environment) and its checks run only inside a starting engine. The fake ``vllm``
command of the tests enforces the same rules with the same messages.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import LoadSpecError
from ..store import ModelEntry
from .engines import VllmArgs

#: ``vllm/model_executor/layers/quantization/__init__.py`` ``QuantizationMethods``.
QUANTIZATION_METHODS: tuple[str, ...] = (
    "aqlm", "awq", "deepspeedfp", "tpu_int8", "fp8", "ptpc_fp8", "fbgemm_fp8", "deepgemm_fp8", "modelopt",
    "modelopt_fp4", "marlin", "bitblas", "gguf", "gptq_marlin_24", "gptq_marlin", "gptq_bitblas", "awq_marlin",
    "gptq", "compressed-tensors", "bitsandbytes", "qqq", "hqq", "experts_int8", "neuron_quant", "ipex", "quark",
    "moe_wna16", "torchao", "auto-round")


def allowed_tensor_parallel_sizes(entry: ModelEntry, gpus: int) -> list[int]:
    """The tensor-parallel sizes up to ``gpus`` that divide the model's attention heads (vLLM's rule)."""
    heads = entry.num_attention_heads
    return [t for t in range(1, max(1, gpus) + 1) if not heads or heads % t == 0]


def check_parallel(entry: ModelEntry, devices: Sequence[str], pipeline_parallel_size: int = 1) -> None:
    """vLLM's rules for ``--tensor-parallel-size len(devices)`` and ``--pipeline-parallel-size``.

    Raises:
        LoadSpecError: naming the rule, its source, and the sizes (GPU choices) that would work.
    """
    tp = len(devices)
    heads = entry.num_attention_heads
    if heads and heads % tp:
        sizes = allowed_tensor_parallel_sizes(entry, tp)
        best = max(sizes)
        raise LoadSpecError(
            f"vLLM would refuse {entry.name} with --tensor-parallel-size {tp}: its {heads} attention heads are "
            f"not divisible by {tp} (vLLM's ModelConfig.verify_with_parallel_config, vllm/config/model.py)",
            hint=f"the tensor-parallel sizes it allows on these {tp} GPUs are {', '.join(map(str, sizes))}: serve it "
                 f"on {best} of them (--device {','.join(devices[:best])}), or use --engine transformers",
            name=entry.name, tensor_parallel_size=tp, allowed=sizes)
    layers = entry.num_layers
    if layers and pipeline_parallel_size > layers:
        raise LoadSpecError(
            f"vLLM would give some of the {pipeline_parallel_size} pipeline stages of {entry.name} no layer: it has "
            f"{layers} (vLLM's get_pp_indices, vllm/distributed/utils.py, gives each stage "
            "num_hidden_layers // pipeline_parallel_size)",
            hint=f"use --nodes {layers} or fewer", name=entry.name, pipeline_parallel_size=pipeline_parallel_size)


def check_max_model_len(entry: ModelEntry, max_model_len: int | None) -> None:
    """vLLM's rule for a ``--max-model-len`` the user asked for.

    Raises:
        LoadSpecError: longer than the model's derived maximum.
    """
    if max_model_len is None:
        return
    if max_model_len < 1:
        raise LoadSpecError(f"--max-model-len must be a positive number of tokens, not {max_model_len}",
                            hint="e.g. 4096", name=entry.name)
    derived = entry.context_length
    if derived and max_model_len > derived:
        raise LoadSpecError(
            f"vLLM would refuse --max-model-len {max_model_len} for {entry.name}: it is greater than the derived "
            f"max_model_len ({derived}, max_position_embeddings in its config.json; vLLM's "
            "_get_and_verify_max_len, vllm/config/model.py)",
            hint=f"use --max-model-len {derived} or less", name=entry.name, max_model_len=max_model_len)


def check_vllm_args(entry: ModelEntry, args: VllmArgs) -> None:
    """Every rule above, on the flags as derived (the last check before the command line is built).

    Raises:
        LoadSpecError: the first rule broken.
    """
    check_parallel(entry, [f"cuda:{i}" for i in range(args.tensor_parallel_size)], args.pipeline_parallel_size)
    check_max_model_len(entry, args.max_model_len)
    if not 0 < args.gpu_memory_utilization <= 1:
        raise LoadSpecError(
            f"--gpu-memory-utilization {args.gpu_memory_utilization} for {entry.name} is outside (0, 1], which "
            "vLLM refuses (CacheConfig.gpu_memory_utilization, vllm/config/cache.py)",
            hint="free memory on the GPUs, or choose other GPUs", name=entry.name)
    q = args.quantization
    if q is not None and q not in QUANTIZATION_METHODS:
        raise LoadSpecError(f"vLLM knows no quantization method {q!r} (QUANTIZATION_METHODS, "
                            "vllm/model_executor/layers/quantization/__init__.py)",
                            hint=f"use one of {', '.join(QUANTIZATION_METHODS)}", name=entry.name)
    pre = entry.quant_method
    if q is not None and pre and pre != q:
        raise LoadSpecError(
            f"vLLM would refuse --quantization {q} for {entry.name}: its config.json says it is quantized with "
            f"{pre} (ModelConfig._verify_quantization, vllm/config/model.py)",
            hint="serve it with --quant none: vLLM reads the checkpoint's own quantization", name=entry.name)
