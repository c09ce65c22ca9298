"""Settings, in Jupyter's idiom: a traitlets ``Configurable`` named ``WorkbenchSettings``.

Values come, in increasing priority, from

1. the trait defaults below;
2. ``jupyter_workbench_config.py`` / ``jupyter_workbench_config.json`` in every folder of the
   Jupyter config path (``jupyter --paths``), read with traitlets' own loaders, the lowest
   priority folder first as Jupyter does (within a folder the ``.json`` file wins);
3. a ``config`` passed in (a Jupyter server hands over its own config, so
   ``c.WorkbenchSettings.store_path`` in ``jupyter_server_config.py`` works too);
4. the ``WORKBENCH_*`` environment variables in :data:`ENV_VARS`;
5. keyword arguments.

In a config file::

    c.WorkbenchSettings.store_path = "/home/me/models:/shared/models"
    c.WorkbenchSettings.telemetry_interval_s = 0.5

A value a trait refuses (the telemetry interval outside 0.25 to 60 s, a number that is not
one) raises :class:`~workbench.errors.ConfigError` naming the setting and where it came from.

To add a setting: declare a trait with ``help=`` and ``.tag(config=True)`` on
:class:`WorkbenchSettings`, and, where it has an environment variable, add one row to
:data:`ENV_VARS`.

Example:
    >>> from workbench.config import WorkbenchSettings
    >>> WorkbenchSettings(store_path="/data/models").store_roots()[0].as_posix()
    '/data/models'
"""

from __future__ import annotations

import logging
import math
import os
import threading
from pathlib import Path
from typing import Any

from traitlets import Bool, Float, Int, List, TraitError, Unicode, default, validate
from traitlets.config import Config, Configurable
from traitlets.config.loader import ConfigFileNotFound, JSONFileConfigLoader, PyFileConfigLoader

from .errors import ArgumentTypeError, ConfigError

logger = logging.getLogger(__name__)

#: The config file's base name; ``.py`` and ``.json`` are both read in every config folder.
CONFIG_FILE_NAME = "jupyter_workbench_config"

#: Bounds of the telemetry interval, in seconds (NVML costs ~1 ms a query; below 0.25 s the
#: plots cannot draw faster anyway, above a minute the live panels look dead).
MIN_TELEMETRY_INTERVAL_S = 0.25
MAX_TELEMETRY_INTERVAL_S = 60.0

#: Setting name -> environment variable that overrides it. One row per setting that has one.
ENV_VARS: dict[str, str] = {
    "store_path": "WORKBENCH_STORE",
    "cache_dir": "WORKBENCH_CACHE_DIR",
    "telemetry_interval_s": "WORKBENCH_TELEMETRY_INTERVAL",
    "telemetry_history_s": "WORKBENCH_TELEMETRY_HISTORY",
    "lease_dir": "WORKBENCH_LEASE_DIR",
    "leases_enabled": "WORKBENCH_LEASES",
    "lease_admin_group": "WORKBENCH_LEASE_ADMIN_GROUP",
    "idle_unload_s": "WORKBENCH_IDLE_UNLOAD_S",
    "vllm_command": "WORKBENCH_VLLM_COMMAND",
    "llamacpp_command": "WORKBENCH_LLAMACPP_COMMAND",
    "endpoints_file": "WORKBENCH_ENDPOINTS_FILE",
}


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / fallback


def default_user_store() -> Path:
    """``$XDG_DATA_HOME/workbench/models``, i.e. ``~/.local/share/workbench/models`` by default."""
    return _xdg("XDG_DATA_HOME", ".local/share") / "workbench" / "models"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/workbench``, i.e. ``~/.cache/workbench`` by default."""
    return _xdg("XDG_CACHE_HOME", ".cache") / "workbench"


def config_paths() -> list[str]:
    """The Jupyter config folders, highest priority first (``jupyter --paths``, ``config:``)."""
    from jupyter_core.paths import jupyter_config_path

    return list(jupyter_config_path())


class WorkbenchSettings(Configurable):
    """The workbench's settings. Every trait can be set from a Jupyter config file.

    Args:
        config: a traitlets ``Config`` read on top of the config files, for example a Jupyter
            server's own (``serverapp.config``); its ``WorkbenchSettings`` section applies.
        **kwargs: setting values; they win over everything else.

    Attributes:
        sources: setting name -> where its value came from (a config file's path, ``"the
            config passed in"``, ``"environment variable WORKBENCH_STORE"``, ``"keyword
            argument"``); settings left at their default are absent.

    Raises:
        ConfigError: a value the setting refuses, naming the setting and its source; a config
            file that cannot be read, naming the file.
        ArgumentTypeError: a keyword argument that is not a setting (also a ``TypeError``).
    """

    store_path = Unicode(
        help=(
            "Model store roots separated by os.pathsep. The first is the writable user store; "
            "the others are read-only shared stores (for example a team's model folder on JupyterHub). "
            "Environment: WORKBENCH_STORE. Default: $XDG_DATA_HOME/workbench/models."
        ),
    ).tag(config=True)

    cache_dir = Unicode(
        help="Where the store's header index cache lives. Environment: WORKBENCH_CACHE_DIR. "
        "Default: $XDG_CACHE_HOME/workbench.",
    ).tag(config=True)

    telemetry_interval_s = Float(
        1.0,
        help=f"Seconds between telemetry samples ({MIN_TELEMETRY_INTERVAL_S} to {MAX_TELEMETRY_INTERVAL_S}). "
        "Environment: WORKBENCH_TELEMETRY_INTERVAL. Default: 1.",
    ).tag(config=True)

    telemetry_history_s = Int(
        86400,
        help="How many seconds of telemetry the ring buffers keep (positive). "
        "Environment: WORKBENCH_TELEMETRY_HISTORY. Default: one day.",
    ).tag(config=True)

    lease_dir = Unicode(
        help=(
            "Folder of the GPU lease files, shared by every user of the machine (see README, "
            "'Deploying on JupyterHub'); created with the sticky bit (mode 1777) if missing. "
            "Environment: WORKBENCH_LEASE_DIR. Default: workbench-leases in the system temp folder."
        ),
    ).tag(config=True)

    leases_enabled = Bool(
        True,
        help=(
            "Take a GPU lease for every GPU load and engine, and refuse the load when none can be taken "
            "(the GPU is promised to others, the lease folder cannot be trusted or written). Turn it off only "
            "on a machine with a single user: loads then take no lease and check only NVML's free memory. "
            "Environment: WORKBENCH_LEASES (true/false). Default: true."
        ),
    ).tag(config=True)

    lease_admin_group = Unicode(
        "",
        help=(
            "A Unix group whose members may release other users' GPU leases with "
            "`workbench leases release ID --force` (root always may). In the sticky lease folder only root can "
            "delete another user's file, so a member's forced release revokes the lease instead: readers whose "
            "settings name the same group ignore it, and its holder gives it up at its next heartbeat. "
            "Environment: WORKBENCH_LEASE_ADMIN_GROUP. Default: none (root only)."
        ),
    ).tag(config=True)

    idle_unload_s = Float(
        0.0,
        help=(
            "Unload a model that has not generated for this many seconds, releasing its memory and GPU "
            "lease; 0 turns it off (the default). On a shared JupyterHub, 1800 (30 min) is a good value. "
            "Environment: WORKBENCH_IDLE_UNLOAD_S. Default: 0."
        ),
    ).tag(config=True)

    @default("lease_dir")
    def _default_lease_dir(self) -> str:
        import tempfile

        return os.path.join(tempfile.gettempdir(), "workbench-leases")

    @validate("idle_unload_s")
    def _check_idle_unload(self, proposal: Any) -> float:
        value = proposal["value"]
        if not (math.isfinite(value) and value >= 0):
            raise TraitError(f"idle_unload_s must be 0 (off) or a positive number of seconds, not {value!r}")
        return value

    vllm_command = Unicode(
        "vllm",
        help=(
            "How to start vLLM for `workbench serve --engine vllm`: a command line, split like a shell does "
            "(e.g. '/opt/vllm-env/bin/vllm'). vLLM pins its own torch and CUDA, so it usually lives in its own "
            "environment. Environment: WORKBENCH_VLLM_COMMAND. Default: vllm (on PATH)."
        ),
    ).tag(config=True)

    llamacpp_command = Unicode(
        "",
        help=(
            "How to serve GGUF entries for `workbench serve --engine llamacpp`: a llama.cpp `llama-server` command "
            "line (e.g. '/opt/llama.cpp/bin/llama-server'; it has parallel slots for concurrent clients). Empty: "
            "llama-cpp-python's own server (python -m llama_cpp.server), which answers one request at a time. "
            "Environment: WORKBENCH_LLAMACPP_COMMAND. Default: empty."
        ),
    ).tag(config=True)

    endpoints_file = Unicode(
        help=(
            "The endpoint registry (JSON): engines `workbench serve` started and remote endpoints added with "
            "`workbench endpoints add`. API keys are never stored there, only the names of the environment "
            "variables that hold them. Environment: WORKBENCH_ENDPOINTS_FILE. "
            "Default: $XDG_DATA_HOME/workbench/endpoints.json."
        ),
    ).tag(config=True)

    dcgm_urls = List(
        Unicode(),
        help=(
            "NVIDIA DCGM exporter pages (e.g. ['http://node-a:9400/metrics']) whose GPUs the Telemetry tab plots "
            "beside the local ones, one line per host/gpu. Default: none."
        ),
    ).tag(config=True)

    chat_template_timeout_s = Float(
        10.0,
        help="Seconds a model's chat template may take to render one batch of prompts before the worker "
        "rendering it is stopped and the prompt refused (templates are code from the model folder). Default: 10.",
    ).tag(config=True)

    chat_template_memory_bytes = Int(
        1 << 30,
        help="Bytes of memory a chat template may allocate while rendering, above what the rendering worker "
        "holds at rest; past it the render fails and the worker restarts. Default: 1 GiB.",
    ).tag(config=True)

    server_read_timeout_s = Float(
        30.0,
        help="Seconds a Jupyter server's workbench REST request waits for its read of the store, the lease "
        "folder or the devices (run off the server's event loop, one at a time per kind) before answering "
        "503; the read goes on in the background and the next request waits for it. Shared folders are other "
        "users' files, so a read may be slow on purpose. Default: 30.",
    ).tag(config=True)

    serve_ready_timeout_s = Float(
        600.0,
        help="Seconds `workbench serve` waits for an engine to answer before stopping it and reporting its log. "
        "Default: 600.",
    ).tag(config=True)

    @default("endpoints_file")
    def _default_endpoints_file(self) -> str:
        return str(default_user_store().parent / "endpoints.json")

    @default("store_path")
    def _default_store_path(self) -> str:
        return str(default_user_store())

    @default("cache_dir")
    def _default_cache_dir(self) -> str:
        return str(default_cache_dir())

    @validate("telemetry_interval_s")
    def _check_interval(self, proposal: Any) -> float:
        value = proposal["value"]
        if not (math.isfinite(value) and MIN_TELEMETRY_INTERVAL_S <= value <= MAX_TELEMETRY_INTERVAL_S):
            raise TraitError(
                f"telemetry_interval_s must be between {MIN_TELEMETRY_INTERVAL_S} and "
                f"{MAX_TELEMETRY_INTERVAL_S} seconds, not {value!r}"
            )
        return value

    @validate("server_read_timeout_s")
    def _check_read_timeout(self, proposal: Any) -> float:
        value = proposal["value"]
        if not (math.isfinite(value) and value > 0):
            raise TraitError(f"server_read_timeout_s must be a positive number of seconds, not {value!r}")
        return value

    @validate("telemetry_history_s")
    def _check_history(self, proposal: Any) -> int:
        if proposal["value"] <= 0:
            raise TraitError(f"telemetry_history_s must be a positive number of seconds, not {proposal['value']!r}")
        return proposal["value"]

    def __init__(self, config: Config | None = None, **kwargs: Any) -> None:
        names = set(self.class_trait_names(config=True))
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise ArgumentTypeError(f"{', '.join(unknown)} is not a workbench setting",
                                    hint=f"settings: {', '.join(sorted(names))}")
        super().__init__()
        layers = [*_file_layers(), *_config_layer(config, "the config passed in"), *_env_layers(self),
                  ("keyword argument", dict(kwargs))]
        final: dict[str, tuple[Any, str]] = {}
        for source, values in layers:
            for name, value in values.items():
                if name not in names:
                    logger.warning("%s: %s is not a workbench setting (settings: %s)",
                                   source, name, ", ".join(sorted(names)))
                    continue
                final[name] = (value, source)
        # Each value is set on its own so that a refusal names the one source it came from.
        for name, (value, source) in final.items():
            try:
                setattr(self, name, value)
            except TraitError as exc:
                raise ConfigError(f"{str(exc).rstrip('.')} (from {source})", hint="change it there",
                                  setting=name, source=source) from None
        self.sources = {name: source for name, (_, source) in final.items()}

    def store_roots(self) -> list[Path]:
        """The store roots in priority order; the first is the writable user store.

        Raises:
            ConfigError: ``store_path`` names no folder at all.
        """
        parts = [p for p in self.store_path.split(os.pathsep) if p.strip()]
        if not parts:
            raise ConfigError("the store path is empty", hint="set WORKBENCH_STORE to at least one folder")
        return [Path(p).expanduser() for p in parts]


def _section(cfg: Config, source: str) -> dict[str, Any]:
    if "Workbench" in cfg and set(cfg["Workbench"]) & set(WorkbenchSettings.class_trait_names(config=True)):
        logger.warning("%s: c.Workbench.* is the old name of the settings; it is ignored, "
                       "use c.WorkbenchSettings.* instead", source)
    return dict(cfg["WorkbenchSettings"]) if "WorkbenchSettings" in cfg else {}


def _config_layer(cfg: Config | None, source: str) -> list[tuple[str, dict[str, Any]]]:
    return [(source, _section(cfg, source))] if cfg is not None else []


def _file_layers() -> list[tuple[str, dict[str, Any]]]:
    """``(file path, its WorkbenchSettings section)`` for every config file, lowest priority first."""
    layers = []
    for folder in reversed(config_paths()):
        for loader_class in (PyFileConfigLoader, JSONFileConfigLoader):
            ext = ".py" if loader_class is PyFileConfigLoader else ".json"
            loader = loader_class(CONFIG_FILE_NAME + ext, path=folder, log=logger)
            try:
                cfg = loader.load_config()
            except ConfigFileNotFound:
                continue
            except Exception as exc:  # a user's Python file can raise anything
                path = os.path.join(folder, CONFIG_FILE_NAME + ext)
                raise ConfigError(f"cannot read the config file {path} ({type(exc).__name__}: {exc})",
                                  hint="fix or remove it", path=path) from None
            source = loader.full_filename or os.path.join(folder, CONFIG_FILE_NAME + ext)
            layers.append((source, _section(cfg, source)))
    return layers


def _env_layers(settings: WorkbenchSettings) -> list[tuple[str, dict[str, Any]]]:
    """One layer per ``WORKBENCH_*`` variable that is set and not empty, parsed by its trait."""
    layers = []
    traits = settings.traits()
    for name, var in ENV_VARS.items():
        raw = os.environ.get(var, "")
        if not raw.strip():
            continue
        source = f"environment variable {var}"
        try:
            value = traits[name].from_string(raw)
        except ValueError:
            kind = {"Float": "a number", "Int": "a whole number", "Bool": "true or false"}.get(type(traits[name]).__name__, "valid")
            raise ConfigError(f"{var}={raw!r} is not {kind} (the setting {name})",
                              hint=traits[name].help.split(" Environment:")[0], setting=name,
                              source=source) from None
        layers.append((source, {name: value}))
    return layers


_lock = threading.Lock()
_settings: WorkbenchSettings | None = None


def get_settings() -> WorkbenchSettings:
    """The process-wide settings, built on first use (never at import time).

    Raises:
        ConfigError: see :class:`WorkbenchSettings`.
    """
    global _settings
    with _lock:
        if _settings is None:
            _settings = WorkbenchSettings()
        return _settings


def reset_settings() -> None:
    """Forget the process-wide settings so the next use re-reads files and environment (tests use this)."""
    global _settings
    with _lock:
        _settings = None
