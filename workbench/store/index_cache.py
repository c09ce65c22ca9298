"""A small on-disk cache of header summaries, keyed by path, size and mtime.

Listing a store of hundreds of models reads one header per weight file; on a
network file system (a JupyterHub's shared store) those reads dominate. The cache
keeps each file's summary under its absolute path and re-reads the header as soon
as the file's size or modification time changes. A missing, unreadable or
foreign cache is just empty: the cache is an optimisation, never a source of truth.

Results that depend on a file's content rather than on one file (what the skeleton
transformers builds from a ``config.json`` holds) are kept by a key the caller derives
from that content and the library versions (:meth:`IndexCache.get_keyed`).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

_VERSION = 11  # 3: headers checked as the reference reader does; 4: expert_params; 5: prequant; 6: GGUF dtype;
# 7: header_bytes (the per-entry bound); 8: results keyed by content (skeletons); 9: tensor names;
# 10: every file's tensors as one FileSummary (workbench/store/scan.py) under "tensors"; 11: tensor digests (coverage)


class IndexCache:
    """Header summaries by file. ``path=None`` keeps them in memory only.

    Example:
        >>> cache = IndexCache(None)
        >>> cache.get(Path(__file__), lambda: {"n": 1})
        {'n': 1}
    """

    def __init__(self, path: Path | None):
        self.path = path
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] | None = None
        self._keyed: dict[str, Any] = {}
        self._dirty = False
        self.hits = 0
        self.misses = 0

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._entries is None:
            self._entries = {}
            if self.path is not None:
                try:
                    with open(self.path, encoding="utf-8") as fh:
                        data = json.load(fh)
                    if data.get("version") == _VERSION and isinstance(data.get("files"), dict):
                        self._entries = data["files"]
                        if isinstance(data.get("keyed"), dict):
                            self._keyed = data["keyed"]
                except (OSError, ValueError, AttributeError):
                    pass
        return self._entries

    def peek(self, file: Path) -> dict[str, Any] | None:
        """The cached summary of ``file`` if it is still current, else ``None`` (nothing is computed)."""
        try:
            st = file.stat()
        except OSError:
            return None
        with self._lock:
            hit = self._load().get(os.path.abspath(file))
        return hit["summary"] if hit is not None and hit.get("stamp") == [st.st_size, st.st_mtime_ns] else None

    def get(self, file: Path, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The cached summary of ``file``, or ``compute()``'s result, stored for next time."""
        st = file.stat()
        key = os.path.abspath(file)
        stamp = [st.st_size, st.st_mtime_ns]
        with self._lock:
            hit = self._load().get(key)
            if hit is not None and hit.get("stamp") == stamp:
                self.hits += 1
                return hit["summary"]
        summary = compute()
        with self._lock:
            self._load()[key] = {"stamp": stamp, "summary": summary}
            self._dirty = True
            self.misses += 1
        return summary

    def peek_keyed(self, key: str) -> Any:
        """The result stored under ``key``, or ``None`` (nothing is computed)."""
        with self._lock:
            self._load()
            return self._keyed.get(key)

    def get_keyed(self, key: str, compute: Callable[[], Any]) -> Any:
        """The result stored under ``key`` (a content hash the caller derives), or ``compute()``'s, stored.

        ``compute`` may raise; nothing is stored then. Its result must be JSON.
        """
        with self._lock:
            self._load()
            if key in self._keyed:
                self.hits += 1
                return self._keyed[key]
        value = compute()
        with self._lock:
            self._keyed[key] = value
            self._dirty = True
            self.misses += 1
        return value

    def save(self) -> None:
        """Write the cache atomically if anything changed; failures are ignored (read-only home)."""
        with self._lock:
            if not self._dirty or self.path is None or self._entries is None:
                return
            live = {k: v for k, v in self._entries.items() if os.path.exists(k)}
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".index-", suffix=".json")
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump({"version": _VERSION, "files": live, "keyed": self._keyed}, fh)
                os.replace(tmp, self.path)
                self._dirty = False
            except OSError:
                pass
