"""Store roots as configured: is each one a folder this process can use?

What no command can work with raises (a root that is a file, a user store that cannot be
read, or cannot be written when a command writes). A shared root that is missing or
unreadable only hides its models: on JupyterHub the team's folder may be an unmounted
network share on one node, and users still want their own models; it is returned as a
:class:`RootProblem` for the front end to show as a warning.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ReadOnlyStoreError, StoreRootError

_WHERE = "WORKBENCH_STORE (or c.WorkbenchSettings.store_path)"


@dataclass(frozen=True)
class StoreRoot:
    """One folder the store lists models from.

    Attributes:
        path: the folder.
        writable: the user store (the first root) is written to; shared roots are only read.
    """

    path: Path
    writable: bool


@dataclass(frozen=True)
class RootProblem:
    """A shared root whose models cannot be listed; everything else still works."""

    path: Path
    problem: str

    def __str__(self) -> str:
        return self.problem


def outside_root(root: Path, path: Path) -> str | None:
    """Where ``path`` really is (links resolved) when that is outside ``root``; ``None`` when inside.

    ARCHITECTURE.md section 3: a name never resolves to a path outside its root, symlinks included.

    Example:
        >>> outside_root(Path("/srv/models"), Path("/srv/models/a")) is None
        True
    """
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return None if os.path.commonpath([real_root, real]) == real_root else real


def _file_in_the_way(path: Path) -> Path | None:
    """``path`` itself or the nearest existing ancestor, when that is not a folder."""
    for p in (path, *path.parents):
        if p.exists():
            return None if p.is_dir() else p
    return None


def ensure_writable(path: Path) -> None:
    """Create the user store if needed and prove it writable by creating and removing a file.

    A real write is the only honest test: permission bits say nothing to root, read-only
    mounts and ACLs.

    Raises:
        StoreRootError: the path or one of its parents is a file.
        ReadOnlyStoreError: the folder cannot be created or written; names it.
    """
    blocker = _file_in_the_way(path)
    if blocker is not None:
        raise StoreRootError(f"the user store {path} cannot be a folder: {blocker} is a file",
                             hint=f"set {_WHERE} to a folder", path=path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ReadOnlyStoreError(
            f"cannot write to the user store {path} ({exc.strerror or type(exc).__name__})",
            hint=f"set {_WHERE} to a folder you can write, shared folders after it", path=path,
        ) from None


def check_roots(roots: Sequence[StoreRoot], *, write: bool = False) -> list[RootProblem]:
    """Check the configured roots before a command uses them.

    Args:
        roots: the store's roots, the user store first.
        write: the command writes to the user store (seed, import, delete).

    Returns:
        The shared roots that are missing or unreadable (their models are not listed).

    Raises:
        StoreRootError: a root is a file (or lies under one), or the user store cannot be read.
        ReadOnlyStoreError: ``write`` and the user store cannot be written.
    """
    problems = []
    for i, root in enumerate(roots):
        path, kind = root.path, "user store" if i == 0 else "shared store"
        blocker = _file_in_the_way(path)
        if blocker is not None:
            where = "is a file" if blocker == path else f"lies under {blocker}, which is a file"
            raise StoreRootError(f"the {kind} {path} {where}, not a folder",
                                 hint=f"set {_WHERE} to folders separated by {os.pathsep!r}", path=path)
        readable = path.is_dir() and os.access(path, os.R_OK | os.X_OK)
        if i == 0:
            if path.exists() and not readable:
                raise StoreRootError(f"cannot read the user store {path}",
                                     hint=f"fix its permissions or set {_WHERE} to a folder of yours", path=path)
            if write:
                ensure_writable(path)
        elif not path.exists():
            problems.append(RootProblem(path, f"the shared store {path} does not exist, so its models are not "
                                              f"listed: check that it is mounted, or remove it from {_WHERE}"))
        elif not readable:
            problems.append(RootProblem(path, f"cannot read the shared store {path}, so its models are not "
                                              "listed: ask its owner for read access"))
    return problems
