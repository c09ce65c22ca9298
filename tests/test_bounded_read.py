"""Bounded reads of untrusted files: never block, never read past the bound, depth checked before parsing."""

from __future__ import annotations

import json
import os
import random
import threading

import pytest

from workbench._bounded_read import json_depth_exceeds, load_json, read_bytes
from workbench.errors import UntrustedFileError


def _depth(value) -> int:
    """Nesting depth of a parsed JSON value, the reference (the root container is depth 1)."""
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _random_json(rng: random.Random, depth: int = 0):
    kind = rng.random()
    if depth > 12 or kind < 0.3:
        # Strings full of brackets, quotes and escapes must not count.
        return rng.choice(["[[[", "]]}", '"{"', "\\", "a\\\"[b", "x" * rng.randint(0, 5), 3, None, 1.5, True])
    if kind < 0.65:
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(["[", "}", "k", '"q"', "\\"]) + str(i): _random_json(rng, depth + 1)
            for i in range(rng.randint(0, 4))}


def test_depth_check_agrees_with_the_parsed_depth():
    rng = random.Random(7)
    for _ in range(2000):
        doc = _random_json(rng)
        text = json.dumps(doc, indent=rng.choice([None, 1]), ensure_ascii=rng.random() < 0.5)
        depth = _depth(doc)
        for limit in (max(0, depth - 1), depth, depth + 1):
            assert json_depth_exceeds(text, limit) is (depth > limit), (text, limit)


def test_deep_json_is_refused_before_parsing(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(UntrustedFileError, match="deeper than 64"):
        load_json(path, 1 << 20)


def test_a_fifo_never_blocks_the_reader(tmp_path):
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    result: list[BaseException] = []
    t = threading.Thread(target=lambda: result.append(pytest.raises(UntrustedFileError, read_bytes, fifo, 100).value),
                         daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "reading a FIFO blocked"
    assert "FIFO" in str(result[0])


def test_reads_stop_at_the_bound_even_when_the_size_says_zero(tmp_path):
    """Files under /proc report st_size 0 and hold more: the bound is enforced by reading."""
    proc = "/proc/self/maps"
    assert os.stat(proc).st_size == 0
    with pytest.raises(UntrustedFileError, match="larger than"):
        read_bytes(proc, 16)
    big = tmp_path / "big.json"
    with open(big, "wb") as fh:
        fh.truncate(10 << 20)
    with pytest.raises(UntrustedFileError, match="larger than"):
        read_bytes(big, 1 << 20)
    link = tmp_path / "link.json"
    link.symlink_to("/dev/zero")
    with pytest.raises(UntrustedFileError, match="device"):
        read_bytes(link, 1 << 20)
    with pytest.raises(UntrustedFileError, match="symbolic link"):
        read_bytes(link, 1 << 20, follow_symlinks=False)
