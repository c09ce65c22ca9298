"""What an endpoint is: one OpenAI-compatible server the workbench started or was told about.

An :class:`Endpoint` crosses boundaries (the registry file, ``--json`` output, the
UI), so it is a frozen dataclass of raw values. A remote endpoint never holds its
API key: only the name of the environment variable that holds one (``api_key_env``).
An engine the workbench started has its own fresh key (``secret``): it is kept in
the owner's registry file (mode 0600) and sent by the workbench's clients, and it
is left out of ``repr``, ``to_dict`` (every ``--json`` document, the UI, logs) on purpose.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from .._records import Record

EndpointEngine = Literal["vllm", "transformers", "llamacpp", "remote"]
"""What serves an endpoint: an engine the workbench started, or ``"remote"`` (added by URL)."""
#: ``engine`` of an endpoint the workbench did not start.
REMOTE: EndpointEngine = "remote"


@dataclass(frozen=True)
class Endpoint(Record):
    """One OpenAI-compatible endpoint.

    Attributes:
        name: the registry name (``"SmolLM2-135M-Instruct"``, ``"team-llama"``).
        engine: ``"vllm"``, ``"transformers"``, or ``"remote"`` for one added by URL.
        base_url: the OpenAI base URL, ending in ``/v1`` (``"http://127.0.0.1:8000/v1"``).
        pid: the engine's process ID (also its process group ID); ``None`` for remote ones.
        devices: where the engine runs (``("cuda:0", "cuda:1")``, ``("cpu",)``); empty for remote ones.
        model: the model name the server expects in requests; ``None`` means "ask ``/v1/models``".
        api_key_env: the environment variable holding the API key; ``None`` for no key.
        started_by_pid: the process that started the engine (a kernel, the CLI).
        detach: whether the engine outlives the process that started it.
        log_path: the engine's log file.
        store_model: the store entry served (``None`` for remote ones).
        pid_create_time: the engine process's start time (psutil's ``create_time``, seconds
            since the epoch), so a recycled PID is never taken for the engine.
        started_s: when the engine was started (seconds since the epoch).
        ready_s: seconds from start until it answered.
        estimated_bytes: the memory the fit check counted for it (``None`` for remote ones).
        lease_ids: the GPU leases held for it (one per GPU), released when it stops.
        argv: the engine's command line (no secrets: keys travel in the environment only).
        engine_kind: for a remote endpoint, the engine behind it as the user named it
            (``workbench endpoints add NAME URL --engine vllm``: one of
            :data:`workbench.serve.engines.ENGINE_EXTENSIONS`); ``None``: unknown. Decides
            which non-OpenAI request fields it is sent (see :attr:`request_engine`).
        secret: the API key of an engine the workbench started (see the module doc); never in
            ``repr`` or ``to_dict``.
    """

    _json_exclude = ("secret",)

    name: str
    engine: EndpointEngine
    base_url: str
    pid: int | None = None
    devices: tuple[str, ...] = ()
    model: str | None = None
    api_key_env: str | None = None
    started_by_pid: int | None = None
    detach: bool = False
    log_path: str | None = None
    store_model: str | None = None
    pid_create_time: float | None = None
    started_s: float | None = None
    ready_s: float | None = None
    estimated_bytes: int | None = None
    lease_ids: tuple[str, ...] = ()
    argv: tuple[str, ...] = ()
    engine_kind: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    secret: str | None = field(default=None, repr=False, compare=False)

    @property
    def is_remote(self) -> bool:
        return self.engine == REMOTE

    @property
    def request_engine(self) -> str:
        """The engine whose request rules apply: the one the workbench started, else a remote
        endpoint's :attr:`engine_kind`, else ``"remote"`` (unknown: OpenAI fields only)."""
        if self.is_remote:
            return self.engine_kind or REMOTE
        return self.engine

    def api_key(self) -> str:
        """The key requests carry: the engine's own ``secret``, else ``api_key_env``'s value now,
        else a placeholder (the openai client refuses an empty key; servers without
        authentication ignore it)."""
        if self.secret:
            return self.secret
        if self.api_key_env:
            return os.environ.get(self.api_key_env, "") or "EMPTY"
        return "EMPTY"

    def auth_headers(self) -> dict[str, str]:
        """``{"Authorization": "Bearer KEY"}`` when there is a key (for ``/metrics`` scrapes and probes)."""
        key = self.api_key()
        return {"Authorization": f"Bearer {key}"} if key != "EMPTY" else {}

    def record(self) -> dict[str, Any]:
        """What the registry file keeps: :meth:`to_dict` plus the secret (the file is the owner's, 0600)."""
        doc = self.to_dict()
        if self.secret:
            doc["secret"] = self.secret
        return doc

    def with_(self, **changes: Any) -> Endpoint:
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Endpoint:
        """Build from a registry record; unknown keys are ignored (a newer workbench wrote them)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in doc.items() if k in known}
        values["devices"] = tuple(values.get("devices") or ())
        values["argv"] = tuple(values.get("argv") or ())
        values["lease_ids"] = tuple(values.get("lease_ids") or ())
        if not isinstance(values.get("secret"), str):
            values.pop("secret", None)
        return cls(**values)
