"""The header reader's verdict against the reference reader's, over mutated headers.

Truth is ``safetensors.safe_open(path, "pt")`` opening the file and ``get_tensor``
reading every tensor (what transformers does when it loads the file). Each case
starts from a valid random header and applies one or two seeded random mutations
drawn from every kind of damage the format can take: wrong JSON types, bad dtypes,
overlaps, gaps, truncation, non-string metadata, huge lengths, bad UTF-8, deep
nesting, duplicate keys. The store must say ``ok`` exactly when safe_open reads it.
"""

from __future__ import annotations

import json
import random
import struct
from collections import Counter
from pathlib import Path

import pytest

from workbench.errors import BrokenModelError
from workbench.store import ModelStore
from workbench.store.safetensors_header import read_safetensors_header

BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16, "U16": 16,
        "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
        "F4": 4}
N_CASES = 600


def _dump(value) -> str:
    """JSON text; a ``("pairs", [...])`` tuple is an object with its pairs as given (duplicates kept)."""
    if isinstance(value, tuple) and value and value[0] == "pairs":
        return "{" + ",".join(f"{json.dumps(k)}:{_dump(v)}" for k, v in value[1]) + "}"
    if isinstance(value, dict):
        return _dump(("pairs", list(value.items())))
    if isinstance(value, list):
        return "[" + ",".join(_dump(v) for v in value) + "]"
    if isinstance(value, _Raw):
        return value.text
    return json.dumps(value)


class _Raw:
    def __init__(self, text: str) -> None:
        self.text = text


def valid_case(rng: random.Random) -> tuple[list, bytes]:
    """A random valid header as (key, value) pairs plus the data bytes."""
    pairs: list = []
    offset = 0
    for i in range(rng.randint(0, 5)):
        dtype = rng.choice(list(BITS))
        shape = [rng.randint(0, 4) for _ in range(rng.randint(0, 3))]
        numel = 1
        for d in shape:
            numel *= d
        if (numel * BITS[dtype]) % 8:
            shape.append(2)
            numel *= 2
        size = numel * BITS[dtype] // 8
        name = rng.choice([f"model.layers.{i}.weight", f"t{i}", f"é{i}", f"<b>{i}", f"x {i}"])
        pairs.append((name, {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}))
        offset += size
    rng.shuffle(pairs)
    if rng.random() < 0.6:
        pairs.insert(rng.randint(0, len(pairs)), ("__metadata__", {"format": "pt", "note": "ok"}))
    return pairs, bytes(rng.getrandbits(8) for _ in range(offset))


def _plain(v) -> bool:
    # A tensor entry an earlier mutation left in its usual shape (later mutations assume it).
    return isinstance(v, dict) and set(v) == {"dtype", "shape", "data_offsets"} and isinstance(v["dtype"], str) \
        and isinstance(v["shape"], list) and all(type(d) is int for d in v["shape"]) \
        and isinstance(v["data_offsets"], list) and len(v["data_offsets"]) == 2 \
        and all(type(x) is int for x in v["data_offsets"])


def _tensors(pairs):
    return [i for i, (k, v) in enumerate(pairs) if k != "__metadata__" and _plain(v)]


def _meta(pairs):
    for i, (k, _v) in enumerate(pairs):
        if k == "__metadata__":
            return i
    pairs.append(("__metadata__", {"format": "pt"}))
    return len(pairs) - 1


# --- mutations of the JSON structure: each takes (rng, pairs, data) and returns (pairs, data) ---------


def m_meta_value(rng, pairs, data):
    i = _meta(pairs)
    meta = dict(pairs[i][1]) if isinstance(pairs[i][1], dict) else {}
    meta[rng.choice(["format", "x"])] = rng.choice([1, 2.5, True, None, [], {"a": "b"}, "fine", -1])
    pairs[i] = ("__metadata__", meta)
    return pairs, data


def m_meta_type(rng, pairs, data):
    i = _meta(pairs)
    pairs[i] = ("__metadata__", rng.choice([None, [], "pt", 3, {}, [["a", "b"]]]))
    return pairs, data


def m_meta_twice(rng, pairs, data):
    pairs.append(("__metadata__", rng.choice([{"a": "b"}, None])))
    if not any(k == "__metadata__" for k, _ in pairs[:-1]):
        pairs.insert(0, ("__metadata__", {"x": "y"}))
    return pairs, data


def m_meta_dup_key(rng, pairs, data):
    i = _meta(pairs)
    items = list(pairs[i][1].items()) if isinstance(pairs[i][1], dict) else []
    items += [("k", rng.choice(["a", 1])), ("k", rng.choice(["b", 2]))]
    pairs[i] = ("__metadata__", ("pairs", items))
    return pairs, data


def _pick(rng, pairs):
    idx = _tensors(pairs)
    return rng.choice(idx) if idx else None


def m_dtype(rng, pairs, data):
    i = _pick(rng, pairs)
    if i is not None:
        info = dict(pairs[i][1])
        info["dtype"] = rng.choice(["f32", "FP32", "F6_E2M3", "F6_E3M2", "Q4", 32, None, "", "F8_E4M3FNUZ",
                                    "F8_E5M2FNUZ", info["dtype"].lower(), rng.choice(list(BITS))])
        pairs[i] = (pairs[i][0], info)
    return pairs, data


def m_shape(rng, pairs, data):
    i = _pick(rng, pairs)
    if i is not None:
        info = dict(pairs[i][1])
        shape = list(info["shape"])
        choice = rng.randrange(9)
        if choice == 0 and shape:
            shape[rng.randrange(len(shape))] = rng.choice([-1, -2, _Raw("-0"), 2.0, _Raw("2e0"), "2", True, None])
        elif choice == 1:
            shape.append(rng.choice([0, 1, 2, 3]))
        elif choice == 2 and shape:
            shape.pop()
        elif choice == 3:
            shape = [0, rng.choice([2**63 - 1, 2**63, 2**64 - 1, 2**64]), 2]
        elif choice == 4:
            shape = [rng.choice([2**32, 2**40]), rng.choice([2**32, 2**40]), 0]
        elif choice == 5:
            shape = rng.choice([{"0": 1}, "2", 2, None])
        elif choice == 6:
            shape = [2**62] if rng.random() < 0.5 else [2**61, 1]
        elif choice == 7 and info["dtype"] == "F4":
            shape = [3]
        else:
            shape = shape[::-1]
        info["shape"] = shape
        pairs[i] = (pairs[i][0], info)
    return pairs, data


def m_offsets(rng, pairs, data):
    i = _pick(rng, pairs)
    if i is not None:
        info = dict(pairs[i][1])
        s, e = info["data_offsets"]
        info["data_offsets"] = rng.choice([
            [e, s], [s, e, e], [s], [s + 1, e + 1], [s - 1 if s else 0, e - 1 if e else 0], [s, e + 1],
            [s, max(e - 1, 0)], [float(s), e], [s, _Raw(str(-e) if e else "-0")], {"0": s, "1": e}, None,
            [s, 2**64], [2**64 - 1, 2**64 - 1], [s, e],
        ])
        pairs[i] = (pairs[i][0], info)
    return pairs, data


def m_fields(rng, pairs, data):
    i = _pick(rng, pairs)
    if i is not None:
        name, info = pairs[i]
        choice = rng.randrange(8)
        if choice == 0:
            info = {k: v for k, v in info.items() if k != rng.choice(list(info))}
        elif choice == 1:
            info = ("pairs", [*info.items(), (rng.choice(list(info)), info[rng.choice(list(info))])])
        elif choice == 2:
            info = dict(info, extra=rng.choice([1, "x", None, [1, 2], {"a": [1]}, _Raw("123456789012345678901234567890")]))
        elif choice == 3:
            info = [info["dtype"], info["shape"], info["data_offsets"]]
        elif choice == 4:
            info = rng.choice([[info["dtype"], info["shape"]], [info["dtype"], info["shape"], info["data_offsets"], 0]])
        elif choice == 5:
            info = rng.choice(["F32", None, 3, []])
        elif choice == 6:
            info = dict(info, Dtype=info.pop("dtype"))
        else:
            info = dict(reversed(list(info.items())))
        pairs[i] = (name, info)
    return pairs, data


def m_dup_tensor(rng, pairs, data):
    i = _pick(rng, pairs)
    if i is not None:
        name, info = pairs[i]
        variant = rng.choice([dict(info), dict(info, dtype="NOPE"), dict(info, shape=[9, 9]), "x"])
        pairs.insert(i if rng.random() < 0.5 else i + 1, (name, variant))
    return pairs, data


def m_zero_tensor(rng, pairs, data):
    pairs.insert(rng.randint(0, len(pairs)), (f"empty{rng.randrange(9)}",
                                              {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}))
    return pairs, data


def m_deep(rng, pairs, data):
    i = _pick(rng, pairs)
    if i is not None:
        depth = rng.choice([60, 124, 125, 126, 127, 200])
        pairs[i] = (pairs[i][0], dict(pairs[i][1], deep=_Raw("[" * depth + "]" * depth)))
    return pairs, data


def m_bad_number(rng, pairs, data):
    i = _pick(rng, pairs)
    if i is not None:
        pairs[i] = (pairs[i][0], dict(pairs[i][1], x=_Raw(rng.choice(["NaN", "Infinity", "-Infinity", "1e999", "1e10", "-5"]))))
    return pairs, data


def m_surrogate(rng, pairs, data):
    text = rng.choice(["\\ud800", "\\udfff", "\\ud83d\\ude00", "\\ud83d", "\\u00e9"])
    if rng.random() < 0.5:
        i = _meta(pairs)
        meta = dict(pairs[i][1]) if isinstance(pairs[i][1], dict) else {}
        meta["s"] = _Raw(f'"{text}"')
        pairs[i] = ("__metadata__", meta)
    else:
        i = _pick(rng, pairs)
        if i is not None:
            pairs[i] = (pairs[i][0], dict(pairs[i][1], s=_Raw(f'"{text}"')))
    return pairs, data


STRUCT_MUTATIONS = [m_meta_value, m_meta_type, m_meta_twice, m_meta_dup_key, m_dtype, m_shape, m_offsets, m_fields,
                    m_dup_tensor, m_zero_tensor, m_deep, m_bad_number, m_surrogate]


# --- mutations of the bytes: header text, length prefix, file length ------------------------------


def b_text(rng, header: bytes) -> bytes:
    choice = rng.randrange(9)
    if choice == 0:
        return b"\xef\xbb\xbf" + header
    if choice == 1:
        return header + rng.choice([b"   ", b"\n\t\r ", b"\x00", b"x", b"}", b"\x0c", "\u00a0".encode()])
    if choice == 2:
        return rng.choice([b" ", b"\t\n"]) + header
    if choice == 3 and len(header) > 2:
        pos = rng.randrange(1, len(header) - 1)
        return header[:pos] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x01"]) + header[pos:]
    if choice == 4:
        return header.replace(b"{", b"[", 1)
    if choice == 5:
        return header.decode().encode("utf-16")
    if choice == 6 and len(header) > 4:
        return header[: rng.randrange(1, len(header))]
    if choice == 7:
        return rng.choice([b"", b"   ", b"null", b"[]", b"\"x\"", b"1"])
    return header


def b_file(rng, header: bytes, data: bytes) -> bytes:
    n = len(header)
    choice = rng.randrange(7)
    if choice == 0:
        return struct.pack("<Q", n + rng.choice([-2, -1, 1, 2])) + header + data
    if choice == 1:
        return struct.pack("<Q", rng.choice([100_000_001, 2**63, 2**64 - 1, 100_000_000])) + header + data
    if choice == 2 and data:
        return struct.pack("<Q", n) + header + data[: rng.randrange(len(data))]
    if choice == 3:
        return struct.pack("<Q", n) + header + data + b"\0" * rng.randint(1, 8)
    if choice == 4:
        whole = struct.pack("<Q", n) + header + data
        return whole[: rng.randrange(0, 9)]
    if choice == 5:
        return struct.pack("<Q", 0) + data
    return struct.pack("<Q", n) + header + data


def build_case(seed: int) -> bytes:
    rng = random.Random(seed)
    pairs, data = valid_case(rng)
    kind = rng.random()
    if kind < 0.1:  # some untouched valid files, so "ok" is exercised too
        return struct.pack("<Q", len(header := _dump(("pairs", pairs)).encode())) + header + data
    for _ in range(rng.choice([1, 1, 1, 2])):
        pairs, data = rng.choice(STRUCT_MUTATIONS)(rng, pairs, data)
    header = _dump(("pairs", pairs)).encode()
    if kind < 0.3:
        header = b_text(rng, header)
    blob_data = data
    if 0.3 <= kind < 0.45:
        return b_file(rng, header, blob_data)
    # The writer pads the header to 8 bytes with spaces; do so sometimes.
    if rng.random() < 0.3:
        header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + blob_data


def reference(path: Path) -> tuple[bool, dict | None]:
    """What safe_open makes of the file: (reads every tensor, {name: (dtype, shape)})."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            out = {}
            for key in fh.keys():
                fh.get_tensor(key)
                sl = fh.get_slice(key)
                out[key] = (sl.get_dtype(), tuple(sl.get_shape()))
            return True, out
    except Exception:  # noqa: BLE001 - any refusal of the reference reader is the verdict
        return False, None


def test_header_verdict_matches_safe_open_on_mutated_headers(tmp_path):
    verdicts: Counter[tuple[bool, bool]] = Counter()
    mismatches = []
    for seed in range(N_CASES):
        path = tmp_path / f"case{seed}.safetensors"
        path.write_bytes(build_case(seed))
        ref_ok, ref_tensors = reference(path)
        try:
            hdr = read_safetensors_header(path)
            ours_ok = True
        except BrokenModelError as exc:
            ours_ok = False
            assert path.name in str(exc)
        verdicts[(ref_ok, ours_ok)] += 1
        if ref_ok != ours_ok:
            mismatches.append((seed, ref_ok, path.read_bytes()[:300]))
        elif ours_ok:
            assert {t.name: (t.dtype, t.shape) for t in hdr.tensors} == ref_tensors, seed
        path.unlink()
    assert not mismatches, mismatches[:5]
    # The mutations must produce both verdicts in bulk, or the comparison proves little.
    assert verdicts[(True, True)] > N_CASES // 8, verdicts
    assert verdicts[(False, False)] > N_CASES // 2, verdicts


@pytest.mark.parametrize("value", [1, 2.5, True, None, ["a"], {"a": "b"}])
def test_non_string_metadata_is_listed_broken(tiny_models, tmp_path, value):
    import shutil

    root = tmp_path / "root"
    folder = shutil.copytree(tiny_models["llama"], root / "meta-model")
    weights = folder / "model.safetensors"
    blob = weights.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    header["__metadata__"] = dict(header.get("__metadata__") or {}, bad=value)
    text = json.dumps(header).encode()
    weights.write_bytes(struct.pack("<Q", len(text)) + text + blob[8 + n:])
    entry = ModelStore([root], cache_path=None).get("meta-model")
    assert reference(weights)[0] is False
    assert entry.status == "broken"
    assert "__metadata__" in entry.problem
    assert "model.safetensors" in entry.problem
