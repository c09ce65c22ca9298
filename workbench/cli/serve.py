"""``workbench serve``: start an OpenAI-compatible engine for a store model (ARCHITECTURE.md section 3).

It returns once the engine answers and leaves it running: a command-line engine always
outlives the command (``--detach`` is implied), and ``workbench endpoints stop NAME`` stops
it. Argument errors (a name in use, a device that is not there, a model that is not ok) are
answered before torch is imported (:func:`preflight`); SIGTERM and SIGHUP while it waits stop
the engine it started (:func:`terminate_as_interrupt`).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from ..precision import DTYPES
from ..serve.engines import ENGINES, SERVE_QUANTS
from ._output import add_command, emit, progress


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`KeyboardInterrupt` as Ctrl-C does.

    ``start`` stops the engine it started on any exception; without this a ``kill`` of the
    command (or a closed terminal) while it waits for the engine would leave the engine
    running, unregistered, with no ``workbench endpoints stop`` to reach it. The previous
    handlers are restored on the way out.
    """
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    wanted = [s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.signal(s, interrupt) for s in wanted}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def preflight(model: str, devices: list[str], name: str | None, *, allow_pickle: bool = False,
              trust_remote_code: bool = False) -> str:
    """What ``workbench serve`` checks before anything heavy (torch, the fit check, the engine).

    The model exists and passes the safety checks, the endpoint name is free, and every
    device exists (NVML and ``CUDA_VISIBLE_DEVICES`` only: torch is not imported). In about
    a second, not after an engine's start-up.

    Returns:
        The endpoint's name.

    Raises:
        ModelNotFoundError, BrokenModelError, UnsafeModelError: the model.
        ConfigError: the name is taken by a running engine or a remote endpoint.
        DeviceNotFoundError, LoadSpecError: a device that is not there, or not a device name.
    """
    from ..devices.visibility import device_not_found, visible_gpus
    from ..errors import ConfigError, LoadSpecError, WorkbenchError
    from ..precision import is_device, is_gpu, normalize_device
    from ..serve import process
    from ..serve.launch import _endpoint_name
    from ..serve.registry import EndpointRegistry
    from ..store import ModelStore
    from ..store.safety import check_entry

    entry = ModelStore().get(model)
    # Torch-free: bad arguments are refused at once; plan_serve checks the tensors' coverage before the start.
    check_entry(entry, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, coverage=False)
    name = _endpoint_name(name, entry.name)
    try:
        prev = EndpointRegistry().get(name)
    except WorkbenchError:
        prev = None
    if prev is not None and (prev.is_remote or process.is_running(prev.pid, prev.pid_create_time)):
        raise ConfigError(f"an endpoint called {name!r} is already registered ({prev.base_url})",
                          hint=f"stop it (`workbench endpoints stop {name}`) or choose another name with --name",
                          endpoint=name)
    wanted = [normalize_device(d) for d in devices]
    bad = [d for d in wanted if not is_device(d)]
    if bad or not wanted:
        raise LoadSpecError(f"{', '.join(bad) or 'no device'}: not a device name", hint="use cpu or cuda:N[,cuda:M]")
    gpus = [d for d in wanted if is_gpu(d)]
    if gpus:
        seen = [vg.name for vg in visible_gpus(import_torch=False).gpus]
        missing = [d for d in gpus if d not in seen]
        if missing:
            raise device_not_found(missing[0], [*seen, "cpu"])
    return name


def cmd_serve(args: argparse.Namespace) -> int:
    from ..serve.launch import plan_serve, start

    devices = [d.strip() for d in args.device.split(",") if d.strip()]
    # Argument errors answer first, before torch is imported (the fit check and engines do).
    preflight(args.name, devices, args.endpoint_name, allow_pickle=args.allow_pickle,
              trust_remote_code=args.trust_remote_code)
    plan = plan_serve(args.name, engine=args.engine, devices=devices, dtype=args.dtype, quant=args.quant,
                      port=args.port, max_model_len=args.max_model_len, name=args.endpoint_name, nodes=args.nodes,
                      allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code,
                      parallel=args.parallel, allow_unknown_cache=args.allow_unknown_cache)
    if not args.json:
        progress(f"starting {plan.engine} for {plan.store_model} on {plan.base_url} ...")
    with terminate_as_interrupt():
        ep = start(plan, detach=True, ready_timeout_s=args.ready_timeout)
    doc = {**ep.to_dict(), "plan": plan.to_dict()}
    emit(args, doc, f"{ep.name}: {ep.engine} serving {ep.store_model} on {ep.base_url} (PID {ep.pid}, "
              f"{', '.join(ep.devices)}, model {ep.model!r}, ready in {ep.ready_s:.1f} s)\n"
              f"stop it with: workbench endpoints stop {ep.name}")
    return 0


def register(subparsers: Any) -> None:
    """Add ``serve`` to the ``workbench`` command's subparsers."""
    sp = add_command(subparsers, "serve", cmd_serve,
                     "start an OpenAI-compatible engine (vLLM, transformers serve or llama.cpp) for a store model; "
                     "returns once it answers and leaves it running")
    sp.add_argument("name", help="a store entry name")
    sp.add_argument("--engine", default="auto", choices=ENGINES,
                    help="auto: llama.cpp for a GGUF entry, else vLLM on GPUs when its command is found, "
                         "else transformers serve")
    sp.add_argument("--device", default="cpu", help="cpu, or cuda:0[,cuda:1...] (vLLM: tensor parallel)")
    sp.add_argument("--dtype", default="auto", choices=DTYPES)
    sp.add_argument("--quant", default="none", choices=SERVE_QUANTS)
    sp.add_argument("--port", type=int, default=None, help="default: a free port on 127.0.0.1")
    sp.add_argument("--max-model-len", type=int, default=None,
                    help="context length (vLLM: default what fits; llama.cpp: per slot, default 4096; "
                         "transformers: the paged cache all requests share, default 4096 tokens)")
    sp.add_argument("--parallel", type=int, default=1,
                    help="llama.cpp slots for concurrent clients (a llama-server llamacpp_command)")
    sp.add_argument("--name", dest="endpoint_name", default=None, help="the endpoint's name (default: the model's)")
    sp.add_argument("--nodes", type=int, default=1,
                    help="vLLM on a Ray cluster: pipeline stages over this many machines (see README)")
    sp.add_argument("--ready-timeout", type=float, default=None, help="seconds to wait for the engine to answer")
    sp.add_argument("--detach", action="store_true",
                    help="accepted for symmetry: an engine started from the command line always outlives it")
    sp.add_argument("--allow-pickle", action="store_true", help="allow pickle checkpoints")
    sp.add_argument("--trust-remote-code", action="store_true", help="allow this model's own Python code")
    sp.add_argument("--allow-unknown-cache", action="store_true",
                    help="load even when the KV cache cannot be measured (the fit check then covers the rest only)")
