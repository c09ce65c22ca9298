"""Pre-quantized checkpoints: what they hold, what they need, and what they were before packing.

A checkpoint saved after a quantized load (``config.json`` has a
``quantization_config``) stores packed weights plus the side tensors that unpack
them. Read naively, its headers give packed bytes for parameter counts and
``uint8`` for the dtype. Here each format's layout gives the original counts back:

* bitsandbytes 4-bit (``load_in_4bit``): ``X.weight`` is ``uint8`` ``[ceil(n/2), 1]``;
  the original shape is in the JSON blob of ``X.weight.quant_state.bitsandbytes__nf4``
  (or ``__fp4``), beside ``.absmax``, ``.quant_map`` and, with double quantization,
  ``.nested_absmax``/``.nested_quant_map``;
* bitsandbytes 8-bit: ``X.weight`` is ``int8`` of the original shape, with ``X.SCB``
  and ``X.weight_format`` beside it;
* GPTQ: ``X.qweight`` ``int32`` ``[in x bits / 32, out]`` with ``qzeros``, ``scales``, ``g_idx``;
* AWQ: ``X.qweight`` ``int32`` ``[in, out x bits / 32]`` with ``qzeros``, ``scales``;
* compressed-tensors: ``X.weight_packed`` ``int32`` ``[out, in x bits / 32]`` with
  ``weight_scale``, ``weight_zero_point``, ``weight_shape``;
* fp8 (fine-grained, FBGEMM): ``X.weight`` in ``F8_E4M3`` of the original shape with
  ``weight_scale_inv``/``weight_scale``/``input_scale``.

Loading such a checkpoint needs the package transformers' quantizer for its
``quant_method`` imports; when it is missing the listing names it (checked with
``importlib.util.find_spec``: nothing is imported). Nothing here imports torch.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import struct
from pathlib import Path
from typing import Any

from ..precision import COMPUTE_DTYPES, QUANTS, Quant
from .folder_json import config_or_none

# Side tensors: quantization state, not parameters of the loaded model.
_SIDE = re.compile(
    r"\.(absmax|quant_map|nested_absmax|nested_quant_map|SCB|weight_format|qzeros|scales|g_idx|"
    r"weight_scale|weight_scale_inv|weight_zero_point|weight_shape|weight_global_scale|input_scale|"
    r"input_global_scale|quant_state\.bitsandbytes__\w+)$"
)
_BNB4_STATE = re.compile(r"^(.*)\.quant_state\.bitsandbytes__(nf4|fp4)$")

# What transformers' quantizer for each quant_method imports (transformers/quantizers/quantizer_*.py):
# (module to find, what to pip install).
REQUIRED_PACKAGES: dict[str, tuple[tuple[str, str], ...]] = {
    "bitsandbytes": (("bitsandbytes", "bitsandbytes"),),
    "gptq": (("optimum", "optimum"), ("gptqmodel", "gptqmodel")),
    "awq": (("gptqmodel", "gptqmodel"),),
    "compressed-tensors": (("compressed_tensors", "compressed-tensors"),),
    "hqq": (("hqq", "hqq"),),
    "aqlm": (("aqlm", "aqlm"),),
    "eetq": (("kernels", "kernels"),),
    "quanto": (("optimum.quanto", "optimum-quanto"),),
    "torchao": (("torchao", "torchao"),),
    "vptq": (("vptq", "vptq"),),
    "spqr": (("spqr_quant", "spqr_quant"),),
    "higgs": (("flute", "flute-kernel"),),
    "fp_quant": (("fp_quant", "fp_quant"),),
    "auto-round": (("auto_round", "auto-round"),),
    "quark": (("quark", "amd-quark"),),
    "fbgemm_fp8": (("fbgemm_gpu", "fbgemm-gpu"),),
    "sinq": (("sinq", "sinq"),),
    "fouroversix": (("fouroversix", "fouroversix"),),
}
# quant_methods transformers 5 loads without a package of their own.
_NO_PACKAGE = {"fp8", "mxfp8", "mxfp4", "bitnet", "nvfp4", "metal", "gemma", "gguf"}
# Quantizations bitsandbytes applies, whose footprint the store's layout rule computes.
BNB_QUANTS: tuple[Quant, ...] = tuple(q for q in QUANTS if q != "none")


def quant_name(qc: dict[str, Any]) -> str:
    """The quantization's short name: ``"nf4"``, ``"fp4"``, ``"int8"``, ``"gptq-4bit"``, ``"fp8"``..."""
    method = str(qc.get("quant_method") or "unknown")
    if method == "bitsandbytes":
        if qc.get("load_in_4bit") or qc.get("_load_in_4bit"):
            return str(qc.get("bnb_4bit_quant_type") or "fp4")
        return "int8"
    bits = qc.get("bits") or qc.get("w_bit") or qc.get("nbits")
    return f"{method}-{bits}bit" if isinstance(bits, int) else method


def missing_package(method: str) -> str | None:
    """The pip name of a package loading ``method`` needs and that is not installed, else ``None``."""
    for module, pip_name in REQUIRED_PACKAGES.get(method, ()):
        try:
            if importlib.util.find_spec(module) is None:
                return pip_name
        except (ImportError, ValueError):  # a parent package missing (optimum.quanto without optimum)
            return pip_name
    return None


def known_method(method: str) -> bool:
    return method in REQUIRED_PACKAGES or method in _NO_PACKAGE


def _blob_shapes(path: Path, names: list[str]) -> dict[str, tuple[int, ...]]:
    """Original shapes from bitsandbytes' 4-bit quant-state blobs (a few hundred bytes each)."""
    out: dict[str, tuple[int, ...]] = {}
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
        for name in names:
            start, end = header[name]["data_offsets"]
            if end - start > 1 << 16:
                continue
            fh.seek(8 + n + start)
            try:
                shape = json.loads(fh.read(end - start)).get("shape")
            except (ValueError, UnicodeDecodeError, AttributeError):
                continue
            if isinstance(shape, list) and all(isinstance(d, int) for d in shape):
                out[name] = tuple(shape)
    return out


def file_summary(path: Path, tensors: list[tuple[str, str, tuple[int, ...], int]]) -> dict[str, Any] | None:
    """Per-file numbers of a pre-quantized checkpoint, or ``None`` when the file has no side tensors.

    Returns a JSON-ready dict: ``params`` (original parameter count, side tensors left out),
    ``quantized_params``/``quantized_rows``/``quantized_count`` (weights stored packed),
    ``packed_bytes`` (bytes of those), ``state_bytes`` (side tensors), ``float_params``
    (everything else, stored in a float dtype).
    """
    names = {name for name, *_ in tensors}
    if not any(_SIDE.search(name) or _is_mxfp4_scales(name, names) for name, *_ in tensors):
        return None
    states = {m.group(1): name for name, *_ in tensors if (m := _BNB4_STATE.match(name))}
    shapes = _blob_shapes(path, list(states.values())) if states else {}
    out = {"params": 0, "quantized_params": 0, "quantized_rows": 0, "quantized_count": 0, "packed_bytes": 0,
           "state_bytes": 0, "float_params": 0, "float_bytes": 0}
    for name, dtype, shape, nbytes in tensors:
        numel = math.prod(shape)
        if _SIDE.search(name) or _is_mxfp4_scales(name, names):
            out["state_bytes"] += nbytes
            continue
        blob = (shapes.get(states[name]) or (numel * 2,)) if name in states else None
        original = _original_shape(name, dtype, shape, blob, names, tensors)
        if original is not None:
            n = math.prod(original)
            out["params"] += n
            out["quantized_params"] += n
            out["quantized_rows"] += original[0]
            out["quantized_count"] += 1
            out["packed_bytes"] += nbytes
        else:
            out["params"] += numel
            out["float_params"] += numel
            out["float_bytes"] += nbytes
    return out


def _is_mxfp4_scales(name: str, names: set[str]) -> bool:
    """MXFP4's ``X_scales`` (one 8-bit exponent per 32 values of ``X_blocks``): quantization state."""
    return name.endswith("_scales") and f"{name[:-len('_scales')]}_blocks" in names


def mxfp4_stays_packed(device_type: str) -> bool:
    """Whether transformers keeps an MXFP4 checkpoint packed when loading it on ``device_type``.

    ``quantizers/quantizer_mxfp4.py`` (``validate_environment``) dequantizes a pre-quantized MXFP4
    model (to the dtype of the load, see estimate.load_dtype) unless its kernels can run: a CUDA GPU (compute capability 7.5 or more) with
    Triton 3.4 or later and the ``kernels`` package; on the CPU it dequantizes unless ``use_kernels``
    is set, which the workbench does not set.
    """
    if device_type != "cuda":
        return False
    return all(importlib.util.find_spec(m) is not None for m in ("triton", "kernels"))


def _original_shape(name: str, dtype: str, shape: tuple[int, ...], blob: tuple[int, ...] | None, names: set[str],
                    tensors: list[tuple[str, str, tuple[int, ...], int]]) -> tuple[int, ...] | None:
    """The unpacked shape of a packed weight, or ``None`` for a tensor stored as it is used.

    ``blob`` is the shape a bitsandbytes 4-bit weight's quant-state blob records (``None`` otherwise).
    """
    if blob is not None:  # bitsandbytes 4-bit: the blob has the shape
        return blob
    if dtype == "U8" and name.endswith("_blocks") and f"{name[:-len('_blocks')]}_scales" in names and len(shape) >= 2:
        # MXFP4 (GPT-OSS): [..., blocks, 16] bytes, two 4-bit values a byte, 32 values a block
        return (*shape[:-2], shape[-2] * shape[-1] * 2)
    if dtype == "I8" and name.endswith(".weight") and f"{name[:-len('.weight')]}.SCB" in names:
        return shape  # bitsandbytes int8
    if name.endswith(".qweight") and len(shape) == 2:
        prefix = name[: -len(".qweight")]
        scales = next((s for n, _, s, _ in tensors if n == f"{prefix}.scales"), None)
        g_idx = next((s for n, _, s, _ in tensors if n == f"{prefix}.g_idx"), None)
        if scales is not None and len(scales) == 2 and scales[1] != shape[1]:
            return (scales[1], shape[0])  # AWQ: qweight [in, out x bits/32], scales [groups, out]
        # GPTQ: qweight [in x bits/32, out]; g_idx has one entry per input feature
        return (shape[1], g_idx[0] if g_idx else shape[0] * 8)
    if name.endswith(".weight_packed") and len(shape) == 2:
        return (shape[0], shape[1] * 8)  # compressed-tensors int4 packed in int32
    if dtype.startswith("F8") and name.endswith(".weight"):
        return shape
    return None


def _config_dtype(config: dict[str, Any]) -> str | None:
    inner = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    for cfg in (config, inner):
        for key in ("torch_dtype", "dtype"):
            value = cfg.get(key)
            if value in COMPUTE_DTYPES:
                return str(value)
    return None


def entry_fields(config: dict[str, Any], parts: list[dict[str, Any]], stats: Any) -> dict[str, Any]:
    """Entry fields of a checkpoint whose config names a ``quantization_config``, else ``{}``.

    Args:
        config: ``config.json``.
        parts: the per-file header summaries (each may carry ``prequant`` from :func:`file_summary`).
        stats: the :class:`~workbench.store.entry.WeightStats` summed from the headers as stored.

    Returns:
        ``quant_method``, ``quantization``, ``dtype`` (the compute dtype the config names), and where
        the files hold packed weights, ``params`` (the original count) and ``weights`` (original
        counts, packed and side-tensor bytes); ``missing_package`` and a ``problem`` when the
        package transformers needs for the method is not installed.
    """
    from dataclasses import replace

    qc = config.get("quantization_config")
    if not isinstance(qc, dict):
        return {}
    method = str(qc.get("quant_method") or "unknown")
    out: dict[str, Any] = {"quant_method": method, "quantization": quant_name(qc)}
    dtype = _config_dtype(config)
    if dtype:
        out["dtype"] = dtype
    sums = [p["prequant"] for p in parts if p.get("prequant")]
    if sums:
        total = sum(s["params"] for s in sums) - stats.tied_params
        out["params"] = total
        out["weights"] = replace(
            stats, params=total, linear_params=sum(s["quantized_params"] for s in sums),
            linear_rows=sum(s["quantized_rows"] for s in sums), linear_count=sum(s["quantized_count"] for s in sums),
            packed_bytes=sum(s["packed_bytes"] for s in sums), quant_state_bytes=sum(s["state_bytes"] for s in sums))
    missing = missing_package(method)
    if missing:
        out["missing_package"] = missing
        out["problem"] = (f"pre-quantized with {method} ({out['quantization']}); loading it needs the {missing} "
                          f"package, which is not installed: pip install {missing}")
    elif not known_method(method):
        out["problem"] = (f"pre-quantized with quant_method {method!r}, which this workbench does not know how to "
                          "load; dequantize it, or use the original checkpoint")
    return out


def bnb_skip_modules(folder: Path) -> tuple[str, ...] | None:
    """``llm_int8_skip_modules`` of a bitsandbytes checkpoint's config (``None``: transformers' defaults)."""
    qc = (config_or_none(folder) or {}).get("quantization_config") or {}
    skip = qc.get("llm_int8_skip_modules") if isinstance(qc, dict) else None
    return tuple(str(s) for s in skip) if isinstance(skip, list) else None


def double_quant(folder: Path) -> bool:
    qc = (config_or_none(folder) or {}).get("quantization_config") or {}
    return bool(isinstance(qc, dict) and qc.get("bnb_4bit_use_double_quant"))
