"""What the store knows about one model: a frozen record of raw values.

Display strings live in ``*_str`` properties (and in the UI), never in the fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .._format import format_bytes, format_count
from .._records import Record

Format = Literal["safetensors", "gguf", "pickle"]
# "unsupported": readable and safe, but not a model the runtime runs (workbench/store/support.py).
Status = Literal["ok", "broken", "unsafe", "unsupported"]


@dataclass(frozen=True)
class WeightStats:
    """Parameter counts by the role bitsandbytes gives each tensor, summed from headers.

    ``linear_*`` are the 2-D weights of linear layers, which bitsandbytes quantizes;
    embeddings, the output head, norms and biases stay in the compute dtype.
    ``tied_params`` counts output-head weights that transformers ties to the input
    embeddings, so they are stored on disk but not loaded twice.
    """

    params: int = 0
    linear_params: int = 0
    linear_rows: int = 0
    linear_count: int = 0
    tied_params: int = 0
    expert_params: int = 0
    # Pre-quantized checkpoints: bytes of the packed weights, and of the side tensors unpacking them.
    packed_bytes: int = 0
    quant_state_bytes: int = 0
    bytes_by_dtype: dict[str, int] = field(default_factory=dict)

    @property
    def other_params(self) -> int:
        return self.params - self.linear_params


@dataclass(frozen=True)
class ModelEntry(Record):
    """One model in a store root: what its headers and config say, and whether it can be used."""

    name: str
    path: Path
    root: Path
    writable: bool
    format: Format
    status: Status = "ok"
    problem: str | None = None
    model_type: str | None = None
    architectures: tuple[str, ...] = ()
    params: int | None = None
    # torch dtype name ("bfloat16") of most weight bytes; None when they are not a torch dtype
    # (a quantized GGUF: its ggml type, "Q4_1", is the quantization).
    dtype: str | None = None
    size_bytes: int = 0
    context_length: int | None = None
    num_layers: int | None = None
    hidden_size: int | None = None
    num_attention_heads: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None
    vocab_size: int | None = None
    quantization: str | None = None
    # Mixture of experts (workbench/store/moe.py): routed experts, how many run per token, shared experts,
    # and the parameters one token goes through (shared weights plus experts_per_token routed experts).
    num_experts: int | None = None
    experts_per_token: int | None = None
    shared_experts: int = 0
    active_params: int | None = None
    # Pre-quantized checkpoints (workbench/store/prequant.py): the config's quant_method, and the
    # optional package loading it needs when that is not installed.
    quant_method: str | None = None
    missing_package: str | None = None
    # The transformers auto class the runtime loads it with (workbench/store/support.py):
    # "AutoModelForCausalLM" or "AutoModelForImageTextToText"; None for GGUF, remote code and unsupported.
    auto_class: str | None = None
    # Tokens one image costs in a prompt, where the config or processor says (support.image_tokens).
    image_tokens: int | None = None
    has_chat_template: bool = False
    chat_template_source: str | None = None  # file it comes from (store.tokenizer_files.find_chat_template)
    has_tokenizer: bool = False
    license: str | None = None
    weight_files: tuple[str, ...] = ()
    gguf_file: str | None = None
    shadowed: bool = False
    shadowed_by: Path | None = None  # the entry of the same name that wins (an earlier root)
    weights: WeightStats = field(default_factory=WeightStats)

    @property
    def folder(self) -> Path:
        """The model's folder: ``path`` itself, or the folder of a single-file (GGUF) entry."""
        return self.path if self.path.is_dir() else self.path.parent

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def size_str(self) -> str:
        return format_bytes(self.size_bytes)

    @property
    def params_str(self) -> str:
        return format_count(self.params)
