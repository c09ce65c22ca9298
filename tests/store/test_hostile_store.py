"""Hostile model folders cost bounded time and memory, break only themselves, and take down nothing.

Issue 15, section 4: a ``config.json`` nested 200,000 levels deep made the whole listing
fail with ``RecursionError``; a cold listing of hostile entries took 70-79 s and 632 MB;
single entries with giant but legal headers took 14-39 s each. Every kind of damage below
is one ``broken`` entry naming its file, the good entries beside it still list ``ok``, and a
cold listing of a store of hundreds of entries, some hostile, runs in a child process
within a bound on time and peak memory.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from workbench.store import ModelStore, limits

DEEP = 200_000


def _link_copy(src: Path, dest: Path) -> Path:
    """A copy of a model folder made of hard links (no disk; a distinct path, so a distinct cache key)."""
    dest.mkdir(parents=True)
    for f in src.iterdir():
        os.link(f, dest / f.name)
    return dest


def _with(src: Path, root: Path, name: str, **files: bytes | str | None) -> Path:
    """A hard-linked copy of ``src`` with some files replaced (``None``: removed)."""
    dest = _link_copy(src, root / name)
    for fname, content in files.items():
        path = dest / fname.replace("__", "/")
        if path.exists():
            path.unlink()
        if content is None:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return dest


def _fresh(path: Path) -> Path:
    """``path`` unlinked first: the copies share inodes with the session's tiny models, never write through."""
    if path.exists() or path.is_symlink():
        path.unlink()
    return path


def _sparse(path: Path, size: int, head: bytes = b"") -> None:
    with open(_fresh(path), "wb") as fh:
        fh.write(head)
        fh.truncate(size)


def _deep_json(depth: int) -> str:
    return '{"model_type": "llama", "x": ' + "[" * depth + "]" * depth + "}"


def _legal_safetensors(path: Path, header_bytes: int) -> int:
    """A valid safetensors file of one-byte tensors whose JSON header is about ``header_bytes`` long."""
    per = len(json.dumps({"t.0000000": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}},
                         separators=(",", ":"))) + 8  # the offsets' digits
    n = header_bytes // per
    header = {f"t.{i:07d}": {"dtype": "U8", "shape": [1], "data_offsets": [i, i + 1]} for i in range(n)}
    raw = json.dumps(header, separators=(",", ":")).encode()
    with open(_fresh(path), "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        fh.write(b"\0" * n)
    assert abs(len(raw) - header_bytes) < header_bytes // 8, (len(raw), header_bytes)
    return len(raw)


def _gguf(path: Path, *, n_tensors: int = 0, kv: bytes = b"", n_kv: int = 0, tail: bytes = b"") -> None:
    with open(path, "wb") as fh:
        fh.write(b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + kv + tail)


def _gguf_str(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def _over_budget_shards(folder: Path) -> None:
    """Sparse shards, each declaring a header within the per-file bound, together past the entry's."""
    per = limits.SAFETENSORS_HEADER_MAX_BYTES - 1024
    count = limits.ENTRY_HEADER_MAX_BYTES // per + 1
    names = [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
    for n in names:
        _sparse(folder / n, per + 64, struct.pack("<Q", per) + b"{")
    _fresh(folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {f"w{i}": n for i, n in enumerate(names)}}))


def hostile_entries(root: Path, good: Path) -> dict[str, str]:
    """Plant one entry per kind of damage in ``root``; returns ``name -> a word its problem must hold``."""
    expect: dict[str, str] = {}

    # Configs and every other JSON transformers reads at load time.
    _with(good, root, "deep-config", **{"config.json": _deep_json(DEEP)})
    expect["deep-config"] = "config.json"
    _with(good, root, "deep-tokenizer-config", **{"tokenizer_config.json": _deep_json(DEEP)})
    expect["deep-tokenizer-config"] = "tokenizer_config.json"
    _with(good, root, "deep-generation-config", **{"generation_config.json": _deep_json(DEEP)})
    expect["deep-generation-config"] = "generation_config.json"
    _with(good, root, "deep-index", **{"model.safetensors.index.json": _deep_json(DEEP)})
    expect["deep-index"] = "model.safetensors.index.json"
    huge = _with(good, root, "huge-config")
    _sparse(huge / "config.json", limits.JSON_MAX_BYTES["config.json"] + 1, b'{"a": "')
    expect["huge-config"] = "config.json"
    cfg = json.loads((good / "config.json").read_text())
    _with(good, root, "wrong-types", **{"config.json": json.dumps({**cfg, "num_attention_heads": "four",
                                                                   "architectures": 7, "auto_map": ["x"]})})
    expect["wrong-types"] = "config.json"
    _with(good, root, "million-layers", **{"config.json": json.dumps({**cfg, "num_hidden_layers": 10**12})})
    expect["million-layers"] = "num_hidden_layers"

    # Chat templates: too large, too many, a FIFO where the template goes (open() would block forever).
    big = _with(good, root, "huge-template")
    _sparse(big / "chat_template.jinja", limits.TEMPLATE_MAX_BYTES + 1)
    expect["huge-template"] = "chat_template.jinja"
    many = _with(good, root, "many-templates")
    (many / "additional_chat_templates").mkdir()
    for i in range(limits.MAX_EXTRA_TEMPLATES + 1):
        (many / "additional_chat_templates" / f"t{i}.jinja").write_text("{{ messages }}")
    expect["many-templates"] = "additional_chat_templates"
    fifo = _with(good, root, "fifo-template")
    os.mkfifo(_fresh(fifo / "chat_template.jinja"))
    expect["fifo-template"] = "FIFO"
    # A FIFO where the config or the weights go: named as what it is, not as a missing file.
    fifo = _with(good, root, "fifo-config")
    os.mkfifo(_fresh(fifo / "config.json"))
    expect["fifo-config"] = "config.json is a FIFO"
    fifo = _with(good, root, "fifo-weights", **{"model.safetensors": None})
    os.mkfifo(fifo / "model.safetensors")
    expect["fifo-weights"] = "is a FIFO"

    # Safetensors headers: declared past the per-file bound, legal and past it, shards past the entry's.
    declared = _with(good, root, "giant-declared-header", **{"model.safetensors": None})
    _sparse(declared / "model.safetensors", 64 << 20, struct.pack("<Q", 60 << 20) + b"{")
    expect["giant-declared-header"] = "header"
    legal = _with(good, root, "giant-legal-header", **{"model.safetensors": None})
    assert _legal_safetensors(legal / "model.safetensors", limits.SAFETENSORS_HEADER_MAX_BYTES + (2 << 20)) \
        > limits.SAFETENSORS_HEADER_MAX_BYTES
    expect["giant-legal-header"] = "header"
    _over_budget_shards(_with(good, root, "too-many-header-bytes", **{"model.safetensors": None}))
    expect["too-many-header-bytes"] = "headers add up"

    # GGUF: counts, strings and arrays beyond any real file, and a header past the byte bound.
    _gguf(root / "gguf-many-keys.gguf", n_kv=10**9)
    expect["gguf-many-keys"] = "implausible"
    _gguf(root / "gguf-huge-string.gguf", n_kv=1, kv=_gguf_str(b"general.name") + struct.pack("<IQ", 8, 1 << 40))
    expect["gguf-huge-string"] = "string"
    _gguf(root / "gguf-huge-array.gguf", n_kv=1,
          kv=_gguf_str(b"tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 50_000_000))
    expect["gguf-huge-array"] = "array"
    chunk = b"x" * (4 << 20)
    keys = b"".join(_gguf_str(f"k{i}".encode()) + struct.pack("<I", 8) + _gguf_str(chunk)
                    for i in range(limits.GGUF_HEADER_MAX_BYTES // len(chunk) + 2))
    _gguf(root / "gguf-giant-header.gguf", n_kv=limits.GGUF_HEADER_MAX_BYTES // len(chunk) + 2, kv=keys)
    expect["gguf-giant-header"] = "header"

    # Folders: too many files, nested too deep.
    crowd = _with(good, root, "crowded-folder")
    (crowd / "junk").mkdir()
    for i in range(limits.MAX_FOLDER_FILES + 1):
        (crowd / "junk" / str(i)).touch()
    expect["crowded-folder"] = "files"
    deep = _with(good, root, "deep-folder")
    here = deep
    for _ in range(limits.MAX_FOLDER_DEPTH + 4):
        here = here / "d"
    here.mkdir(parents=True)
    expect["deep-folder"] = "levels"
    return expect


@pytest.fixture(scope="module")
def hostile_root(tiny_models, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A store root of 300 good entries (hard links: distinct paths, no disk), one entry per kind
    of damage, a huge one-line model card, and a legal header just under the per-file bound."""
    root = tmp_path_factory.mktemp("hostile") / "root"
    root.mkdir()
    good = tiny_models["llama"]
    for i in range(300):
        _link_copy(good, root / f"model-{i:03d}")
    expect = hostile_entries(root, good)
    card = _with(good, root, "huge-card")  # a license is looked for in one bounded line, not 256 MB
    _sparse(card / "README.md", 256 << 20, b"---\nlicense: mit")
    near = _with(good, root, "near-bound-header", **{"model.safetensors": None})
    assert _legal_safetensors(near / "model.safetensors", limits.SAFETENSORS_HEADER_MAX_BYTES - (1 << 20)) \
        < limits.SAFETENSORS_HEADER_MAX_BYTES
    return root, expect


def test_each_hostile_entry_is_broken_and_the_rest_lists(store_of, hostile_root):
    root, expect = hostile_root
    entries = {e.name: e for e in store_of(root).list()}
    assert all(entries[f"model-{i:03d}"].status == "ok" for i in range(300))
    card = entries["huge-card"]
    assert card.status == "ok"
    assert card.license.startswith("mit")
    assert len(card.license) < 4096
    assert entries["near-bound-header"].status == "ok"  # legal, under the bound: parsed and listed
    for name, word in expect.items():
        e = entries[name]
        assert e.status == "broken", (name, e.status, e.problem)
        assert word in e.problem, (name, e.problem)


def test_hostile_entry_costs_the_same_warm(tiny_models, tmp_path):
    """The entry-level header budget is not a cached file verdict: cold and warm listings agree."""
    root = tmp_path / "root"
    root.mkdir()
    good = tiny_models["llama"]
    _over_budget_shards(_with(good, root, "too-many-header-bytes", **{"model.safetensors": None}))
    store = ModelStore([root], cache_path=tmp_path / "index.json")
    cold = store.get("too-many-header-bytes")
    warm = ModelStore([root], cache_path=tmp_path / "index.json").get("too-many-header-bytes")
    assert cold.status == warm.status == "broken"
    assert "headers add up" in cold.problem
    assert cold.problem == warm.problem


def test_a_config_of_thousands_of_layers_has_no_estimate(tiny_models, tmp_path):
    """A skeleton past the module bound is abandoned: `estimate unavailable: REASON`, in bounded time."""
    root = tmp_path / "root"
    root.mkdir()
    good = tiny_models["llama"]
    cfg = json.loads((good / "config.json").read_text())
    _with(good, root, "four-thousand-layers",
          **{"config.json": json.dumps({**cfg, "num_hidden_layers": limits.SKELETON_MAX_LAYERS})})
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "workbench.cli", "store", "inspect", "four-thousand-layers", "--json"],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "WORKBENCH_STORE": str(root), "WORKBENCH_CACHE_DIR": str(tmp_path / "c")})
    took = time.perf_counter() - t0
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout)
    assert doc["status"] == "ok"
    assert doc["estimate"] is None
    assert "modules" in doc["estimate_problem"], doc["estimate_problem"]
    assert took < 120, took

    from workbench.errors import EstimateUnavailableError
    from workbench.store.layout import model_layout

    many = _with(good, root, "million-layers", **{"config.json": json.dumps({**cfg, "num_hidden_layers": 10**6})})
    t0 = time.perf_counter()
    with pytest.raises(EstimateUnavailableError) as info:
        model_layout(many)
    assert info.value.reason == "layers"
    assert time.perf_counter() - t0 < 10


_CHILD = textwrap.dedent("""
    import json, sys, time
    t0 = time.perf_counter()
    from workbench.store import ModelStore
    entries = ModelStore([sys.argv[1]], cache_path=None).list()
    took = time.perf_counter() - t0
    # VmHWM: this interpreter's own peak (ru_maxrss would carry the forking parent's over exec).
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"seconds": took, "max_rss_bytes": hwm * 1024,
                      "status": {e.name: e.status for e in entries}, "torch": "torch" in sys.modules}))
""")


def test_cold_listing_of_hundreds_of_entries_some_hostile_is_bounded(hostile_root):
    """Measured in a child process: a fresh interpreter, an empty header cache, peak RSS of its own."""
    root, expect = hostile_root
    out = subprocess.run([sys.executable, "-c", _CHILD, str(root)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads(out.stdout)
    status = doc["status"]
    assert len(status) == 300 + len(expect) + 2
    assert all(status[f"model-{i:03d}"] == "ok" for i in range(300))
    assert all(status[name] == "broken" for name in expect)
    assert status["near-bound-header"] == "ok"  # legal, under the bound: parsed and listed
    assert doc["torch"] is False  # listing never imports torch
    # The issue saw 70-79 s and 632 MB for a store of hostile entries; bounds generous for a busy 2-core machine.
    assert doc["seconds"] < 45, doc["seconds"]
    assert doc["max_rss_bytes"] < 200 * 2**20, doc["max_rss_bytes"]
