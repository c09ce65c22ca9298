"""Bounded reads of files the workbench does not trust: model folders, shared stores, other users' files.

On a shared machine a file may have been shaped to hurt whoever reads it: a FIFO
that blocks ``open()`` forever, a symlink to ``/dev/zero``, a 2 GB ``config.json``,
JSON nested 200,000 levels deep (``RecursionError`` in every reader up the stack).
Every read of such a file goes through here and costs bounded time and memory:

* opened with ``O_NONBLOCK`` (a FIFO or device never blocks the open) and, where
  asked, ``O_NOFOLLOW``; only a regular file is read, and where asked only one of a given
  owner (``fstat`` after the open, so a swap between a check and the open changes nothing);
* at most ``max_bytes`` are read: a longer file is refused, never half-parsed;
* JSON is checked for nesting depth on the text, cheaply, before ``json.loads``
  builds anything (:func:`json_depth_exceeds`).

Why our own code: this is the product's safety rule (ARCHITECTURE.md section 2,
principle 14), a few lines over ``os.open`` and ``json``; no library bundles it.

Example:
    >>> import json, tempfile
    >>> with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
    ...     _ = fh.write('{"a": [1, 2]}')
    >>> load_json(fh.name, max_bytes=1024)
    {'a': [1, 2]}
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from .errors import UntrustedFileError

#: Deepest nesting accepted in JSON from a model folder or a shared file. Real configs nest a
#: handful of levels; Python's own parser gives up near 1,000 with a ``RecursionError``.
MAX_JSON_DEPTH = 64

_CHUNK = 1 << 20
# A JSON string (escapes included), written so the regex engine never backtracks.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _refuse(path: Path, reason: str, **context: Any) -> UntrustedFileError:
    return UntrustedFileError(f"{path.name}: {reason}", path=path, reason=reason, **context)


def open_regular(path: str | os.PathLike[str], *, follow_symlinks: bool = True,
                 owner_uid: int | None = None) -> tuple[int, os.stat_result]:
    """Open ``path`` for reading without blocking, and check it is a regular file (of ``owner_uid``).

    Returns:
        ``(fd, its fstat)``; the caller closes ``fd``.

    Raises:
        UntrustedFileError: not a regular file (FIFO, device, folder), a symlink when
            ``follow_symlinks`` is false, or owned by another uid than ``owner_uid`` (``owner_uid``
            in its context: the file's).
        OSError: it cannot be opened (missing, no permission).
    """
    p = Path(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(p, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_symlinks:
            raise _refuse(p, "is a symbolic link, which is not followed here") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a folder" if stat.S_ISDIR(st.st_mode) else \
                "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else \
                "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file"
            raise _refuse(p, f"is {kind}, not a regular file")
        if owner_uid is not None and st.st_uid != owner_uid:
            raise _refuse(p, f"belongs to uid {st.st_uid}, not to uid {owner_uid}", owner_uid=st.st_uid)
        # Reads of a regular file never block; keep the descriptor ordinary for callers.
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_bytes(path: str | os.PathLike[str], max_bytes: int, *, follow_symlinks: bool = True,
               owner_uid: int | None = None) -> bytes:
    """The whole of a regular file of at most ``max_bytes`` bytes (owned by ``owner_uid`` where given).

    The size is checked by reading (``max_bytes + 1`` at most), not only by ``st_size``:
    files under ``/proc`` report 0 and hold more.

    Raises:
        UntrustedFileError: not a regular file, not ``owner_uid``'s, or larger than ``max_bytes``
            (``size_bytes`` and ``max_bytes`` in its context).
        OSError: it cannot be opened or read.
    """
    p = Path(path)
    fd, st = open_regular(p, follow_symlinks=follow_symlinks, owner_uid=owner_uid)
    try:
        if st.st_size > max_bytes:
            raise _too_large(p, st.st_size, max_bytes)
        chunks: list[bytes] = []
        got = 0
        while got <= max_bytes:
            chunk = os.read(fd, min(_CHUNK, max_bytes + 1 - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        if got > max_bytes:
            raise _too_large(p, max(got, st.st_size), max_bytes)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _too_large(path: Path, size: int, max_bytes: int) -> UntrustedFileError:
    from ._format import format_bytes

    over = "more than " if size == max_bytes + 1 else ""
    return _refuse(path, f"is {over}{format_bytes(size)}, larger than the {format_bytes(max_bytes)} "
                         "the workbench reads for a file of this kind", size_bytes=size, max_bytes=max_bytes)


def read_text(path: str | os.PathLike[str], max_bytes: int, *, follow_symlinks: bool = True,
              owner_uid: int | None = None) -> str:
    """:func:`read_bytes` decoded as UTF-8.

    Raises:
        UntrustedFileError: as :func:`read_bytes`, or the bytes are not UTF-8.
    """
    raw = read_bytes(path, max_bytes, follow_symlinks=follow_symlinks, owner_uid=owner_uid)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _refuse(Path(path), f"is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def json_depth_exceeds(text: str, max_depth: int = MAX_JSON_DEPTH) -> bool:
    """Whether JSON ``text`` nests arrays and objects deeper than ``max_depth``.

    Linear time in C-implemented steps (regex, ``accumulate``), no recursion: strings are
    removed first (brackets inside them do not count), then the running depth of the
    brackets left is summed. A text with at most ``max_depth`` brackets is answered from
    two counts. Malformed JSON may give any answer here; ``json.loads`` refuses it after.
    """
    if text.count("[") + text.count("{") <= max_depth:
        return False
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0) > max_depth


def loads(text: str, *, path: str | os.PathLike[str], max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads(text)`` after the depth check; errors name ``path``.

    Raises:
        UntrustedFileError: nested deeper than ``max_depth``, or not valid JSON.
    """
    p = Path(path)
    if json_depth_exceeds(text, max_depth):
        raise _refuse(p, f"nests JSON deeper than {max_depth} levels, which no real file of this kind does")
    try:
        return json.loads(text)
    except RecursionError:  # only reachable with a max_depth above the interpreter's limit
        raise _refuse(p, "nests JSON too deeply to parse") from None
    except ValueError as exc:
        raise _refuse(p, f"is not valid JSON ({exc})") from None


def load_json(path: str | os.PathLike[str], max_bytes: int, *, max_depth: int = MAX_JSON_DEPTH,
              follow_symlinks: bool = True, owner_uid: int | None = None) -> Any:
    """A JSON file read with every bound: regular file (of ``owner_uid``), ``max_bytes``, UTF-8, ``max_depth``.

    Raises:
        UntrustedFileError: any bound broken, or not valid JSON; the message names the file.
        OSError: it cannot be opened or read (``FileNotFoundError`` when it is not there).
    """
    return loads(read_text(path, max_bytes, follow_symlinks=follow_symlinks, owner_uid=owner_uid), path=path,
                 max_depth=max_depth)
