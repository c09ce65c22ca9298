"""``workbench serve``, ``workbench endpoints [add|stop|share]`` and ``workbench run --endpoint`` (ARCHITECTURE.md §3).

``workbench serve`` returns once the engine answers and leaves it running: a
command-line engine always outlives the command (``--detach`` is implied), and
``workbench endpoints stop NAME`` stops it.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from .. import _cli_output as output
from ..precision import DTYPES
from .engines import ENGINES, SERVE_QUANTS


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
    from ..store import ModelStore
    from ..store.safety import check_entry
    from . import process
    from .launch import _endpoint_name
    from .registry import EndpointRegistry

    entry = ModelStore().get(model)
    check_entry(entry, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
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
    from .launch import plan_serve, start

    devices = [d.strip() for d in args.device.split(",") if d.strip()]
    # Argument errors answer first, before torch is imported (the fit check and engines do).
    preflight(args.name, devices, args.endpoint_name, allow_pickle=args.allow_pickle,
              trust_remote_code=args.trust_remote_code)
    plan = plan_serve(args.name, engine=args.engine, devices=devices, dtype=args.dtype, quant=args.quant,
                      port=args.port, max_model_len=args.max_model_len, name=args.endpoint_name, nodes=args.nodes,
                      allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code,
                      parallel=args.parallel)
    if not args.json:
        print(f"starting {plan.engine} for {plan.store_model} on {plan.base_url} ...", file=sys.stderr, flush=True)
    with terminate_as_interrupt():
        ep = start(plan, detach=True, ready_timeout_s=args.ready_timeout)
    doc = {**ep.to_dict(), "plan": plan.to_dict()}
    output.emit(args, doc, f"{ep.name}: {ep.engine} serving {ep.store_model} on {ep.base_url} (PID {ep.pid}, "
                     f"{', '.join(ep.devices)}, model {ep.model!r}, ready in {ep.ready_s:.1f} s)\n"
                     f"stop it with: workbench endpoints stop {ep.name}")
    return 0


def cmd_endpoints(args: argparse.Namespace) -> int:
    from .registry import EndpointRegistry

    statuses = EndpointRegistry().statuses()
    rows = [[s.endpoint.name, s.endpoint.engine, s.state + (" (orphaned)" if s.orphaned else ""),
             s.endpoint.base_url, str(s.endpoint.pid or "-"), ",".join(s.endpoint.devices) or "-",
             s.endpoint.model or "-"] for s in statuses]
    header = ["NAME", "ENGINE", "STATE", "BASE URL", "PID", "DEVICES", "MODEL"]
    if rows:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        text = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows])
    else:
        text = "No endpoints: start one with `workbench serve MODEL` or add one with `workbench endpoints add NAME URL`."
    output.emit(args, [s.to_dict() for s in statuses], text)
    return 0


def cmd_endpoints_add(args: argparse.Namespace) -> int:
    from .registry import EndpointRegistry

    ep = EndpointRegistry().add_remote(args.name, args.url, api_key_env=args.api_key_env, model=args.model,
                                       replace=args.replace)
    key = f", API key from ${ep.api_key_env}" if ep.api_key_env else ""
    output.emit(args, ep.to_dict(), f"added {ep.name}: {ep.base_url}{key}")
    return 0


def share_variable(name: str) -> str:
    """The environment variable a colleague keeps an endpoint's key in (``WORKBENCH_KEY_<NAME>``)."""
    return "WORKBENCH_KEY_" + "".join(c if c.isalnum() else "_" for c in name.upper())


def cmd_endpoints_share(args: argparse.Namespace) -> int:
    """``workbench endpoints share NAME``: what a colleague runs to use an endpoint, its key included.

    Sharing is a deliberate act: this command (and only it) prints an engine's key.
    """
    import shlex

    from ..errors import ConfigError
    from .registry import EndpointRegistry

    reg = EndpointRegistry()
    ep = reg.get(args.name)
    var = share_variable(ep.name)
    add = ["workbench", "endpoints", "add", ep.name, ep.base_url]
    if ep.model:
        add += ["--model", ep.model]
    if ep.is_remote:
        if ep.api_key_env:
            add += ["--api-key-env", ep.api_key_env]
        doc = {"name": ep.name, "base_url": ep.base_url, "model": ep.model, "api_key_env": ep.api_key_env,
               "api_key": None, "commands": [shlex.join(add)]}
        text = ("A remote endpoint: its key, if any, is the one you were given"
                + (f" (in ${ep.api_key_env})" if ep.api_key_env else "") + f". A colleague registers it with:\n\n"
                f"  {shlex.join(add)}")
        output.emit(args, doc, text)
        return 0
    status = {s.endpoint.name: s for s in reg.statuses()}.get(ep.name)
    if status is None or status.state != "running" or not ep.secret:
        raise ConfigError(f"endpoint {ep.name!r} is not running, so there is nothing to share",
                          hint=f"start it with `workbench serve {ep.store_model}`", endpoint=ep.name)
    add += ["--api-key-env", var]
    commands = [f"export {var}={shlex.quote(ep.secret)}", shlex.join(add)]
    doc = {"name": ep.name, "base_url": ep.base_url, "model": ep.model, "api_key_env": var, "api_key": ep.secret,
           "commands": commands}
    text = (f"This prints the key of {ep.name}: anyone who has it can send prompts to your engine and read its "
            "answers. Give it only to people you trust, privately (not in a shared notebook or chat channel).\n"
            f"On this machine ({ep.base_url} is loopback), a colleague runs:\n\n"
            + "".join(f"  {c}\n" for c in commands)
            + f"\nThe key changes each time the engine starts: `workbench endpoints stop {ep.name}` and serve "
            "it again to revoke it.")
    output.emit(args, doc, text)
    return 0


def cmd_endpoints_stop(args: argparse.Namespace) -> int:
    from .launch import stop

    report = stop(args.name)
    if report.engine == "remote":
        text = f"removed {report.name} (a remote endpoint: nothing to stop here)"
    else:
        text = (f"stopped {report.name} (process group {report.pid})" if report.was_running
                else f"removed {report.name} (its engine had already exited)")
    output.emit(args, report.to_dict(), text)
    return 0


def cmd_run_endpoint(args: argparse.Namespace) -> int:
    """``workbench run --endpoint NAME --prompt TEXT``: the answer streamed to stdout as it arrives
    (``--json``: one document at the end, the same keys as a local run); Ctrl-C keeps what
    arrived, prints it, exits 130."""
    from ..runtime.generation import GenerationParams
    from .client import EndpointClient

    params = GenerationParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    s = EndpointClient(args.endpoint).stream(args.prompt, params)
    interrupted = output.consume(s, live=not args.json)
    r = s.result
    for notice in r.notices:
        print(f"workbench: {notice}", file=sys.stderr)  # on stderr: --json stays one document
    doc = {**r.to_dict(), "interrupted": interrupted}
    output.finish_run(args, doc, r.text, f"[{r.new_tokens} tokens, TTFT {r.ttft_s:.3f} s, {r.tokens_per_s:.1f} "
                      f"tokens/s, endpoint {r.endpoint}, model {r.model}]", interrupted)
    return 130 if interrupted else 0


def register(subparsers: Any) -> None:
    """Add ``serve`` and ``endpoints`` to the ``workbench`` parser's subcommands."""

    def add(parent: Any, name: str, fn: Any, help: str) -> argparse.ArgumentParser:
        sp = parent.add_parser(name, help=help, description=help)
        sp.add_argument("--json", action="store_true", help="print one JSON document on stdout")
        sp.set_defaults(fn=fn)
        return sp

    sp = add(subparsers, "serve", cmd_serve,
             "start an OpenAI-compatible engine (vLLM, transformers serve or llama.cpp) for a store model; returns once it "
             "answers and leaves it running")
    sp.add_argument("name", help="a store entry name")
    sp.add_argument("--engine", default="auto", choices=ENGINES,
                    help="auto: llama.cpp for a GGUF entry, else vLLM on GPUs when its command is found, "
                         "else transformers serve")
    sp.add_argument("--device", default="cpu", help="cpu, or cuda:0[,cuda:1...] (vLLM: tensor parallel)")
    sp.add_argument("--dtype", default="auto", choices=DTYPES)
    sp.add_argument("--quant", default="none", choices=SERVE_QUANTS)
    sp.add_argument("--port", type=int, default=None, help="default: a free port on 127.0.0.1")
    sp.add_argument("--max-model-len", type=int, default=None,
                    help="context length (vLLM: default what fits; llama.cpp: per slot, default 4096)")
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

    ep = add(subparsers, "endpoints", cmd_endpoints, "running and registered OpenAI-compatible endpoints")
    sub = ep.add_subparsers(dest="endpoints_command", required=False)
    sp = add(sub, "add", cmd_endpoints_add, "register a remote OpenAI-compatible endpoint by URL")
    sp.add_argument("name")
    sp.add_argument("url", help="its base URL, e.g. http://gpu-box:8000/v1")
    sp.add_argument("--api-key-env", default=None,
                    help="the environment variable holding its API key (the key is never stored)")
    sp.add_argument("--model", default=None, help="the model name to request (default: the first it lists)")
    sp.add_argument("--replace", action="store_true", help="replace an endpoint of the same name")
    sp = add(sub, "stop", cmd_endpoints_stop, "stop an engine (its process group) and forget the endpoint")
    sp.add_argument("name")
    sp = add(sub, "share", cmd_endpoints_share,
             "print what a colleague runs to use an endpoint, with its API key (a deliberate act: the key "
             "lets them prompt your engine)")
    sp.add_argument("name")
