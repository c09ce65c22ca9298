"""Filling a shared store root: an administrator's import, readable by everyone, never half-visible.

On a JupyterHub the shared roots (every ``WORKBENCH_STORE`` entry after the first)
are read-only to the workbench: it lists and loads from them, and never writes,
deletes, or keeps lock files or index caches there (the header index lives in each
user's ``cache_dir``). Filling one is an explicit administrator's operation::

    workbench store import /downloads/Mistral-7B-Instruct --root /srv/models

which works only where the administrator may write, and:

* copies (never hard-links) into a hidden ``.import-<name>-*`` folder *inside that
  root*, then renames it into place in one ``rename(2)``: the same file system, so a
  user listing the root meanwhile sees either no entry or the whole model, never part
  of one (listings skip dot-folders);
* sets folders to :data:`SHARED_DIR_MODE` (``0755``) and files to
  :data:`SHARED_FILE_MODE` (``0644``) before the rename, whatever the
  administrator's umask: every user (not only a group, since hub users rarely share
  one) may read, only the administrator may change or delete.

Example:
    >>> import_into_root("/downloads/tiny-llama", "/srv/models")  # doctest: +SKIP
    ModelEntry(name='tiny-llama', root=PosixPath('/srv/models'), ...)
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable
from pathlib import Path

from ..errors import ReadOnlyStoreError, WorkbenchError
from .entry import ModelEntry
from .importer import FileModes, import_path
from .store import ModelStore

#: Folders of an entry imported into a shared root: everyone may list and enter, the importer writes.
SHARED_DIR_MODE = 0o755
#: Files of an entry imported into a shared root: everyone may read, the importer writes.
SHARED_FILE_MODE = 0o644
#: What the importer gives an entry imported into a shared root.
SHARED_MODES = FileModes(SHARED_DIR_MODE, SHARED_FILE_MODE)


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def check_writable(root: str | os.PathLike[str]) -> Path:
    """The root, created if missing; refuses one this user may not write.

    Raises:
        ReadOnlyStoreError: naming the root and the user.
    """
    path = Path(root).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _read_only(path, exc.strerror or str(exc)) from None
    if not path.is_dir():
        raise _read_only(path, "it is not a folder")
    if not os.access(path, os.W_OK | os.X_OK):
        raise _read_only(path, f"{_who()} may not write there")
    return path


def _read_only(path: Path, why: str) -> ReadOnlyStoreError:
    return ReadOnlyStoreError(
        f"cannot import into the store root {path}: {why}",
        hint="importing into a shared root is for its administrators; without --root the model goes to your own store",
        path=path, root=path,
    )


def import_into_root(path: str | os.PathLike[str], root: str | os.PathLike[str], *, name: str | None = None,
                     check: bool = False, progress: Callable[[str], None] | None = None,
                     convert: bool = False) -> ModelEntry:
    """Import a model folder or GGUF file into ``root``, atomically, readable by every user.

    Args:
        path: a model folder (config.json and safetensors) or a ``.gguf`` file.
        root: the shared store root (created if missing and allowed).
        name: the entry's name (default the folder or file name).
        check: check the imported GGUF with a greedy generation.
        progress: called with one line per step (a file copied...).

    Raises:
        ReadOnlyStoreError: this user may not write in ``root``.
        ModelImportError, BrokenModelError, StoreError: as :func:`workbench.store.importer.import_path`.
    """
    target = check_writable(root)
    try:
        return import_path(path, ModelStore([target], cache_path=None), name=name, check=check,
                           progress=progress, modes=SHARED_MODES, convert=convert)
    except PermissionError as exc:
        if isinstance(exc, WorkbenchError):  # our own refusals (unsafe names, models) say what they mean
            raise
        raise _read_only(target, exc.strerror or str(exc)) from None
