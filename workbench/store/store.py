"""The model store: layered roots, listing, safe name resolution.

The first root is the user's writable store; later roots are read-only shared
stores (a team's model folder on JupyterHub). A name is unique across roots: the
first root that has it wins and later ones are listed as ``shadowed``.
"""

from __future__ import annotations

import os
import shutil
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..config import get_settings
from ..errors import ModelNotFoundError, ReadOnlyStoreError, UnsafeNameError
from .entry import ModelEntry, format_bytes
from .gguf_split import group_candidates
from .index_cache import IndexCache
from .roots import RootProblem, StoreRoot, check_roots, ensure_writable, outside_root
from .scan import Scanner, entry_name


@dataclass(frozen=True)
class DeletePlan:
    """What deleting an entry will free; nothing happens until :meth:`ModelStore.execute` runs it."""

    entry: ModelEntry
    frees_bytes: int

    def describe(self) -> str:
        return f"delete {self.entry.name} ({self.entry.path}), freeing {format_bytes(self.frees_bytes)}"


def check_name(name: str) -> str:
    """Refuse names that are not one plain entry of a root: separators, ``.``/``..``, NUL, hidden.

    Any other character is fine (spaces, accented letters, ``<b>&"'``): people name
    folders that way, and safety comes from resolving the name inside its root with
    symlinks followed (:meth:`ModelStore.get`), not from a character whitelist. A
    leading dot is refused because the listing skips hidden entries (in-progress
    imports are ``.import-*``).

    Raises:
        UnsafeNameError: with the name and what is wrong with it.
    """
    if not isinstance(name, str) or not name.strip() or name in (".", "..") or name.startswith(".") \
            or "/" in name or "\\" in name or os.sep in name or (os.altsep and os.altsep in name) \
            or "\0" in name or os.path.isabs(name):
        raise UnsafeNameError(
            f"model name {name!r} is not a plain name in the store",
            hint="use the folder or file name shown by `workbench store list` (one path component, "
                 "no '/', '\\' or leading '.')",
            name=name,
        )
    return name


def _same_name(a: str, b: str) -> bool:
    # A name typed as NFC matches a folder a Mac wrote in NFD ("é" as "e" + combining accent).
    return unicodedata.normalize("NFC", a) == unicodedata.normalize("NFC", b)


class ModelStore:
    """Layered model roots and what they hold.

    Args:
        roots: folders in priority order, the first writable. Default: the settings'
            ``store_path`` (``WORKBENCH_STORE`` or the XDG data folder).
        cache_path: the header index file; ``None`` keeps it in memory. Default:
            ``index.json`` in the settings' cache folder.

    Example:
        >>> store = ModelStore(["/home/me/models", "/shared/models"])  # doctest: +SKIP
        >>> [e.name for e in store.list() if e.ok]  # doctest: +SKIP
        ['SmolLM2-135M-Instruct']
    """

    def __init__(self, roots: Sequence[str | os.PathLike[str]] | None = None, cache_path: Path | None | str = "default"):
        settings = get_settings()
        paths = [Path(r).expanduser() for r in roots] if roots is not None else settings.store_roots()
        self.roots = [StoreRoot(p, writable=i == 0) for i, p in enumerate(paths)]
        if cache_path == "default":
            cache_path = Path(settings.cache_dir) / "index.json"
        self.cache = IndexCache(Path(cache_path) if cache_path is not None else None)

    @property
    def user_root(self) -> Path:
        return self.roots[0].path

    # -- listing ---------------------------------------------------------------------------

    def _candidates(self, root: Path) -> list[Path]:
        try:
            children = sorted(root.iterdir(), key=lambda p: p.name.lower())
        except OSError:  # a missing or unreadable root lists as empty; the others still list
            return []
        out = []
        for p in children:
            if p.name.startswith("."):
                continue  # hidden files and our own in-progress imports (.import-*)
            if p.is_dir() or (p.suffix == ".gguf" and p.is_file()):
                out.append(p)
        return group_candidates(out)  # a split GGUF is one candidate, not one per part

    def list(self) -> list[ModelEntry]:
        """Every entry in every root, broken and unsafe ones included, user store first."""
        seen: dict[str, Path] = {}
        entries = []
        for root in self.roots:
            scanner = Scanner(root.path, root.writable, self.cache)
            for path in self._candidates(root.path):
                e = scanner.entry(path)
                if e.name in seen:
                    e = replace(e, shadowed=True, shadowed_by=seen[e.name])
                seen.setdefault(e.name, e.path)
                entries.append(e)
        self.cache.save()
        return entries

    def get(self, name: str) -> ModelEntry:
        """The entry called ``name`` (the first root that has it wins).

        Raises:
            UnsafeNameError: the name could resolve outside its root.
            ModelNotFoundError: no root has it; the message lists what does exist.
        """
        check_name(name)
        for root in self.roots:
            for candidate in self._spellings(root.path, name):
                if not (candidate.is_dir() or (candidate.suffix == ".gguf" and candidate.is_file())):
                    continue
                real = outside_root(root.path, candidate)
                if real is not None:
                    raise UnsafeNameError(
                        f"{name} resolves to {real}, outside its store root {root.path}",
                        hint="copy the model into the store instead of linking it", name=name, path=candidate,
                    )
                entry = Scanner(root.path, root.writable, self.cache).entry(candidate)
                self.cache.save()
                return entry
        known = [entry_name(p) for r in self.roots for p in self._candidates(r.path)]
        hint = f"known models: {', '.join(sorted(set(known))[:10])}" if known else \
            "the store is empty: run `workbench store seed` or `workbench store import PATH`"
        raise ModelNotFoundError(f"no model named {name!r} in {', '.join(str(r.path) for r in self.roots)}",
                                 hint=hint, name=name)

    def _spellings(self, root: Path, name: str) -> list[Path]:
        exact = [root / name, root / f"{name}.gguf"]
        if any(p.exists() for p in exact):
            return exact
        # Otherwise a split GGUF's prefix, or the same name in another Unicode normal form.
        return [p for p in self._candidates(root) if _same_name(entry_name(p), name)] or exact

    # -- writing ---------------------------------------------------------------------------

    def check_roots(self, *, write: bool = False) -> list[RootProblem]:
        """Raise for roots no command can use; return the shared roots whose models are hidden.

        See :func:`workbench.store.roots.check_roots`.
        """
        return check_roots(self.roots, write=write)

    def writable_path(self, name: str) -> Path:
        """Where a new entry called ``name`` goes in the user store (created if missing).

        Raises:
            ReadOnlyStoreError: the user store cannot be created or written.
        """
        check_name(name)
        ensure_writable(self.user_root)
        return self.user_root / name

    def plan_delete(self, name: str) -> DeletePlan:
        """Plan deleting ``name`` from the user store; shared roots are read-only.

        Raises:
            ModelNotFoundError: no entry named ``name``.
            ReadOnlyStoreError: the entry is in a shared, read-only root.
        """
        entry = self.get(name)
        if not entry.writable:
            raise ReadOnlyStoreError(f"{name} is in the shared store {entry.root}, which is read-only",
                                     hint="ask the store's owner to remove it", name=name, path=entry.path,
                                     root=entry.root)
        return DeletePlan(entry, entry.size_bytes)

    def execute(self, plan: DeletePlan) -> int:
        """Carry out a :class:`DeletePlan`; returns the bytes freed."""
        path = plan.entry.path
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        return plan.frees_bytes
