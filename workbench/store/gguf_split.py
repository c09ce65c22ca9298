"""GGUF files split into parts by llama.cpp's ``gguf-split`` (``name-00001-of-00003.gguf``).

A split model is one store entry over all its parts: parameters and size are
summed over the parts (each part holds a share of the tensors; the first also
holds the metadata), loose parts are never entries of their own, and a missing
part makes the entry broken, naming the missing file.

transformers 5 reads one GGUF file (``load_gguf_checkpoint`` opens only the file
it is given), so a split model cannot be loaded as it is: its entry is not
``ok``, and its problem says how to merge the parts into one file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# llama.cpp's LLAMA_SPLIT format and gguf-py's SHARD_NAME_FORMAT: "{prefix}-{no:05d}-of-{count:05d}.gguf".
SPLIT_NAME = re.compile(r"^(?P<base>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


@dataclass(frozen=True)
class SplitName:
    base: str
    number: int  # 1-based, as in the file name
    count: int

    def part(self, number: int) -> str:
        return f"{self.base}-{number:05d}-of-{self.count:05d}.gguf"

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.part(i) for i in range(1, self.count + 1))


def split_name(filename: str) -> SplitName | None:
    """``"m-00002-of-00003.gguf"`` -> ``SplitName("m", 2, 3)``; ``None`` for a file that is not a part."""
    m = SPLIT_NAME.match(filename)
    if not m:
        return None
    number, count = int(m["no"]), int(m["count"])
    if count < 1 or not 1 <= number <= count:
        return None
    return SplitName(m["base"], number, count)


def merge_hint(first: str, base: str) -> str:
    """What to do with a split GGUF that transformers cannot load."""
    return (f"merge the parts into one file with llama.cpp's `llama-gguf-split --merge {first} {base}.gguf` "
            f"(then remove the parts), or load it with llama.cpp")


def group_candidates(paths: list[Path]) -> list[Path]:
    """Keep one path per split model (its lowest-numbered part present); other paths pass through."""
    out: list[Path] = []
    seen: set[tuple[str, int]] = set()
    for p in sorted(paths, key=lambda p: p.name):
        s = split_name(p.name) if p.suffix == ".gguf" and not p.is_dir() else None
        if s is None:
            out.append(p)
        elif (s.base, s.count) not in seen:
            seen.add((s.base, s.count))
            out.append(p)
    return sorted(out, key=lambda p: p.name.lower())
