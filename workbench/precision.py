"""The one vocabulary of precisions and devices, at the bottom of the package.

Every layer (store estimates, load specs, the quantization study, the CLI's choices
and the panels' options) takes its names from here, so "nf4+dq" or "cuda" mean the
same everywhere. Names are the ecosystem's: transformers' dtypes (``"bfloat16"``),
torch's devices (``"cpu"``, ``"cuda:0"``), bitsandbytes' quantizations (``"int8"``,
``"nf4"``, ``"fp4"``, double quantization written ``"+dq"`` as in the QLoRA paper's
``bnb_4bit_use_double_quant``).

Example:
    >>> Precision.parse("nf4+dq").label
    'nf4+dq'
    >>> Precision.parse("bfloat16").quant
    'none'
    >>> normalize_device(" CUDA ")
    'cuda:0'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, cast, get_args

from .errors import ConfigError

Dtype = Literal["auto", "float32", "float16", "bfloat16"]
"""Load dtypes: ``"auto"`` keeps the checkpoint's floating dtype."""
ComputeDtype = Literal["float32", "float16", "bfloat16"]
"""Dtypes a 4-bit layer computes in (bitsandbytes' ``bnb_4bit_compute_dtype``)."""
Quant = Literal["none", "int8", "nf4", "fp4"]
"""bitsandbytes quantizations: LLM.int8, and the two 4-bit data types."""
DeviceKind = Literal["cuda", "cpu"]
"""torch's device types: what a device name (``"cuda:0"``, ``"cpu"``) is before the colon."""

DTYPES: tuple[Dtype, ...] = get_args(Dtype)
COMPUTE_DTYPES: tuple[ComputeDtype, ...] = get_args(ComputeDtype)
QUANTS: tuple[Quant, ...] = get_args(Quant)
FOUR_BIT: tuple[Quant, ...] = ("nf4", "fp4")
# Bytes per element of the floating dtypes a checkpoint or a load can hold.
DTYPE_BYTES: dict[str, int] = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}

_DEVICE = re.compile(r"^(cpu|cuda:\d+)$")


def normalize_device(name: str) -> str:
    """torch's meaning of what people type: ``"CUDA"`` -> ``"cuda:0"``, ``" cpu "`` -> ``"cpu"``.

    Other text is returned lower-cased and stripped; :func:`check_device` says whether it is valid.
    """
    text = str(name).strip().lower()
    return "cuda:0" if text == "cuda" else text


def is_device(name: str) -> bool:
    """True for ``"cpu"`` and ``"cuda:N"`` (after :func:`normalize_device`)."""
    return bool(_DEVICE.match(name))


def check_device(name: str) -> str:
    """The normalized device name.

    Raises:
        ConfigError: the text is not ``cpu`` or ``cuda:N``.
    """
    device = normalize_device(name)
    if not is_device(device):
        raise ConfigError(f"device {name!r} is not a device name", hint="use 'cpu' or 'cuda:N' (e.g. 'cuda:0')",
                          device=name)
    return device


def is_gpu(device: str) -> bool:
    """Whether a device name (``"cuda"``, ``"cuda:1"``; not ``"cpu"``, ``"meta"``) is a GPU.

    Example:
        >>> is_gpu("cuda:1"), is_gpu("cpu")
        (True, False)
    """
    return device.startswith("cuda")


def device_type(devices: tuple[str, ...] | list[str]) -> DeviceKind:
    """``"cuda"`` when any of ``devices`` is a GPU, else ``"cpu"``."""
    return "cuda" if any(is_gpu(d) for d in devices) else "cpu"


def precision_label(dtype: str, quant: str, double_quant: bool = False) -> str:
    """``"bfloat16"``, ``"int8"``, ``"nf4+dq"``: the dtype when unquantized, else the quantization."""
    return dtype if quant == "none" else quant + ("+dq" if double_quant else "")


@dataclass(frozen=True)
class Precision:
    """A dtype with an optional bitsandbytes quantization.

    Attributes:
        dtype: the load dtype (for quantized loads, the dtype of what stays unquantized).
        quant: ``"none"``, ``"int8"``, ``"nf4"`` or ``"fp4"``.
        double_quant: 4-bit only: quantize the absmax scales too.
    """

    dtype: Dtype = "bfloat16"
    quant: Quant = "none"
    double_quant: bool = False

    @property
    def label(self) -> str:
        """``"bfloat16"``, ``"int8"``, ``"nf4+dq"``: what tables and panels show."""
        return precision_label(self.dtype, self.quant, self.double_quant)

    @classmethod
    def parse(cls, text: str, *, dtype: Dtype = "bfloat16") -> Precision:
        """Read a label: a dtype (``"float32"``), or a quantization with ``+dq`` for 4-bit.

        Args:
            text: ``"float32"``, ``"float16"``, ``"bfloat16"``, ``"auto"``, ``"int8"``, ``"nf4"``,
                ``"nf4+dq"``, ``"fp4"`` or ``"fp4+dq"``.
            dtype: the dtype kept for a quantized label (default bfloat16).

        Raises:
            ConfigError: naming the text and the labels accepted.
        """
        base, plus, extra = text.strip().lower().partition("+")
        if base in DTYPES and not plus:
            return cls(dtype=cast(Dtype, base))
        if base in QUANTS and base != "none" and (not plus or extra == "dq"):
            if plus and base not in FOUR_BIT:
                raise ConfigError(f"precision {text!r}: double quantization applies to 4-bit weights only",
                                  hint="use nf4+dq or fp4+dq")
            return cls(dtype=dtype, quant=cast(Quant, base), double_quant=bool(plus))
        raise ConfigError(f"precision {text!r} is not known", hint=f"use one of {', '.join(LABELS)}")


LABELS: tuple[str, ...] = ("float32", "float16", "bfloat16", "int8", "nf4", "nf4+dq", "fp4", "fp4+dq")
"""Every precision label :meth:`Precision.parse` accepts, apart from ``"auto"``."""
