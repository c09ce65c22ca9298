"""Engine processes: start one in its own process group, wait until it answers, stop it.

An engine runs as ``start_new_session=True``, so its PID is also its process
group ID and everything it spawns (vLLM's workers, Ray's raylets on this host)
is stopped with it by one ``killpg``. Stopping checks the PID still belongs to
the engine (its start time, by :class:`~workbench._process_identity.ProcessIdentity`,
the one rule leases use too) before it signals anything, so a recycled PID is never
killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._child_python import SAFE_PATH_ENV
from .._process_identity import ProcessIdentity
from ..errors import ConfigError, EngineStartError, ListenerNotOursError
from .listener import group_members

#: Bytes of an engine's log quoted in errors.
LOG_TAIL_BYTES = 4000
#: Seconds between readiness polls.
POLL_S = 0.25
#: Seconds an engine gets to exit after SIGTERM before SIGKILL.
STOP_GRACE_S = 10.0

# Engines this process started: their Popen objects, so their exit status is reaped.
_children: dict[int, subprocess.Popen[bytes]] = {}


def log_tail(path: str | os.PathLike[str] | None, max_bytes: int = LOG_TAIL_BYTES) -> str:
    """The last ``max_bytes`` of a log file, decoded leniently; ``""`` when there is none."""
    if not path:
        return ""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def start(argv: Sequence[str], *, env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session (its own process group), stdout and stderr to ``log_path``.

    The engine runs in ``log_path``'s folder (the user's own, 0700), with ``PYTHONSAFEPATH=1``: a
    ``python -m`` engine started from a folder other users can write imports nothing from it
    (:mod:`workbench._child_python`).

    Raises:
        EngineStartError: the executable cannot be run (the log names why).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        try:
            proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env={**env, **SAFE_PATH_ENV}, start_new_session=True, close_fds=True,
                                    cwd=log_path.parent)
        except OSError as exc:
            raise EngineStartError(f"cannot run {argv[0]}: {exc.strerror or exc}",
                                   hint="check the engine's command (`vllm_command` setting, or the transformers "
                                        "install)", argv=list(argv), log_path=str(log_path), log_tail="") from None
    _children[proc.pid] = proc
    return proc


def create_time(pid: int) -> float | None:
    """psutil's start time of ``pid``, or ``None`` when there is no such process (or it is hidden)."""
    return ProcessIdentity.of(pid).create_time_s


def is_running(pid: int | None, pid_create_time: float | None = None) -> bool:
    """Whether ``pid`` is not proven gone (:meth:`ProcessIdentity.alive`: not a zombie, the same start
    time when one is given; a process whose start time is hidden from us counts as running)."""
    if not pid:
        return False
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        return False
    return ProcessIdentity(pid, create_time_s=pid_create_time).alive()


def is_ours(pid: int | None, pid_create_time: float | None = None) -> bool:
    """Whether ``pid`` is proven to be the process recorded (``"running"``): what signalling it needs."""
    if not pid:
        return False
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        return False
    return ProcessIdentity(pid, create_time_s=pid_create_time).status() == "running"


def stop_group(pid: int, pid_create_time: float | None = None, *, grace_s: float = STOP_GRACE_S) -> bool:
    """Stop the engine ``pid`` and its process group: SIGTERM, then SIGKILL after ``grace_s``.

    Only signals when ``pid`` is proven to be the engine (same start time, see
    :meth:`ProcessIdentity.status`) and leads its own group (it was started with
    ``start_new_session``). Returns whether it was running.
    """
    running = is_ours(pid, pid_create_time)
    try:
        pgid = os.getpgid(pid) if running else None
    except ProcessLookupError:
        pgid = None
    # A dead engine's workers keep its group alive; Linux does not hand out a PID that
    # is still some group's ID, so members of group ``pid`` are the engine's leftovers.
    # (Only while no process holds that PID: then it cannot be someone else's group.)
    leftovers = not running and create_time(pid) is None and bool(group_members(pid))
    if (running and pgid == pid) or leftovers:
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and (is_running(pid) or group_members(pid)):
            _reap(pid)
            time.sleep(0.1)
        if is_running(pid) or group_members(pid):
            _signal_group(pid, signal.SIGKILL)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and (is_running(pid) or group_members(pid)):
                _reap(pid)
                time.sleep(0.05)
    _reap(pid)
    return running


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):  # gone, or (a recycled group) not ours to signal
        pass


def _reap(pid: int) -> None:
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        _children.pop(pid, None)


def _get(url: str, timeout_s: float, api_key: str | None = None) -> bytes | None:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        req = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 (loopback URL we built)
            return resp.read(1 << 20) if resp.status == 200 else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _host_port(base_url: str) -> tuple[str, int]:
    from urllib.parse import urlparse

    parsed = urlparse(base_url)
    return parsed.hostname or "127.0.0.1", int(parsed.port or 80)


def require_listener_is_ours(pid: int, base_url: str, *, what: str) -> bool:
    """Whether the engine ``pid`` owns every socket listening where ``base_url`` connects; ``False``
    while nothing listens yet.

    Raises:
        ListenerNotOursError: another process holds the address (named: PID and command where
            visible, its owner's uid always on Linux).
    """
    from .listener import check_listener

    host, port = _host_port(base_url)
    found = check_listener(pid, host, port)
    if found.foreign:
        raise ListenerNotOursError(
            f"{host}:{port}, where {what} should answer, is held by {found.describe_foreign()}, not by the engine "
            f"the workbench started (PID {pid}); nothing was sent there",
            hint="another user took the port: start it again (a new free port is chosen) or pass another --port",
            port=port, engine_pid=pid, holders=[h.describe() for h in found.foreign])
    return found.ours


def wait_ready(proc: subprocess.Popen[bytes], base_url: str, *, timeout_s: float, log_path: Path,
               what: str, api_key: str | None = None, health: bool = True) -> tuple[float, bytes]:
    """Wait until the engine ``proc`` owns the listening socket, then poll ``{root}/health`` and
    ``{base_url}/models`` (sending ``api_key``) until both answer 200 (``health=False``: an engine
    without ``/health``, llama-cpp-python's server, is ready when ``/models`` answers).

    Nothing is sent to the port before its listener is proven to be the engine's (see
    :mod:`workbench.serve.listener`): on a shared machine another user may bind the port
    while the engine loads (it is on the engine's command line).

    Returns:
        ``(seconds waited, the /v1/models body)``.

    Raises:
        ListenerNotOursError: another process holds the address (the caller stops the engine).
        EngineStartError: the engine exited, or did not answer within ``timeout_s``
            (the caller stops it); the error carries the log tail.
    """
    t0 = time.monotonic()
    root = base_url.rsplit("/v1", 1)[0]
    healthy = False
    while True:
        code = proc.poll()
        # Checked first: an engine that died because another process took its port is reported
        # with that process named, not only with its own "address already in use".
        ours = require_listener_is_ours(proc.pid, base_url, what=what)
        if code is not None:
            raise EngineStartError(
                f"{what} exited with status {code} before it answered; the end of its log ({log_path}):\n"
                f"{log_tail(log_path)}",
                hint="fix what the log says, then start it again", log_path=str(log_path),
                log_tail=log_tail(log_path), returncode=code)
        if ours:
            healthy = healthy or not health or _get(root + "/health", 2.0) is not None
            if healthy:
                body = _get(base_url + "/models", 5.0, api_key)
                if body is not None:
                    return time.monotonic() - t0, body
        if time.monotonic() - t0 > timeout_s:
            raise EngineStartError(
                f"{what} did not answer on {base_url} within {timeout_s:.0f} s; the end of its log ({log_path}):\n"
                f"{log_tail(log_path)}",
                hint="it was stopped; raise serve_ready_timeout_s if the model needs longer to load",
                log_path=str(log_path), log_tail=log_tail(log_path), returncode=None)
        time.sleep(POLL_S)


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``host:port`` now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def require_free_port(host: str, port: int) -> None:
    """Refuse a port something already listens on, before an engine spends minutes loading only
    to fail binding it (or, worse, before another server there answers the readiness probe
    in the engine's place).

    Raises:
        ConfigError: ``port`` on ``host`` cannot be bound; names both.
    """
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As uvicorn and vLLM bind: a port in TIME_WAIT is usable, one with a listener is not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            from .listener import holders

            held = "; ".join(h.describe() for h in holders(host, port))
            raise ConfigError(f"port {port} on {host} is already in use ({exc.strerror or exc})"
                              + (f": {held}" if held else ""),
                              hint="choose another --port, or leave it out to get a free one",
                              port=port) from None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the OS picks it)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def verify_engine(endpoint: Any) -> None:
    """Before a request to an engine the workbench started: it is still the process recorded, and it
    holds every socket listening where its base URL connects (a remote endpoint is not checked).

    Raises:
        EndpointUnreachableError: the engine is gone, or nothing listens (nothing was sent).
        ListenerNotOursError: another process holds its address (nothing was sent).
    """
    if endpoint.is_remote or not endpoint.pid:
        return
    from ..errors import EndpointUnreachableError

    where = f"endpoint {endpoint.name!r} ({endpoint.base_url})"
    hint = (f"start it again (`workbench serve {endpoint.store_model}`) or remove it "
            f"(`workbench endpoints stop {endpoint.name}`)")
    if not is_ours(endpoint.pid, endpoint.pid_create_time):
        raise EndpointUnreachableError(f"the engine of {where} (PID {endpoint.pid}) is no longer running; nothing "
                                       "was sent to its port", hint=hint, endpoint=endpoint.name,
                                       base_url=endpoint.base_url)
    if not require_listener_is_ours(endpoint.pid, endpoint.base_url, what=where):
        raise EndpointUnreachableError(f"the engine of {where} is running but not listening; nothing was sent",
                                       hint=hint, endpoint=endpoint.name, base_url=endpoint.base_url)
