"""Settings, in Jupyter's idiom: a traitlets ``Configurable``.

Values come, in increasing priority, from the defaults below (which read the
``WORKBENCH_*`` environment variables when the settings are first built), a
Jupyter config file (``c.Workbench.store_path = ...`` in ``jupyter_server_config.py``
or ``jupyter_workbench_config.py``), and keyword arguments.

Example:
    >>> from workbench.config import Workbench
    >>> Workbench(store_path="/data/models").store_roots()[0].as_posix()
    '/data/models'
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from traitlets import Float, Int, Unicode, default
from traitlets.config import Configurable

from .errors import ConfigError


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / fallback


def default_user_store() -> Path:
    """``$XDG_DATA_HOME/workbench/models``, i.e. ``~/.local/share/workbench/models`` by default."""
    return _xdg("XDG_DATA_HOME", ".local/share") / "workbench" / "models"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/workbench``, i.e. ``~/.cache/workbench`` by default."""
    return _xdg("XDG_CACHE_HOME", ".cache") / "workbench"


class Workbench(Configurable):
    """The workbench's settings. Every trait can be set from a Jupyter config file."""

    store_path = Unicode(
        help=(
            "Model store roots separated by os.pathsep. The first is the writable user store; "
            "the others are read-only shared stores (for example a team's model folder on JupyterHub). "
            "Default: $WORKBENCH_STORE, else $XDG_DATA_HOME/workbench/models."
        ),
    ).tag(config=True)

    cache_dir = Unicode(
        help="Where the store's header index cache lives. Default: $WORKBENCH_CACHE_DIR, else $XDG_CACHE_HOME/workbench.",
    ).tag(config=True)

    telemetry_interval_s = Float(
        1.0,
        help="Seconds between telemetry samples (0.25 to 60). Default: $WORKBENCH_TELEMETRY_INTERVAL or 1.",
    ).tag(config=True)

    telemetry_history_s = Int(
        86400,
        help="How many seconds of telemetry the ring buffers keep. Default: one day.",
    ).tag(config=True)

    @default("store_path")
    def _default_store_path(self) -> str:
        return os.environ.get("WORKBENCH_STORE") or str(default_user_store())

    @default("cache_dir")
    def _default_cache_dir(self) -> str:
        return os.environ.get("WORKBENCH_CACHE_DIR") or str(default_cache_dir())

    @default("telemetry_interval_s")
    def _default_interval(self) -> float:
        raw = os.environ.get("WORKBENCH_TELEMETRY_INTERVAL")
        if not raw:
            return 1.0
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(
                f"WORKBENCH_TELEMETRY_INTERVAL={raw!r} is not a number", hint="set it to seconds, e.g. 0.5"
            ) from None
        return value

    def store_roots(self) -> list[Path]:
        """The store roots in priority order; the first is the writable user store."""
        parts = [p for p in self.store_path.split(os.pathsep) if p.strip()]
        if not parts:
            raise ConfigError("the store path is empty", hint="set WORKBENCH_STORE to at least one folder")
        return [Path(p).expanduser() for p in parts]


_lock = threading.Lock()
_settings: Workbench | None = None


def get_settings() -> Workbench:
    """The process-wide settings, built on first use (never at import time)."""
    global _settings
    with _lock:
        if _settings is None:
            _settings = Workbench()
        return _settings


def reset_settings() -> None:
    """Forget the process-wide settings so the next use re-reads the environment (tests use this)."""
    global _settings
    with _lock:
        _settings = None
