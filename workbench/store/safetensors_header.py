"""Read a safetensors file's header without touching its tensor data.

The format is an 8-byte little-endian header length, a JSON header mapping tensor
names to ``{"dtype", "shape", "data_offsets"}`` (plus an optional ``__metadata__``
map of strings), then the raw bytes. Reading the header costs one small read
however large the file is.

"Valid" here means exactly what the reference reader accepts: every rule that
``safetensors.safe_open`` (Rust ``SafeTensors::read_metadata`` with serde_json,
safetensors 0.8) enforces is checked, plus the one torch adds when a tensor is
read, so a file this module accepts is one transformers can load. The rules, with
where each comes from in ``safetensors/src/tensor.rs``:

1. At least 8 bytes; header length ``n <= 100_000_000`` (``MAX_HEADER_SIZE``) and
   ``8 + n <= file size``.
2. The header is UTF-8 and strict JSON as serde_json reads it: no NaN/Infinity,
   no lone surrogate escapes, no number out of f64 range, nesting at most 127 deep
   (serde_json's recursion limit, counting the outer object), only
   space/tab/CR/LF around it.
3. The top level is an object. ``__metadata__`` (at most once) is null or an
   object whose every value is a string (``HashMap<String, String>``).
4. Every other key is a tensor: an object with exactly one each of ``dtype``,
   ``shape``, ``data_offsets`` (unknown keys ignored), or a 3-element array in that
   order (serde's sequence form of a struct). A repeated tensor name must parse
   every time; the last one wins.
5. ``dtype`` is one of the variant names of ``safetensors::Dtype``; ``shape`` is a
   list of non-negative integers below 2**64; ``data_offsets`` exactly two.
6. Sorted by ``data_offsets``, tensors are contiguous from 0 with ``end >= start``;
   the element count times the dtype's bits does not overflow 64 bits, is a whole
   number of bytes, and equals ``end - start``.
7. The last end plus ``8 + n`` is the file size exactly: no gap, no trailing bytes.
8. torch can hold it (the Python binding's ``get_tensor``): no F6 dtypes (no torch
   dtype for them), an even last dimension for F4 (torch packs two per byte), no
   dimension above 2**63 - 1 and contiguous strides that fit in int64 (an empty
   tensor can have huge dimensions the data-length check never sees).
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._bounded_read import json_depth_exceeds, open_regular
from ..errors import BrokenModelError, UntrustedFileError
from .limits import SAFETENSORS_HEADER_MAX_BYTES

# Bits per element of every dtype safetensors 0.8 names (``safetensors::Dtype::bitsize``).
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8,
    "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}

# Bytes per element (fractional for the packed sub-byte dtypes).
DTYPE_BYTES: dict[str, float] = {k: v / 8 for k, v in DTYPE_BITS.items()}

# Dtypes the reference reader parses but cannot hand to torch ("Dtype not understood").
NOT_IN_TORCH = frozenset({"F6_E2M3", "F6_E3M2"})

# safetensors dtype -> transformers/torch dtype name.
TORCH_NAMES: dict[str, str] = {
    "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64",
    "I8": "int8", "U8": "uint8", "I16": "int16", "I32": "int32", "I64": "int64", "BOOL": "bool",
    "U16": "uint16", "U32": "uint32", "U64": "uint64", "C64": "complex64",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E8M0": "float8_e8m0fnu",
    "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz", "F4": "float4_e2m1fn_x2",
}

# A header larger than this is not a real header (``MAX_HEADER_SIZE`` of the reference reader).
MAX_HEADER_BYTES = 100_000_000
# serde_json's default recursion limit: 128 levels, the 128th refused.
MAX_JSON_DEPTH = 127
_U64_MAX = 2**64 - 1
# A \\uXXXX escape of a UTF-16 surrogate in the JSON text (raw UTF-8 cannot hold one),
# and a surrogate in a decoded string (valid escaped pairs decode to one character).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")
_I64_MAX = 2**63 - 1


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors spelling: "BF16"
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_BITS[self.dtype] // 8


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    size_bytes: int
    tensors: tuple[TensorInfo, ...]
    metadata: dict[str, str] = field(default_factory=dict)
    header_bytes: int = 0


class _Invalid(ValueError):
    """One rule of the format broken; the message says which."""


class _Negative:
    """A negative JSON integer: serde reads it as i64 (``-0`` as f64), never as usize."""

    def __init__(self, text: str) -> None:
        self.text = text


class _Pairs(list):
    """A JSON object as its (key, value) pairs in order, duplicates kept."""


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _Invalid(f"number {text[:20]} is out of range")
    return value


def _parse_constant(text: str) -> Any:
    raise _Invalid(f"{text} is not JSON")


def _check_surrogates(value: Any) -> None:
    # serde_json refuses lone surrogate escapes anywhere (even in ignored fields);
    # Python's json keeps them, and valid pairs arrive already combined.
    if isinstance(value, str):
        if _SURROGATE.search(value):
            raise _Invalid("a string holds a lone UTF-16 surrogate escape")
        return
    if isinstance(value, _Pairs):
        for key, item in value:
            _check_surrogates(key)
            _check_surrogates(item)
    elif isinstance(value, list):
        for item in value:
            _check_surrogates(item)


def _usize(value: Any, what: str) -> int:
    if type(value) is not int or not 0 <= value <= _U64_MAX:
        shown = value.text if isinstance(value, _Negative) else json.dumps(value) if not isinstance(value, _Pairs) else "an object"
        raise _Invalid(f"{what} is {shown}, not an unsigned 64-bit integer")
    return value


def _tensor_info(name: str, value: Any) -> tuple[str, tuple[int, ...], tuple[int, int]]:
    if isinstance(value, _Pairs):
        fields: dict[str, Any] = {}
        for key, item in value:
            if key in ("dtype", "shape", "data_offsets"):
                if key in fields:
                    raise _Invalid(f"tensor {name!r} has {key!r} twice")
                fields[key] = item
        missing = [k for k in ("dtype", "shape", "data_offsets") if k not in fields]
        if missing:
            raise _Invalid(f"tensor {name!r} has no {missing[0]!r}")
        dtype, shape, offsets = fields["dtype"], fields["shape"], fields["data_offsets"]
    elif isinstance(value, list):
        if len(value) != 3:
            raise _Invalid(f"tensor {name!r} is a list of {len(value)} items, not [dtype, shape, data_offsets]")
        dtype, shape, offsets = value
    else:
        raise _Invalid(f"tensor {name!r} is not an object")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise _Invalid(f"tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list):
        raise _Invalid(f"tensor {name!r} has a shape that is not a list")
    dims = tuple(_usize(d, f"a dimension of tensor {name!r}") for d in shape)
    if not isinstance(offsets, list) or len(offsets) != 2:
        raise _Invalid(f"tensor {name!r} has data_offsets that are not a [start, end] pair")
    start, end = (_usize(x, f"an offset of tensor {name!r}") for x in offsets)
    return dtype, dims, (start, end)


def _parse_header(raw: bytes, data_len: int) -> tuple[list[TensorInfo], dict[str, str]]:
    """Validate the JSON header bytes against a data section of ``data_len`` bytes.

    Returns:
        The tensors in file order (by offset) and the ``__metadata__`` map.

    Raises:
        _Invalid: the first rule (see the module docstring) the header breaks;
            :func:`read_safetensors_header` turns it into a ``BrokenModelError``.
    """
    metadata, parsed = _entries(_decode(raw))
    return _layout(parsed, data_len), metadata


def _decode(raw: bytes) -> _Pairs:
    """The header's JSON as nested :class:`_Pairs`, checked for depth and duplicate-free parsing."""
    try:
        text = raw.decode("utf-8")
        stripped = text.strip(" \t\r\n")
        if not stripped:
            raise _Invalid("header is empty")
        # Depth first, on the text (linear, no recursion): a walk of the parsed tree cost
        # seconds per megabyte of header, and the parser recursing 100,000 deep costs more.
        if json_depth_exceeds(stripped, MAX_JSON_DEPTH):
            raise _Invalid(f"JSON nests deeper than {MAX_JSON_DEPTH} levels")
        tree = json.JSONDecoder(object_pairs_hook=_Pairs, parse_float=_parse_float,
                                parse_int=lambda s: _Negative(s) if s.startswith("-") else int(s),
                                parse_constant=_parse_constant).decode(stripped)
    except UnicodeDecodeError as exc:
        raise _Invalid(f"header is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise _Invalid(f"JSON nests deeper than {MAX_JSON_DEPTH} levels") from None
    except _Invalid:
        raise
    except ValueError as exc:  # json.JSONDecodeError, int() of a 4300+ digit number
        raise _Invalid(f"header is not valid JSON ({exc})") from None
    if _SURROGATE_ESCAPE.search(stripped):  # rare: only then are the strings walked
        _check_surrogates(tree)
    if not isinstance(tree, _Pairs):
        raise _Invalid("header is not a JSON object")
    return tree


_Parsed = dict[str, tuple[str, tuple[int, ...], tuple[int, int]]]


def _entries(tree: _Pairs) -> tuple[dict[str, str], _Parsed]:
    """The ``__metadata__`` map and each tensor's ``(dtype, shape, (start, end))``."""
    metadata: dict[str, str] = {}
    seen_metadata = False
    parsed: _Parsed = {}
    for key, value in tree:
        if key == "__metadata__":
            if seen_metadata:
                raise _Invalid("__metadata__ appears twice")
            seen_metadata = True
            metadata = _metadata(value)
            continue
        parsed[key] = _tensor_info(key, value)  # a repeated name: the last one wins
    return metadata, parsed


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, _Pairs):
        raise _Invalid("__metadata__ is not an object")
    metadata: dict[str, str] = {}
    for mkey, mvalue in value:
        if not isinstance(mvalue, str):
            shown = "an object" if isinstance(mvalue, _Pairs) else \
                mvalue.text if isinstance(mvalue, _Negative) else json.dumps(mvalue)[:40]
            raise _Invalid(f"__metadata__[{mkey!r}] is {shown}, not a string")
        metadata[mkey] = mvalue
    return metadata


def _layout(parsed: _Parsed, data_len: int) -> list[TensorInfo]:
    """The tensors by offset, which must tile the data section exactly."""
    order = sorted(parsed.items(), key=lambda kv: kv[1][2])
    tensors: list[TensorInfo] = []
    position = 0
    for name, (dtype, dims, (start, end)) in order:
        if start != position or end < start:
            what = "overlaps the tensor before it" if start < position else \
                "leaves a gap before it" if start > position else "ends before it starts"
            raise _Invalid(f"tensor {name!r} at bytes {start}..{end} {what}")
        position = end
        _check_tensor(name, dtype, dims, end - start)
        tensors.append(TensorInfo(name, dtype, dims))
    if position != data_len:
        if position > data_len:
            raise _Invalid(f"truncated: tensors need {position} bytes of data but the file holds {data_len}")
        raise _Invalid(f"{data_len - position} bytes after the last tensor belong to no tensor")
    return tensors


def _check_tensor(name: str, dtype: str, dims: tuple[int, ...], nbytes: int) -> None:
    """One tensor's size against its byte span, and what torch can hold."""
    numel = 1
    for d in dims:  # left to right, as the reference reader's checked fold
        numel *= d
        if numel > _U64_MAX:
            raise _Invalid(f"tensor {name!r} has shape {list(dims)}, whose size overflows 64 bits")
    bits = numel * DTYPE_BITS[dtype]
    if bits > _U64_MAX:
        raise _Invalid(f"tensor {name!r} has shape {list(dims)}, whose size overflows 64 bits")
    if bits % 8:
        raise _Invalid(f"tensor {name!r} ({dtype}{list(dims)}) does not end on a byte boundary")
    if nbytes != bits // 8:
        raise _Invalid(f"tensor {name!r} spans {nbytes} bytes but {dtype}{list(dims)} needs {bits // 8}")
    if dtype in NOT_IN_TORCH:
        raise _Invalid(f"tensor {name!r} is {dtype}, which safetensors cannot hand to torch")
    if dtype == "F4" and dims[-1] % 2:
        raise _Invalid(f"tensor {name!r} is F4 with an odd last dimension, which torch's float4_e2m1fn_x2 cannot hold")
    if any(d > _I64_MAX for d in dims):
        raise _Invalid(f"tensor {name!r} has a dimension above 2**63 - 1, which torch cannot hold")
    stride = 1
    for d in reversed(dims[1:]):  # torch's contiguous strides count an empty dimension as 1
        stride *= max(d, 1)
        if stride > _I64_MAX:
            raise _Invalid(f"tensor {name!r} has shape {list(dims)}, whose strides overflow torch's int64")


def header_length(path: str | os.PathLike[str]) -> int | None:
    """The header length a safetensors file declares (its first 8 bytes); ``None`` when unreadable."""
    try:
        fd, _st = open_regular(path)
    except (OSError, UntrustedFileError):
        return None
    try:
        prefix = os.read(fd, 8)
    except OSError:
        return None
    finally:
        os.close(fd)
    return struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else None


def read_safetensors_header(path: str | os.PathLike[str], *,
                            max_header_bytes: int = SAFETENSORS_HEADER_MAX_BYTES) -> SafetensorsHeader:
    """Parse and validate the header of one ``.safetensors`` file.

    Accepts exactly the files ``safetensors.safe_open(path, "pt")`` opens and reads
    (see the module docstring for the rules), up to ``max_header_bytes`` of header:
    a legal header larger than that is refused unparsed, so one file costs bounded
    time and memory (:data:`workbench.store.limits.SAFETENSORS_HEADER_MAX_BYTES`).

    Raises:
        BrokenModelError: the header breaks a rule of the format, is larger than
            ``max_header_bytes``, or the file is shorter or longer than its header
            says, or is no regular file; the message names the file.

    Example:
        >>> hdr = read_safetensors_header("model.safetensors")  # doctest: +SKIP
        >>> sum(t.numel for t in hdr.tensors)  # doctest: +SKIP
        134515008
    """
    from .._format import format_bytes

    path = Path(path)

    def broken(problem: str) -> BrokenModelError:
        return BrokenModelError(
            f"{path.name}: {problem}",
            hint="re-download or re-export this file",
            path=path,
        )

    try:
        fd, st = open_regular(path)
    except UntrustedFileError as exc:
        raise broken(exc.reason) from None
    except OSError as exc:
        raise BrokenModelError(
            f"{path.name}: cannot be read ({exc.strerror or exc})",
            hint="check the file's permissions",
            path=path,
        ) from None
    try:
        with os.fdopen(fd, "rb") as fh:
            size = st.st_size
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise broken(f"file is {size} bytes, too short to hold a safetensors header")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES:
                raise broken(f"header length {header_len} is over the format's limit of {MAX_HEADER_BYTES} bytes")
            if 8 + header_len > size:
                raise broken(f"header length {header_len} does not fit in a {size}-byte file")
            if header_len > max_header_bytes:
                raise BrokenModelError(
                    f"{path.name}: its header is {format_bytes(header_len)}, more than the "
                    f"{format_bytes(max_header_bytes)} the workbench parses per file (real headers are a few MB "
                    "at most), so it was not read",
                    hint="if the checkpoint is genuine, re-save it in more shards", path=path,
                    header_bytes=header_len, max_header_bytes=max_header_bytes)
            raw = fh.read(header_len)
    except OSError as exc:
        raise BrokenModelError(
            f"{path.name}: cannot be read ({exc.strerror or exc})",
            hint="check the file's permissions",
            path=path,
        ) from None

    try:
        tensors, metadata = _parse_header(raw, size - 8 - header_len)
    except _Invalid as exc:
        raise broken(str(exc)) from None
    return SafetensorsHeader(path=path, size_bytes=size, tensors=tuple(tensors), metadata=metadata,
                             header_bytes=header_len)
