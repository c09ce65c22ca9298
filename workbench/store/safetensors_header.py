"""Read a safetensors file's header without touching its tensor data.

The format is an 8-byte little-endian header length, a JSON header mapping tensor
names to ``{"dtype", "shape", "data_offsets"}``, then the raw bytes. Reading the
header costs one small read however large the file is, and validating the offsets
against the file size catches truncated downloads without reading the data.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BrokenModelError

# Bytes per element for every dtype the safetensors spec names.
DTYPE_BYTES: dict[str, float] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
    "F4": 0.5, "F6_E2M3": 0.75, "F6_E3M2": 0.75,
}

# safetensors dtype -> transformers/torch dtype name.
TORCH_NAMES: dict[str, str] = {
    "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64",
    "I8": "int8", "U8": "uint8", "I16": "int16", "I32": "int32", "I64": "int64", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}

# A header larger than this is not a real header (the reference reader uses 100 MB).
MAX_HEADER_BYTES = 100_000_000


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
        return int(self.numel * DTYPE_BYTES[self.dtype])


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    size_bytes: int
    tensors: tuple[TensorInfo, ...]
    metadata: dict[str, str] = field(default_factory=dict)


def read_safetensors_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Parse and validate the header of one ``.safetensors`` file.

    Raises:
        BrokenModelError: the header is malformed or the file is shorter than its
            header says (a truncated copy); the message names the file.

    Example:
        >>> hdr = read_safetensors_header("model.safetensors")  # doctest: +SKIP
        >>> sum(t.numel for t in hdr.tensors)  # doctest: +SKIP
        134515008
    """
    path = Path(path)

    def broken(problem: str) -> BrokenModelError:
        return BrokenModelError(
            f"{path.name}: {problem}",
            hint="re-download or re-export this file",
            path=path,
        )

    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise broken(f"file is {size} bytes, too short to hold a safetensors header")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                raise broken(f"header length {header_len} does not fit in a {size}-byte file")
            raw = fh.read(header_len)
    except OSError as exc:
        raise BrokenModelError(
            f"{path.name}: cannot be read ({exc.strerror or exc})",
            hint="check the file's permissions",
            path=path,
        ) from None

    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise broken(f"header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise broken("header is not a JSON object")

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise broken("__metadata__ is not an object")
    data_len = size - 8 - header_len
    tensors: list[TensorInfo] = []
    max_end = 0
    for name, info in header.items():
        try:
            dtype = info["dtype"]
            shape = tuple(int(d) for d in info["shape"])
            start, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise broken(f"tensor {name!r} has a malformed entry") from None
        if dtype not in DTYPE_BYTES:
            raise broken(f"tensor {name!r} has unknown dtype {dtype!r}")
        if any(d < 0 for d in shape) or not 0 <= start <= end:
            raise broken(f"tensor {name!r} has an invalid shape or offsets")
        t = TensorInfo(name, dtype, shape)
        if end - start != t.nbytes:
            raise broken(f"tensor {name!r} spans {end - start} bytes but {dtype}{list(shape)} needs {t.nbytes}")
        max_end = max(max_end, end)
        tensors.append(t)
    if max_end > data_len:
        raise broken(f"truncated: tensors need {max_end} bytes of data but the file holds {data_len}")
    return SafetensorsHeader(path=path, size_bytes=size, tensors=tuple(tensors), metadata=dict(metadata))
