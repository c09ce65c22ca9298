"""The endpoint registry: one JSON file shared by the CLI, kernels and the app.

The file (setting ``endpoints_file``, default ``$XDG_DATA_HOME/workbench/endpoints.json``,
beside the user store) is read and rewritten under an exclusive ``flock`` on a
sidecar lock file, and replaced atomically (``os.replace``), so concurrent
``workbench serve`` calls never lose each other's records and a reader never sees
half a file.

It holds the API keys of the engines the workbench started (each engine's own fresh
secret), so it is the owner's alone: written mode 0600 (its lock file too, its folder
0700 when created), and a file that is not a regular file, is owned by another user,
or is readable or writable by group or others is refused, never read or written.
Remote endpoints' keys are never written: only the names of their variables.

Example:
    >>> reg = EndpointRegistry()  # doctest: +SKIP
    >>> reg.add_remote("team-llama", "https://llm.example.org/v1", api_key_env="TEAM_LLM_KEY")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .._bounded_read import loads
from ..errors import ConfigError, EndpointNotFoundError
from . import process
from .endpoint import REMOTE, Endpoint

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Bytes of registry file read (thousands of endpoints fit in a fraction of it).
MAX_REGISTRY_BYTES = 16 << 20


def registry_path() -> Path:
    """The registry file named by the settings (``endpoints_file``)."""
    from ..config import get_settings

    return Path(get_settings().endpoints_file).expanduser()


@dataclass(frozen=True)
class EndpointStatus:
    """An endpoint and what is known about it now.

    Attributes:
        state: ``"running"`` (its engine process is alive), ``"exited"`` (the workbench
            started it and it is gone), or ``"remote"`` (not ours; not probed).
        orphaned: a non-detached engine whose starting process is gone (a kernel that
            was killed before it could stop it): stop it with ``workbench endpoints stop``.
    """

    endpoint: Endpoint
    state: str
    orphaned: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {**self.endpoint.to_dict(), "state": self.state, "orphaned": self.orphaned}


def normalize_base_url(url: str) -> str:
    """``http://host:8000`` -> ``http://host:8000/v1``; a trailing slash dropped.

    Raises:
        ConfigError: not an http(s) URL.
    """
    parsed = urlparse(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(f"{url!r} is not an http(s) URL", hint="give the server's base URL, e.g. "
                          "http://gpu-box:8000/v1")
    base = url.strip().rstrip("/")
    return base if parsed.path.rstrip("/").endswith("/v1") else base + "/v1"


def check_name(name: str) -> str:
    """``name`` itself when it can name an endpoint (and a file beside the registry).

    Raises:
        ConfigError: anything but a letter or digit followed by letters, digits and ``. _ @ + -``
            (128 characters at most).
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"endpoint name {name!r} is not usable",
                          hint="use letters, digits and . _ @ + - (at most 128 characters)")
    return name


class EndpointRegistry:
    """Read and change the registry file; every change is one locked read-modify-write."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else registry_path()

    # -- file ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _lock_file(self) -> Iterator[None]:
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(f"the endpoint registry's lock file {lock_path} cannot be opened "
                              f"({exc.strerror or exc})", hint="remove it if it is a link or not yours",
                              path=lock_path) from None
        with os.fdopen(fd, "r+") as lock:
            self._check_mine(lock_path, os.fstat(fd))
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @staticmethod
    def _check_mine(path: Path, st: os.stat_result) -> None:
        """Refuse a registry file (or its lock) that is not a regular file of ours, private to us.

        Raises:
            ConfigError: naming the file, its owner and mode, and what to do.
        """
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"the endpoint registry {path} is not a regular file",
                              hint="remove it; the workbench recreates it", path=path)
        if st.st_uid != os.geteuid():
            try:
                import pwd

                owner = pwd.getpwuid(st.st_uid).pw_name
            except (KeyError, ImportError):
                owner = f"uid {st.st_uid}"
            raise ConfigError(f"the endpoint registry {path} belongs to {owner}, not to you, so it is not read "
                              "(it holds engines' keys, and someone else could have written it)",
                              hint="check the endpoints_file setting (WORKBENCH_ENDPOINTS_FILE) and remove the file",
                              path=path, owner_uid=st.st_uid)
        if st.st_mode & 0o077:
            raise ConfigError(f"the endpoint registry {path} is readable or writable by other users "
                              f"(mode {stat.S_IMODE(st.st_mode):04o}), so it is not used: it holds engines' keys",
                              hint=f"chmod 600 {path} (and stop the engines it lists if others may have read it)",
                              path=path, mode=stat.S_IMODE(st.st_mode))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, dict[str, Any]]]:
        if not self.path.parent.is_dir():
            # Nothing registered yet: a read must not create folders; a first write does.
            records: dict[str, dict[str, Any]] = {}
            yield records
            if records:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                with self._lock_file():
                    self._write({**self._read(), **records})
            return
        with self._lock_file():
            records = self._read()
            before = json.dumps(records, sort_keys=True)
            yield records
            if json.dumps(records, sort_keys=True) != before:
                self._write(records)

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConfigError(f"the endpoint registry {self.path} cannot be opened ({exc.strerror or exc})",
                              hint="remove it if it is a symbolic link; the workbench recreates it",
                              path=self.path) from None
        try:
            self._check_mine(self.path, os.fstat(fd))
            with os.fdopen(fd, "rb", closefd=False) as fh:
                raw = fh.read(MAX_REGISTRY_BYTES + 1)
        finally:
            os.close(fd)
        try:
            if len(raw) > MAX_REGISTRY_BYTES:
                raise ValueError(f"larger than {MAX_REGISTRY_BYTES} bytes")
            doc = loads(raw.decode("utf-8"), path=self.path)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"the endpoint registry {self.path} cannot be read: {exc}",
                              hint="fix or delete the file (it only lists endpoints)", path=self.path) from None
        endpoints = doc.get("endpoints") if isinstance(doc, dict) else None
        return {k: v for k, v in (endpoints or {}).items() if isinstance(v, dict)}

    def _write(self, records: dict[str, dict[str, Any]]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".endpoints-", suffix=".json", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({"version": 1, "endpoints": records}, fh, indent=2, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    # -- queries ---------------------------------------------------------------------------------

    def list(self) -> list[Endpoint]:
        """Every registered endpoint, by name.

        Raises:
            ConfigError: the registry file cannot be read or parsed.
        """
        with self._locked() as records:
            return [Endpoint.from_dict(records[k]) for k in sorted(records)]

    def get(self, name: str) -> Endpoint:
        """The endpoint called ``name``.

        Raises:
            EndpointNotFoundError: listing the names there are.
        """
        with self._locked() as records:
            record = records.get(name)
            known = sorted(records)
        if record is None:
            raise EndpointNotFoundError(
                f"no endpoint called {name!r} in {self.path}",
                hint=(f"known: {', '.join(known)}" if known else "none is registered")
                + "; start one with `workbench serve MODEL` or add one with `workbench endpoints add NAME URL`",
                endpoint=name)
        return Endpoint.from_dict(record)

    def statuses(self) -> list[EndpointStatus]:
        """Every endpoint with its state now (local engines are checked by PID and start time)."""
        out = []
        for ep in self.list():
            if ep.is_remote:
                out.append(EndpointStatus(ep, "remote"))
                continue
            running = process.is_running(ep.pid, ep.pid_create_time)
            orphaned = running and not ep.detach and not process.is_running(ep.started_by_pid)
            out.append(EndpointStatus(ep, "running" if running else "exited", orphaned))
        return out

    # -- changes ---------------------------------------------------------------------------------

    def put(self, endpoint: Endpoint, *, replace: bool = False) -> Endpoint:
        """Record ``endpoint``; an existing record of that name is replaced only when ``replace``
        or when it is a local engine that has exited.

        Raises:
            ConfigError: the name is taken by a remote endpoint or a running engine.
        """
        check_name(endpoint.name)
        with self._locked() as records:
            old = records.get(endpoint.name)
            if old is not None and not replace:
                prev = Endpoint.from_dict(old)
                if prev.is_remote or process.is_running(prev.pid, prev.pid_create_time):
                    raise ConfigError(f"an endpoint called {endpoint.name!r} already exists ({prev.base_url})",
                                      hint="choose another name, or stop/remove it first "
                                           f"(`workbench endpoints stop {endpoint.name}`)", endpoint=endpoint.name)
            records[endpoint.name] = endpoint.record()
        return endpoint

    def add_remote(self, name: str, url: str, *, api_key_env: str | None = None, model: str | None = None,
                   replace: bool = False, engine_kind: str | None = None) -> Endpoint:
        """Register an OpenAI-compatible server by URL (vLLM, TGI, Ollama, LM Studio, llama.cpp...).

        Args:
            api_key_env: the environment variable that will hold the key when the
                endpoint is used; the key itself is never stored.
            engine_kind: the engine behind the URL when known (``"vllm"``, ``"transformers"``,
                ``"llamacpp"``: a key of :data:`~workbench.serve.engines.ENGINE_EXTENSIONS`), so
                that its own request fields (vLLM's ``top_k``...) are sent; ``None``: unknown,
                OpenAI fields only.

        Raises:
            ConfigError: a bad name, URL, variable name or engine kind, or the name is taken.
        """
        from .engines import ENGINE_EXTENSIONS

        if api_key_env is not None and not _ENV.match(api_key_env):
            raise ConfigError(f"{api_key_env!r} is not an environment variable name",
                              hint="give the variable's NAME (e.g. TEAM_LLM_KEY), never the key itself")
        if engine_kind is not None and engine_kind not in ENGINE_EXTENSIONS:
            raise ConfigError(f"{engine_kind!r} is not an engine kind the workbench knows the requests of",
                              hint=f"use one of {', '.join(ENGINE_EXTENSIONS)}, or leave it unknown "
                                   "(OpenAI fields only)", endpoint=name)
        ep = Endpoint(check_name(name), REMOTE, normalize_base_url(url), model=model, api_key_env=api_key_env,
                      engine_kind=engine_kind)
        return self.put(ep, replace=replace)

    def remove(self, name: str) -> Endpoint:
        """Forget ``name`` (it does not stop anything: see :func:`workbench.serve.stop`).

        Raises:
            EndpointNotFoundError: no such endpoint.
        """
        ep = self.get(name)
        with self._locked() as records:
            records.pop(name, None)
        return ep
