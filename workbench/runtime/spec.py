"""What to load and how: :class:`LoadSpec`, and load progress (:class:`LoadProgress`).

A spec is checked before any work (:meth:`LoadSpec.validate`), so a typo in a
device name or an impossible combination (double quantization with int8) fails
at once with what to change, not half-way through a load.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from .._records import Record
from ..errors import LoadSpecError
from ..precision import (
    COMPUTE_DTYPES,
    DTYPES,
    FOUR_BIT,
    QUANTS,
    ComputeDtype,
    DeviceKind,
    Dtype,
    Quant,
    is_device,
    normalize_device,
    precision_label,
)
from ..precision import device_type as _device_type
from ..store import ModelEntry

#: The in-kernel engines a load may ask for.
ENGINES = ("auto", "llamacpp", "transformers")
#: The context a load or an engine allocates when the user chooses none (Ollama's habit), at most the model's.
DEFAULT_N_CTX = 4096


def default_n_ctx(entry: ModelEntry, n_ctx: int | None = None) -> int:
    """The context (tokens) a load allocates: the asked-for ``n_ctx``, else :data:`DEFAULT_N_CTX` capped by the model's.

    The one rule for llama.cpp in the kernel (``LoadSpec.n_ctx``), llama.cpp engines and ``transformers
    serve``'s paged cache (``max_model_len``): :mod:`workbench.serve.launch` asks it too.
    """
    if n_ctx:
        return int(n_ctx)
    return min(DEFAULT_N_CTX, entry.context_length or DEFAULT_N_CTX)


@dataclass(frozen=True)
class LoadSpec(Record):
    """A load request: which model, on which devices, at which precision.

    Attributes:
        model: a store entry name, or a :class:`~workbench.store.ModelEntry`.
        devices: ``("cpu",)``, ``("cuda:0",)`` or several GPUs ``("cuda:0", "cuda:1")``
            (the model is split across them, as transformers' ``device_map="auto"`` does).
        dtype: ``"auto"`` (the checkpoint's), ``"float32"``, ``"float16"`` or ``"bfloat16"``.
        quant: bitsandbytes quantization: ``"none"``, ``"int8"``, ``"nf4"`` or ``"fp4"``.
        double_quant: quantize the 4-bit scales too (``bnb_4bit_use_double_quant``).
        compute_dtype: the dtype 4-bit layers compute in (default: ``dtype``).
        max_memory: bytes each device may hold, like transformers' ``max_memory``
            (``{"cuda:0": 20 * 2**30}``); devices left out get their free memory.
        allow_pickle: allow pickle checkpoints (loaded with ``weights_only=True``).
        trust_remote_code: allow this model's own Python code to run.
        name: the registry name; default the entry name, suffixed if already taken
            (``"SmolLM2-135M-Instruct@nf4"``).
        engine: ``"auto"`` (llama.cpp for a GGUF entry loaded as stored, transformers otherwise:
            :func:`workbench.store.gguf_estimate.runs_on_llamacpp`), ``"llamacpp"`` or ``"transformers"``.
        n_ctx: llama.cpp's context in tokens (the KV cache it allocates); default the fit check's
            context, at most the model's.
        allow_unknown_cache: load even when the KV cache cannot be measured (transformers cannot
            build the model before loading: remote code, an unknown ``model_type``); the fit check
            then covers the weights only, and the room for the cache is the user's to leave.

    Example:
        >>> LoadSpec("SmolLM2-135M-Instruct", devices=("cpu",), quant="nf4").validate().quant
        'nf4'
    """

    model: str | ModelEntry
    devices: tuple[str, ...] = ("cpu",)
    dtype: Dtype = "auto"
    quant: Quant = "none"
    double_quant: bool = False
    compute_dtype: ComputeDtype | None = None
    max_memory: dict[str, int] | None = field(default=None, hash=False)
    allow_pickle: bool = False
    trust_remote_code: bool = False
    name: str | None = None
    engine: Literal["auto", "llamacpp", "transformers"] = "auto"
    n_ctx: int | None = None
    allow_unknown_cache: bool = False

    def __post_init__(self) -> None:
        # Accept what people type: a list, or one device as a string.
        devices = (self.devices,) if isinstance(self.devices, str) else tuple(self.devices or ())
        object.__setattr__(self, "devices", tuple(normalize_device(d) for d in devices))
        if self.max_memory is not None and isinstance(self.max_memory, Mapping):
            object.__setattr__(self, "max_memory", {normalize_device(k): v for k, v in self.max_memory.items()})

    @property
    def model_name(self) -> str:
        return self.model.name if isinstance(self.model, ModelEntry) else str(self.model)

    @property
    def precision(self) -> str:
        """``"bfloat16"``, ``"int8"``, ``"nf4+dq"``...: what the load panel shows."""
        return precision_label(self.dtype, self.quant, self.double_quant)

    def uses_llamacpp(self, entry: ModelEntry) -> bool:
        """Whether this load of ``entry`` runs on llama.cpp (the one rule: ``runs_on_llamacpp``)."""
        from ..store.gguf_estimate import runs_on_llamacpp

        return runs_on_llamacpp(entry, self.dtype, self.quant, self.engine)

    @property
    def device_type(self) -> DeviceKind:
        """``"cuda"`` if any GPU is chosen (transformers then quantizes on the GPU), else ``"cpu"``."""
        return _device_type(self.devices)

    def with_(self, **changes: Any) -> LoadSpec:
        """A copy with some fields changed (``spec.with_(quant="nf4")``)."""
        return replace(self, **changes)

    def validate(self) -> LoadSpec:
        """Check the spec without touching devices or files; returns ``self``.

        Raises:
            LoadSpecError: naming the field at fault and the values it accepts.
        """
        self._check_model()
        self._check_devices()
        self._check_precision()
        self._check_max_memory()
        self._check_engine()
        if self.name is not None and (not isinstance(self.name, str) or not self.name.strip()
                                      or len(self.name) > 200 or any(c in self.name for c in "\n\r\t")):
            raise LoadSpecError(f"registry name {self.name!r} is not usable",
                                hint="use a short one-line name, or None for the default")
        return self

    def _check_model(self) -> None:
        if isinstance(self.model, str):
            if not self.model.strip():
                raise LoadSpecError("no model given", hint="pass a store entry name such as 'SmolLM2-135M-Instruct'")
        elif not isinstance(self.model, ModelEntry):
            raise LoadSpecError(f"model must be a store entry name or a ModelEntry, not {type(self.model).__name__}",
                                hint="pass the name shown by `workbench store list`")

    def _check_devices(self) -> None:
        if not self.devices:
            raise LoadSpecError("no device chosen", hint="pass devices=('cpu',) or ('cuda:0',)")
        for d in self.devices:
            if not is_device(d):
                raise LoadSpecError(f"device {d!r} is not a device name",
                                    hint="use 'cpu' or 'cuda:N' (e.g. 'cuda:0')", device=d)
        if len(set(self.devices)) != len(self.devices):
            raise LoadSpecError(f"devices {list(self.devices)} name a device twice", hint="list each device once")

    def _check_precision(self) -> None:
        if self.dtype not in DTYPES:
            raise LoadSpecError(f"dtype {self.dtype!r} is not supported", hint=f"use one of {', '.join(DTYPES)}",
                                dtype=self.dtype)
        if self.quant not in QUANTS:
            raise LoadSpecError(f"quantization {self.quant!r} is not supported",
                                hint=f"use one of {', '.join(QUANTS)}", quant=self.quant)
        if self.double_quant and self.quant not in FOUR_BIT:
            raise LoadSpecError(f"double quantization applies to 4-bit weights, not quant={self.quant!r}",
                                hint="use quant='nf4' (or 'fp4') with double_quant=True, or drop double_quant")
        if self.compute_dtype is not None:
            if self.compute_dtype not in COMPUTE_DTYPES:
                raise LoadSpecError(f"compute_dtype {self.compute_dtype!r} is not supported",
                                    hint=f"use one of {', '.join(COMPUTE_DTYPES)} or None")
            if self.quant not in FOUR_BIT:
                raise LoadSpecError(f"compute_dtype applies to 4-bit layers, not quant={self.quant!r}",
                                    hint="use dtype= to choose the precision, or quant='nf4' with compute_dtype")

    def _check_max_memory(self) -> None:
        if self.max_memory is None:
            return
        if not isinstance(self.max_memory, Mapping):
            raise LoadSpecError("max_memory must map device names to bytes",
                                hint="e.g. max_memory={'cuda:0': 20 * 2**30}")
        for d, v in self.max_memory.items():
            if d not in self.devices:
                raise LoadSpecError(f"max_memory names {d!r}, which is not among the devices {list(self.devices)}",
                                    hint="add it to devices or remove it from max_memory", device=d)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise LoadSpecError(f"max_memory[{d!r}] must be a positive number of bytes, not {v!r}",
                                    hint="e.g. 20 * 2**30 for 20 GiB", device=d)

    def _check_engine(self) -> None:
        if self.engine not in ENGINES:
            raise LoadSpecError(f"engine {self.engine!r} is not an engine", hint=f"use one of {', '.join(ENGINES)}")
        if self.n_ctx is not None and (isinstance(self.n_ctx, bool) or not isinstance(self.n_ctx, int)
                                       or self.n_ctx <= 0):
            raise LoadSpecError(f"n_ctx must be a positive number of tokens, not {self.n_ctx!r}",
                                hint="e.g. n_ctx=4096, or None for the default")
        if self.engine == "llamacpp" and (self.quant != "none" or self.dtype != "auto"):
            raise LoadSpecError(f"llama.cpp runs a GGUF at its own quantization, not at dtype={self.dtype!r} "
                                f"quant={self.quant!r}",
                                hint="use dtype='auto' and quant='none', or engine='transformers' to de-quantize it")
        if self.engine == "llamacpp" and isinstance(self.model, ModelEntry) and self.model.format != "gguf":
            raise LoadSpecError(f"{self.model.name} is {self.model.format}; llama.cpp runs GGUF entries",
                                hint="use engine='auto' or 'transformers'")

    def to_dict(self) -> dict[str, Any]:
        """The fields, with the model by name and an empty ``max_memory`` as ``None``."""
        d = super().to_dict()
        d["model"] = self.model_name
        d["max_memory"] = d["max_memory"] or None
        return d


LoadPhase = Literal["check", "tokenizer", "weights", "finalize", "done", "cancelled", "failed"]
"""A load's phases in order; the last three end it."""


@dataclass(frozen=True)
class LoadProgress:
    """One progress report of a load.

    Attributes:
        phase: ``"check"``, ``"tokenizer"``, ``"weights"``, ``"finalize"``, ``"done"``,
            ``"cancelled"`` or ``"failed"``.
        fraction: of the whole load, 0 to 1.
        message: one line for a label (``"weights 120/272"``).
    """

    phase: LoadPhase
    fraction: float
    message: str = ""

    @property
    def percent_str(self) -> str:
        return f"{100 * self.fraction:.0f}%"


ProgressCallback = Callable[[LoadProgress], Any]


@dataclass(frozen=True)
class UnloadReason:
    """Why a model was unloaded, as a generation that finds it gone is told.

    Attributes:
        what: what happened, after "NAME was" (``"unloaded"``, ``"unloaded after 30 min idle"``).
        hint: what to do (``"load it again"``).
    """

    what: str = "unloaded"
    hint: str = "load it again"


class _TqdmProgress:
    """A progress callback drawing a tqdm bar (``tqdm.auto``: a widget in Jupyter, text in a terminal)."""

    def __init__(self, **tqdm_kwargs: Any) -> None:
        self._kwargs = {"total": 100, "unit": "%", "bar_format": "{desc}: {percentage:3.0f}%|{bar}| {postfix}",
                        **tqdm_kwargs}
        self._bar: Any = None

    def __call__(self, p: LoadProgress) -> None:
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(**self._kwargs)
        self._bar.set_description_str(p.phase, refresh=False)
        self._bar.set_postfix_str(p.message[:60], refresh=False)
        self._bar.n = round(100 * max(0.0, min(1.0, p.fraction)))
        self._bar.refresh()
        if p.phase in ("done", "cancelled", "failed"):
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def tqdm_progress(**tqdm_kwargs: Any) -> _TqdmProgress:
    """A load progress callback that draws a tqdm bar; keyword arguments go to ``tqdm``.

    Example:
        >>> registry.load(spec, progress=tqdm_progress(desc="loading"))  # doctest: +SKIP
    """
    return _TqdmProgress(**tqdm_kwargs)


def check_prequantized(entry: ModelEntry, spec: LoadSpec) -> None:
    """Refuse to quantize a checkpoint that is already quantized (it loads only as saved).

    Raises:
        LoadSpecError: ``spec`` asks for ``quant``, ``double_quant`` or ``compute_dtype`` on an
            entry whose config has a ``quantization_config``; it names the saved quantization.
    """
    if entry.quant_method is None:
        return
    asked = [f"{k}={v!r}" for k, v in (("quant", spec.quant), ("double_quant", spec.double_quant),
                                        ("compute_dtype", spec.compute_dtype)) if v not in ("none", False, None)]
    if asked:
        raise LoadSpecError(
            f"{entry.name} is already quantized ({entry.quantization}, {entry.quant_method}) and cannot be "
            f"quantized again ({', '.join(asked)})",
            hint="load it with quant='none': it keeps its own quantization", name=entry.name,
            quant=spec.quant, quantization=entry.quantization)


def devices_tuple(devices: str | Sequence[str]) -> tuple[str, ...]:
    """``"cuda:0,cuda:1"`` or a list -> a tuple of normalized names."""
    items = devices.split(",") if isinstance(devices, str) else list(devices)
    return tuple(normalize_device(d) for d in items if str(d).strip())
