"""Serve a store model: check it like a load, start an engine, wait until it answers, register it.

Example:
    >>> from workbench.serve import serve, stop
    >>> ep = serve("SmolLM2-135M-Instruct", engine="transformers")  # doctest: +SKIP
    >>> ep.base_url  # doctest: +SKIP
    'http://127.0.0.1:41873/v1'
    >>> stop(ep.name).was_running  # doctest: +SKIP
    True
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._records import Record
from ..errors import ConfigError, WorkbenchError
from ..precision import Dtype, Quant, is_gpu
from ..telemetry.events import post_event
from . import engines, lease_hook, process
from .endpoint import Endpoint, EndpointEngine
from .engines import Engine, EngineChoice
from .registry import EndpointRegistry, check_name


@dataclass(frozen=True)
class ServePlan(Record):
    """Everything decided before an engine starts (``workbench serve --json`` shows it on failure too).

    Attributes:
        engine: ``"vllm"`` or ``"transformers"``.
        argv: the engine's command line.
        env: variables set for it on top of this process's environment.
        needed_bytes: what the fit check counted (weights at the load peak plus reserves).
        served_model: the model name requests must carry (``None``: read from ``/v1/models``).
        vllm: vLLM's derived numbers (tensor parallel size, memory utilisation, max model length).
        device_bytes: what the engine will take on each GPU, leased for its PID.
        readings: per GPU, the fit check's one reading of it (NVML's memory and others' leases,
            :attr:`workbench.runtime.fit.FitCheck.readings`): the engine's leases are checked against
            its NVML numbers (:func:`start`), so that a serve plan reads NVML once. Not in the JSON.
    """

    _json_exclude = ("readings",)

    name: str
    store_model: str
    engine: Engine
    devices: tuple[str, ...]
    port: int
    argv: tuple[str, ...]
    env: dict[str, str]
    needed_bytes: int
    served_model: str | None
    vllm: dict[str, Any] | None = None
    device_bytes: dict[str, int] | None = None
    readings: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def base_url(self) -> str:
        return f"http://{engines.HOST}:{self.port}/v1"


def _workbench_dir(sub: str) -> Path:
    from ..config import get_settings

    return Path(get_settings().cache_dir).expanduser() / sub


def _cuda_visible(devices: Sequence[str]) -> str:
    """``CUDA_VISIBLE_DEVICES`` for the engine: the chosen GPUs' UUIDs (stable across processes)."""
    from ..devices.visibility import resolve_gpu

    ids = []
    for d in devices:
        vg = resolve_gpu(d)  # who the GPU is, not its memory (the fit read that)
        ids.append(vg.uuid or str(vg.nvml.nvml_index if vg.nvml is not None else vg.index))
    return ",".join(ids)


def _endpoint_name(name: str | None, model: str) -> str:
    """``name``, else the store model's name when it can name an endpoint (checked before any slow work).

    Raises:
        ConfigError: ``name`` is not usable, or it is None and the model's name (spaces, accents...)
            is not: the message says to pass a name.
    """
    if name is not None:
        return check_name(name)
    try:
        return check_name(model)
    except ConfigError:
        raise ConfigError(f"the model name {model!r} cannot name an endpoint",
                          hint="give the endpoint a name with --name NAME (name=... from Python): "
                               "letters, digits and . _ @ + -", model=model) from None


def plan_serve(model: str, *, engine: EngineChoice = "auto", devices: str | Sequence[str] = ("cpu",),
               dtype: Dtype = "auto", quant: Quant = "none", port: int | None = None, max_model_len: int | None = None,
               name: str | None = None, nodes: int = 1, continuous_batching: bool = True,
               allow_pickle: bool = False, trust_remote_code: bool = False,
               free: Callable[[str], int | None] | None = None, parallel: int = 1,
               allow_unknown_cache: bool = False) -> ServePlan:
    """Check ``model`` as a load would (safety, fit) and build the engine's command; start nothing.

    Args:
        model: a store entry name.
        engine: ``"auto"``, ``"vllm"``, ``"transformers"`` or ``"llamacpp"`` (auto: llama.cpp for a GGUF
            entry at its own quantization).
        max_model_len: the context (llama.cpp: per slot; default 4096, at most the model's).
        parallel: llama.cpp slots for concurrent clients (``llama-server`` only; the fit counts each).
        devices: ``"cpu"``, or GPUs ``("cuda:0", "cuda:1")`` (vLLM: tensor parallel over them).
        nodes: vLLM pipeline stages on that many machines of a Ray cluster (see the README).
        free: ``device -> free bytes`` for the fit check (default: NVML / available RAM).

    Raises:
        ModelNotFoundError, BrokenModelError, UnsafeModelError: as a load.
        InsufficientMemoryError: it does not fit (the message has the numbers and a suggestion).
        EngineNotFoundError: the engine asked for is not installed.
        LoadSpecError: a device, dtype or quantization the engine cannot use.
    """
    from ..runtime.fit import CONTEXT_TOKENS, require_fit
    from ..runtime.spec import LoadSpec, default_n_ctx, devices_tuple
    from ..store import ModelStore
    from ..store.safety import check_entry

    entry = ModelStore().get(model)
    name = _endpoint_name(name, entry.name)
    spec_engine = engine if engine in ("auto", "llamacpp") else "transformers"
    spec = LoadSpec(entry, devices=devices_tuple(devices), dtype=dtype, quant=quant, allow_pickle=allow_pickle,
                    trust_remote_code=trust_remote_code, engine=spec_engine,
                    allow_unknown_cache=allow_unknown_cache).validate()  # type: ignore[arg-type]
    check_entry(entry, trust_remote_code=spec.trust_remote_code, allow_pickle=spec.allow_pickle)
    on_llamacpp = engine in engines.ENGINES and spec.uses_llamacpp(entry)  # asked once; the fit is told
    n_ctx = 0
    if on_llamacpp:  # llama.cpp's own KV rule and buffers, for every slot (workbench/store/gguf_estimate.py)
        n_ctx = default_n_ctx(entry, max_model_len)
        fit = require_fit(entry, spec, free=free, context_tokens=n_ctx, sequences=max(1, parallel), llamacpp=True)
    chosen = engines.pick_engine(engine, spec.devices, engines.vllm_command(), gguf=on_llamacpp)
    # transformers serve's paged cache (engines.transformers_argv), shared by its concurrent requests and
    # counted by the fit: the context asked for, else the same default a llama.cpp load takes.
    cache_tokens = default_n_ctx(entry, max_model_len) if chosen == "transformers" else 0
    if not on_llamacpp:
        fit = require_fit(entry, spec, free=free, context_tokens=cache_tokens or CONTEXT_TOKENS, llamacpp=False)
    port = port or process.free_port(engines.HOST)
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    gpus = [d for d in spec.devices if is_gpu(d)]
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = _cuda_visible(gpus)
    vllm_info = None
    if chosen == "vllm":
        from .. import devices as devs
        from .vllm_memory import GpuMemory, derive_vllm_args

        mem = []
        free_of = {b.device: b.free_bytes for b in fit.budgets}  # the fit's one reading of each GPU
        for d in gpus:
            reading = fit.readings.get(d)
            # The total comes with the fit's reading (the lease book's); read here only with leases off.
            total_b = reading.total_bytes if reading is not None else devs.get_device(d).memory_total_bytes
            free_b = free_of.get(d)
            if total_b is None or free_b is None:
                raise ConfigError(f"the memory of {d} cannot be read, so vLLM's share of it cannot be set",
                                  hint="check `workbench devices`", device=d)
            mem.append(GpuMemory(d, total_b, free_b))
        vargs = derive_vllm_args(entry, fit.estimate, mem, max_model_len=max_model_len, nodes=nodes, quant=quant,
                                 dtype=dtype)
        argv = engines.vllm_argv(engines.vllm_command() or [], entry.path, name, vargs, port=port)
        if trust_remote_code:
            argv.append("--trust-remote-code")
        served = name
        vllm_info = asdict(vargs)
        # vLLM takes its fraction of each GPU's total memory, whatever the model needs.
        device_bytes = {g.device: int(vargs.gpu_memory_utilization * g.total_bytes) for g in mem}
    elif chosen == "llamacpp":
        if nodes > 1:
            raise ConfigError("multi-node serving is vLLM's (its Ray backend)", hint="use nodes=1 with llama.cpp")
        from ..devices.cgroup import usable_cpus
        from ..runtime.llamacpp import gpu_layout

        command, llama_server = engines.llamacpp_command()
        # Inside the engine CUDA_VISIBLE_DEVICES holds the chosen GPUs only: they are cuda:0..k-1 there.
        free_of = {b.device: b.free_bytes for b in fit.verdict.devices}
        inner = {f"cuda:{i}": free_of.get(d) for i, d in enumerate(gpus)}
        placement = gpu_layout(list(inner), inner)
        argv = engines.llamacpp_argv(command, entry.folder / (entry.gguf_file or ""), name, port=port, n_ctx=n_ctx,
                                     n_threads=usable_cpus(), placement=placement, parallel=parallel,
                                     llama_server=llama_server)
        # llama_cpp.server lets HOST and PORT in its environment override its flags: pin them.
        env.update(HOST=engines.HOST, PORT=str(port))
        served = name
        device_bytes = {b.device: b.needed_bytes for b in fit.budgets if b.device in gpus}
    else:
        if nodes > 1:
            raise ConfigError("multi-node serving is vLLM's (its Ray backend)",
                              hint="use --engine vllm on GPUs, or nodes=1")
        device = spec.devices[0] if len(spec.devices) == 1 else "auto"
        argv = engines.transformers_argv(engines.transformers_command(), entry.path, port=port, device=device,
                                         dtype=dtype, quant=quant, continuous_batching=continuous_batching,
                                         cache_tokens=cache_tokens)
        if trust_remote_code:
            argv.append("--trust-remote-code")
        # transformers serve lists cached hub models on /v1/models and fails without a cache folder.
        hf_home = _workbench_dir("hf-home")
        hf_home.mkdir(parents=True, exist_ok=True)
        env["HF_HOME"] = str(hf_home)
        served = None
        device_bytes = {b.device: b.needed_bytes for b in fit.budgets if b.device in gpus}
    return ServePlan(name, entry.name, chosen, spec.devices, port, tuple(argv), env, fit.needed_bytes, served,
                     vllm_info, device_bytes, dict(fit.readings))


# Endpoints this process started without detach: stopped when it exits.
_owned: set[str] = set()
_owned_lock = threading.Lock()
_atexit_installed = False


def _stop_owned() -> None:
    for name in sorted(_owned):
        try:
            stop(name)
        except (WorkbenchError, OSError):
            continue


def _own(name: str) -> None:
    global _atexit_installed
    with _owned_lock:
        _owned.add(name)
        if not _atexit_installed:
            atexit.register(_stop_owned)
            _atexit_installed = True


def start(plan: ServePlan, *, detach: bool = False, ready_timeout_s: float | None = None,
          registry: EndpointRegistry | None = None) -> Endpoint:
    """Start ``plan``'s engine, wait until it answers, and register it.

    The engine gets a fresh API key (in its environment, never on its command line), and
    nothing is sent to its port, not even the readiness probe, before the listening
    socket is proven to be the engine's (:mod:`workbench.serve.listener`).

    Raises:
        EngineStartError: it exited or did not answer in time; it was stopped and the
            error carries the end of its log.
        ListenerNotOursError: another process (another user's) holds the engine's address;
            the engine was stopped and nothing was sent there.
        ConfigError: the endpoint name is taken by a running engine or a remote endpoint, or
            the plan's port is already in use.
    """
    from ..config import get_settings

    registry = registry or EndpointRegistry()
    timeout = ready_timeout_s if ready_timeout_s is not None else get_settings().serve_ready_timeout_s
    try:
        prev = registry.get(plan.name)
    except WorkbenchError:
        prev = None
    if prev is not None and (prev.is_remote or process.is_running(prev.pid, prev.pid_create_time)):
        raise ConfigError(f"an endpoint called {plan.name!r} is already registered ({prev.base_url})",
                          hint=f"stop it (`workbench endpoints stop {plan.name}`) or choose another name",
                          endpoint=plan.name)
    log_path = _workbench_dir("serve-logs") / f"{plan.name}-{plan.port}.log"
    _private_log(log_path)
    # The engine's own key: fresh per start, in its environment only (a command line is public
    # in /proc/PID/cmdline), kept in the owner's 0600 registry, never printed or in the plan.
    secret = secrets.token_urlsafe(32)
    dropped = engines.inherited_settings(plan.engine, plan.argv)
    env = {**{k: v for k, v in os.environ.items() if k.lower() not in dropped}, **plan.env,
           **{var: secret for var in engines.api_key_variables(plan.engine)}}
    t0 = time.time()
    post_event("engine_started", f"starting {plan.engine} for {plan.store_model} on {plan.base_url}",
               model=plan.store_model, engine=plan.engine, base_url=plan.base_url)
    process.require_free_port(engines.HOST, plan.port)
    proc = None
    lease_ids: tuple[str, ...] = ()
    try:
        proc = process.start(plan.argv, env=env, log_path=log_path)
        lease_ids = lease_hook.acquire(plan.device_bytes or {}, plan.store_model, proc.pid, readings=plan.readings)
        ready_s, body = process.wait_ready(proc, plan.base_url, timeout_s=timeout, log_path=log_path,
                                           what=f"{plan.engine} serving {plan.store_model}", api_key=secret,
                                           health=engines.has_health(plan.engine, plan.argv))
        served = plan.served_model or _first_model(body)
        ep = Endpoint(plan.name, plan.engine, plan.base_url, pid=proc.pid, devices=plan.devices, model=served,
                      started_by_pid=os.getpid(), detach=detach, log_path=str(log_path),
                      store_model=plan.store_model, pid_create_time=process.create_time(proc.pid), started_s=t0,
                      ready_s=ready_s, estimated_bytes=plan.needed_bytes, lease_ids=lease_ids, argv=plan.argv,
                      secret=secret)
        registry.put(ep, replace=True)
    except BaseException as exc:
        if proc is not None:
            process.stop_group(proc.pid)
        lease_hook.release(lease_ids)
        post_event("error", f"{plan.engine} for {plan.store_model} failed to start", model=plan.store_model,
                   error=type(exc).__name__)
        raise
    post_event("engine_ready", f"{plan.engine} serving {plan.store_model} on {plan.base_url} after {ready_s:.1f} s",
               model=plan.store_model, engine=plan.engine, base_url=plan.base_url, ready_s=ready_s)
    if not detach:
        _own(plan.name)
    return ep


def _private_log(path: Path) -> None:
    """An empty engine log only its owner can read (engines may log prompts), in a 0700 folder."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _first_model(body: bytes) -> str | None:
    try:
        data = json.loads(body).get("data") or []
        return str(data[0]["id"]) if data else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def serve(model: str, *, engine: EngineChoice = "auto", devices: str | Sequence[str] = ("cpu",),
          dtype: Dtype = "auto", quant: Quant = "none", port: int | None = None, max_model_len: int | None = None, name: str | None = None,
          detach: bool = False, nodes: int = 1, continuous_batching: bool = True, allow_pickle: bool = False,
          trust_remote_code: bool = False, ready_timeout_s: float | None = None, parallel: int = 1,
          allow_unknown_cache: bool = False) -> Endpoint:
    """Serve a store model with a real engine and return its endpoint once it answers.

    Started from a kernel, the engine stops when the kernel exits unless ``detach``.
    See :func:`plan_serve` for the arguments and the checks made before it starts.

    Raises:
        The errors of :func:`plan_serve` and :func:`start`.
    """
    plan = plan_serve(model, engine=engine, devices=devices, dtype=dtype, quant=quant, port=port,
                      max_model_len=max_model_len, name=name, nodes=nodes, continuous_batching=continuous_batching,
                      allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, parallel=parallel,
                      allow_unknown_cache=allow_unknown_cache)
    return start(plan, detach=detach, ready_timeout_s=ready_timeout_s)


@dataclass(frozen=True)
class StopReport(Record):
    """What :func:`stop` did: ``was_running`` (it signalled a live engine) and ``removed``."""

    name: str
    engine: EndpointEngine
    pid: int | None
    was_running: bool
    removed: bool


def stop(name: str, *, registry: EndpointRegistry | None = None) -> StopReport:
    """Stop endpoint ``name``'s engine (its process group, by PID, nothing else), release its lease,
    and remove it from the registry. A remote endpoint is only removed from the registry.

    Raises:
        EndpointNotFoundError: no such endpoint.
    """
    registry = registry or EndpointRegistry()
    ep = registry.get(name)
    was_running = False
    if not ep.is_remote and ep.pid:
        was_running = process.stop_group(ep.pid, ep.pid_create_time)
        lease_hook.release(ep.lease_ids)
        post_event("engine_stopped", f"stopped {ep.engine} serving {ep.store_model}", model=ep.store_model,
                   engine=ep.engine, base_url=ep.base_url)
    registry.remove(name)
    with _owned_lock:
        _owned.discard(name)
    return StopReport(name, ep.engine, ep.pid, was_running, True)
