"""GGUF tensor types as the ``gguf`` package's own tables and reader say, for every type it knows.

Each file is written with ``gguf.GGUFWriter`` (raw bytes of each ggml type, the size its
table gives), read back with ``gguf.GGUFReader`` (the reference), and listed by the store:
type names and byte counts must be the reader's; a file the reader refuses is never ok.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from workbench.store import ModelStore
from workbench.store.gguf_header import read_gguf_header


def _write(path: Path, types: list) -> None:
    import gguf
    from gguf.constants import GGML_QUANT_SIZES

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(128)
    w.add_block_count(1)
    w.add_embedding_length(256)
    w.add_head_count(4)
    for i, t in enumerate(types):
        block, size = GGML_QUANT_SIZES[t]
        rows, cols = 2, 256 * block // np.gcd(256, block)  # whole blocks of every type
        raw = np.zeros((rows, cols // block * size), dtype=np.uint8)
        w.add_tensor(f"blk.0.t{i}.weight", raw, raw_dtype=t)  # the writer derives the shape from the bytes
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_every_ggml_type_is_named_and_sized_as_gguf_reads_it(tmp_path):
    import gguf
    from gguf.constants import GGML_QUANT_SIZES

    types = [t for t in gguf.GGMLQuantizationType if t in GGML_QUANT_SIZES]
    assert {"Q1_0", "NVFP4", "MXFP4"} <= {t.name for t in types}  # the ones a hand table missed
    path = tmp_path / "all-types.gguf"
    _write(path, types)
    ref = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    hdr = read_gguf_header(path)
    assert len(hdr.tensors) == len(ref)
    for t in hdr.tensors:
        assert t.type_name == ref[t.name].tensor_type.name
        assert t.nbytes == int(ref[t.name].n_bytes), t.name
        assert t.numel == int(ref[t.name].n_elements)


def test_a_file_gguf_refuses_is_never_ok(tmp_path):
    import gguf

    root = tmp_path / "root"
    root.mkdir()
    path = root / "cut.gguf"
    _write(path, [gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.NVFP4])
    data = path.read_bytes()
    path.write_bytes(data[:-100])  # the last tensor's data cut short
    with pytest.raises(Exception):  # noqa: B017 - the reference reader's refusal, whatever its type
        gguf.GGUFReader(str(path))
    entry = ModelStore([root], cache_path=None).get("cut")
    assert entry.status == "broken"
    assert "truncated" in (entry.problem or "")


def test_an_unknown_ggml_type_is_broken_not_guessed(tmp_path):
    """A type id the installed gguf package has no table row for: broken, naming the tensor and type."""
    import gguf

    root = tmp_path / "root"
    root.mkdir()
    path = root / "future.gguf"
    _write(path, [gguf.GGMLQuantizationType.F32])
    data = bytearray(path.read_bytes())
    # The tensor info's type field: after the name, its dims count and dims (ggml type 0 = F32).
    name = b"blk.0.t0.weight"
    at = data.index(name) + len(name) + 4 + 2 * 8
    assert data[at:at + 4] == (0).to_bytes(4, "little")
    data[at:at + 4] = (250).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    entry = ModelStore([root], cache_path=None).get("future")
    assert entry.status == "broken"
    assert "ggml type 250" in entry.problem
    assert "blk.0.t0.weight" in entry.problem
