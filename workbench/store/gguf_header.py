"""Read a GGUF file's metadata and tensor table without reading tensor data.

A small, dependency-free reader of the GGUF v2/v3 layout (magic, version, counts,
typed key/value pairs, tensor infos). Large arrays such as the tokenizer's token
list are skipped and only their length kept, so the cost is a few megabytes of
sequential reads even for a multi-gigabyte file. The ``gguf`` package can do the
same but memory-maps the whole file; listing a store does not need that. Tensor
types and their sizes, and file types, come from the ``gguf`` package's own tables
(:func:`ggml_types`, :func:`file_types`), never a hand copy; a tensor of a type the
package does not know makes the file broken, as the package's reader refuses it.
"""

from __future__ import annotations

import functools
import io
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._bounded_read import open_regular
from ..errors import BrokenModelError, UntrustedFileError
from . import limits

GGUF_MAGIC = b"GGUF"

@functools.cache
def ggml_types() -> dict[int, tuple[str, int, int]]:
    """ggml tensor type id -> ``(name, elements per block, bytes per block)``, from the ``gguf`` package's own
    tables (``gguf.constants.GGMLQuantizationType`` and ``GGML_QUANT_SIZES``), so new types need no edit here."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    return {int(t): (t.name, *GGML_QUANT_SIZES[t]) for t in GGMLQuantizationType if t in GGML_QUANT_SIZES}


@functools.cache
def file_types() -> dict[int, str]:
    """``general.file_type`` -> the name llama.cpp users know the quantization by (``gguf.constants.LlamaFileType``:
    ``MOSTLY_Q4_K_M`` is ``Q4_K_M``)."""
    from gguf.constants import LlamaFileType

    return {int(f): f.name.removeprefix("MOSTLY_").removeprefix("ALL_") for f in LlamaFileType}


# ggml types that are torch dtypes as stored -> transformers/torch dtype name. An entry's
# ``dtype`` is one of these or None; quantized ggml types (Q4_1...) go in ``quantization``.
TORCH_DTYPES: dict[str, str] = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}

# Scalar value types: id -> struct format.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
# Arrays longer than this are summarised by their length only.
_KEEP_ARRAY_MAX = 64
# Arrays of arrays (no real file has more than one level).
_MAX_ARRAY_DEPTH = 4


@dataclass(frozen=True)
class GGUFArray:
    """A metadata array that was too long to keep; only its length is known."""

    length: int


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # ggml order (fastest-varying first)
    type_id: int
    offset: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def type_name(self) -> str:
        return ggml_types().get(self.type_id, (f"type{self.type_id}", 0, 0))[0]

    @property
    def nbytes(self) -> int | None:
        info = ggml_types().get(self.type_id)
        if info is None:
            return None
        _, block, size = info
        return self.numel // block * size


@dataclass(frozen=True)
class GGUFHeader:
    path: Path
    size_bytes: int
    version: int
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: tuple[GGUFTensor, ...] = ()

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    def arch_value(self, key: str) -> Any:
        """``{architecture}.{key}``, e.g. ``arch_value("context_length")``."""
        return self.metadata.get(f"{self.architecture}.{key}")

    @property
    def file_type_name(self) -> str | None:
        ft = self.metadata.get("general.file_type")
        return file_types().get(ft, f"type{ft}") if isinstance(ft, int) else None


class _TooLarge(Exception):
    """The header goes past :data:`~workbench.store.limits.GGUF_HEADER_MAX_BYTES`."""


class _Reader:
    """Sequential reads of the header through one bounded window of the file.

    Values are unpacked from an in-memory buffer refilled a megabyte at a time (a file
    read per value cost seconds for a 200k-token vocabulary), and nothing past
    ``limit`` bytes of the file is ever read or skipped to.
    """

    _CHUNK = 1 << 20

    def __init__(self, fh: io.BufferedReader, path: Path, limit: int):
        self.fh = fh
        self.path = path
        self.limit = limit
        self.buf = b""
        self.start = 0  # file offset of buf[0]
        self.pos = 0  # file offset of the next value

    def _fill(self, n: int) -> int:
        """Make ``[pos, pos + n)`` available; returns its offset in ``buf``."""
        end = self.pos + n
        if end > self.limit:
            raise _TooLarge
        have_end = self.start + len(self.buf)
        if self.start <= self.pos and end <= have_end:
            return self.pos - self.start
        keep = self.buf[self.pos - self.start:] if self.start <= self.pos < have_end else b""
        read_from = self.pos + len(keep)
        self.fh.seek(read_from)
        data = self.fh.read(min(max(end - read_from, self._CHUNK), self.limit - read_from))
        self.buf = keep + data
        self.start = self.pos
        if len(self.buf) < n:
            raise EOFError
        return 0

    def skip(self, n: int) -> None:
        if self.pos + n > self.limit:
            raise _TooLarge
        self.pos += n

    def read(self, n: int) -> bytes:
        at = self._fill(n)
        self.pos += n
        return self.buf[at:at + n]

    def scalar(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        at = self._fill(size)
        self.pos += size
        return struct.unpack_from(fmt, self.buf, at)[0]

    def string(self) -> str:
        n = self.scalar("<Q")
        if n > limits.GGUF_MAX_STRING_BYTES:
            raise _Bad(f"a metadata string of {n} bytes is longer than the {limits.GGUF_MAX_STRING_BYTES} "
                       "the workbench reads")
        return self.read(n).decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        n = self.scalar("<Q")
        if n > limits.GGUF_MAX_STRING_BYTES:
            raise _Bad(f"a metadata string of {n} bytes is longer than the {limits.GGUF_MAX_STRING_BYTES} "
                       "the workbench reads")
        self.skip(n)

    def value(self, vtype: int, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            if depth >= _MAX_ARRAY_DEPTH:
                raise _Bad(f"metadata arrays nest deeper than {_MAX_ARRAY_DEPTH} levels")
            etype = self.scalar("<I")
            count = self.scalar("<Q")
            if count > limits.GGUF_MAX_ARRAY:
                raise _Bad(f"a metadata array of {count} items is longer than the {limits.GGUF_MAX_ARRAY} "
                           "the workbench reads")
            if count <= _KEEP_ARRAY_MAX:
                return [self.value(etype, depth + 1) for _ in range(count)]
            if etype in _SCALARS:
                self.skip(count * struct.calcsize(_SCALARS[etype]))
            elif etype == _STRING:
                for _ in range(count):
                    self.skip_string()
            else:
                for _ in range(count):
                    self.value(etype, depth + 1)
            return GGUFArray(count)
        raise ValueError(f"unknown metadata value type {vtype}")


class _Bad(Exception):
    """A header problem, before the file is named (deliberately no ``ValueError``)."""


def _read_table(r: _Reader) -> tuple[int, dict[str, Any], list[GGUFTensor]]:
    """``(version, metadata, tensors)`` from the start of the file."""
    if r.read(4) != GGUF_MAGIC:
        raise _Bad("not a GGUF file (bad magic bytes)")
    version = r.scalar("<I")
    if version not in (2, 3):
        raise _Bad(f"GGUF version {version} is not supported (2 and 3 are)")
    n_tensors = r.scalar("<Q")
    n_kv = r.scalar("<Q")
    if n_tensors > limits.GGUF_MAX_TENSORS or n_kv > limits.GGUF_MAX_KEYS:
        raise _Bad(f"implausible counts ({n_tensors} tensors, {n_kv} keys; the workbench reads at most "
                   f"{limits.GGUF_MAX_TENSORS} and {limits.GGUF_MAX_KEYS})")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = r.string()
        metadata[key] = r.value(r.scalar("<I"))
    tensors = []
    for _ in range(n_tensors):
        name = r.string()
        n_dims = r.scalar("<I")
        if n_dims > 8:
            raise _Bad(f"tensor {name!r} has {n_dims} dimensions")
        shape = tuple(r.scalar("<Q") for _ in range(n_dims))
        tensors.append(GGUFTensor(name, shape, r.scalar("<I"), r.scalar("<Q")))
    return version, metadata, tensors


def read_gguf_header(path: str | os.PathLike[str], *,
                     max_header_bytes: int = limits.GGUF_HEADER_MAX_BYTES) -> GGUFHeader:
    """Parse a GGUF file's metadata and tensor infos; check the data is all there.

    At most ``max_header_bytes`` of the file are read, and counts, strings and arrays
    are bounded (:mod:`workbench.store.limits`), so a hostile header costs bounded
    time and memory.

    Raises:
        BrokenModelError: not a GGUF file, an unsupported version, a malformed
            header, a header over the bounds, no regular file, or a file shorter
            than its tensor table says (truncated).
    """
    path = Path(path)

    def broken(problem: str) -> BrokenModelError:
        return BrokenModelError(f"{path.name}: {problem}", hint="re-download or re-convert this file", path=path)

    try:
        fd, st = open_regular(path)
    except UntrustedFileError as exc:
        raise broken(exc.reason) from None
    except OSError as exc:
        raise BrokenModelError(
            f"{path.name}: cannot be read ({exc.strerror or exc})", hint="check the file's permissions", path=path
        ) from None
    with os.fdopen(fd, "rb", buffering=0) as fh:
        size = st.st_size
        reader = _Reader(fh, path, min(size, max_header_bytes))  # type: ignore[arg-type]
        try:
            version, metadata, tensors = _read_table(reader)
            table_end = reader.pos
        except _Bad as exc:
            raise broken(str(exc)) from None
        except _TooLarge:
            if size <= max_header_bytes:
                raise broken(f"truncated inside the header ({size} bytes)") from None
            raise BrokenModelError(
                f"{path.name}: its header (metadata and tensor table) is larger than the "
                f"{max_header_bytes // (1 << 20)} MiB the workbench reads (real ones are a few MB), so it was not read",
                hint="if the file is genuine, report it", path=path, max_header_bytes=max_header_bytes) from None
        except EOFError:
            raise broken(f"truncated inside the header ({size} bytes)") from None
        except (ValueError, struct.error) as exc:
            raise broken(f"malformed header ({exc})") from None

    unknown = next((t for t in tensors if t.type_id not in ggml_types()), None)
    if unknown is not None:
        raise broken(f"tensor {unknown.name[:80]} has ggml type {unknown.type_id}, which the installed gguf "
                     "package does not know (a newer llama.cpp format, or a damaged file)")
    alignment = metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0:
        alignment = 32
    data_start = (table_end + alignment - 1) // alignment * alignment
    need = max((t.offset + (t.nbytes or 0) for t in tensors), default=0)
    if data_start + need > size:
        raise broken(f"truncated: tensors need {data_start + need} bytes but the file has {size}")
    return GGUFHeader(path=path, size_bytes=size, version=version, metadata=metadata, tensors=tuple(tensors))
