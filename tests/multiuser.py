"""Other OS users in tests, without creating accounts: forked children that drop to another uid.

A child made by :func:`run_as` (or :func:`start_as`) calls ``os.setgroups``,
``os.setresgid`` and ``os.setresuid`` right after ``fork``, so the kernel treats
everything it does (creating, opening, deleting files in a sticky folder) as that
user's. It inherits the parent's memory: the workbench modules and the fake GPU
installed by the test, so nothing has to be imported as that user (who could not
read this interpreter's files under ``/root``). What it returns comes back pickled;
an exception comes back as :class:`ChildFailed` with the type's name and message.

Tests run as root here (see the notes): :func:`require_root` fails a test, never skips it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import shutil
import signal
import stat
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: "nobody", and an unused uid: two users who are not root and not each other.
NOBODY = 65534
OTHER = 64999


class ChildFailed(Exception):
    """The child raised: ``type_name`` and ``message`` of what it raised."""

    def __init__(self, type_name: str, message: str) -> None:
        self.type_name, self.message = type_name, message
        super().__init__(f"{type_name}: {message}")


def require_root() -> None:
    assert os.geteuid() == 0, "these tests play other users with setresuid, which needs root (as CI runs them)"


@dataclass
class Child:
    """A running child: its PID, and the pipes to release it and to read its result."""

    pid: int
    result_fd: int
    go_fd: int | None

    def go(self) -> None:
        """Let the child (started with ``wait=True``) run its function."""
        if self.go_fd is not None:
            os.write(self.go_fd, b"g")
            os.close(self.go_fd)
            self.go_fd = None

    def result(self, timeout_s: float = 60.0) -> Any:
        """What the function returned; raises :class:`ChildFailed` for what it raised, ``TimeoutError``
        (after killing the child) when it did not finish in time."""
        chunks = []
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                left = deadline - time.monotonic()
                ready, _, _ = select.select([self.result_fd], [], [], max(0.0, left))
                if not ready:
                    os.kill(self.pid, signal.SIGKILL)
                    raise TimeoutError(f"child {self.pid} did not finish within {timeout_s} s")
                chunk = os.read(self.result_fd, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(self.result_fd)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
        if not chunks:
            raise ChildFailed("exit", f"child {self.pid} ended without a result (it could not become the user)")
        kind, value = pickle.loads(b"".join(chunks))
        if kind == "error":
            raise ChildFailed(*value)
        return value


def start_as(uid: int, fn: Callable[..., Any], *args: Any, gid: int | None = None,
             groups: tuple[int, ...] = (), wait: bool = False) -> Child:
    """Fork a child that becomes ``uid`` (group ``gid``, default the same number; supplementary
    ``groups``) and calls ``fn(*args)``; with ``wait`` it first waits for :meth:`Child.go`."""
    gid = uid if gid is None else gid
    r, w = os.pipe()
    go_r, go_w = os.pipe() if wait else (None, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "multi-threaded, use of fork()": the child execs nothing
        pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.close(r)
            if go_w is not None:
                os.close(go_w)
            os.setgroups(list(groups))
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            if go_r is not None:
                os.read(go_r, 1)
            try:
                out: tuple[str, Any] = ("ok", fn(*args))
                data = pickle.dumps(out)
            except BaseException as exc:  # noqa: BLE001 (everything goes back to the parent)
                data = pickle.dumps(("error", (type(exc).__name__, str(exc))))
            view = memoryview(data)
            while view:
                view = view[os.write(w, view):]
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    if go_r is not None:
        os.close(go_r)
    return Child(pid, r, go_w)


def run_as(uid: int, fn: Callable[..., Any], *args: Any, timeout_s: float = 60.0, **kw: Any) -> Any:
    """``fn(*args)`` as user ``uid`` in a forked child; its return value (see :func:`start_as`)."""
    return start_as(uid, fn, *args, **kw).result(timeout_s)


@contextlib.contextmanager
def shared_tmp() -> Iterator[Path]:
    """A folder under ``/tmp`` every user can reach (``tmp_path``'s parents are root's ``0700``),
    removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="wb-users-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def sticky_folder(path: Path) -> Path:
    """``path`` created by root with mode ``1777``, as an administrator makes the lease folder."""
    path.mkdir(exist_ok=True)
    os.chmod(path, 0o1777)
    assert stat.S_IMODE(path.stat().st_mode) == 0o1777
    return path
