"""``workbench endpoints [add|stop|share]``: running and registered OpenAI-compatible endpoints (ARCHITECTURE.md §3).

``workbench serve`` (:mod:`workbench.cli.serve`) starts the engines listed here;
``workbench run --endpoint NAME`` (:mod:`workbench.cli.run`) prompts them.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..serve.engines import ENGINE_KINDS
from ._output import add_command, emit, table


def _engine_cell(ep: Any) -> str:
    """``remote (vllm)`` for a remote endpoint whose engine kind was given, else the engine."""
    return f"{ep.engine} ({ep.engine_kind})" if ep.is_remote and ep.engine_kind else ep.engine


def cmd_endpoints(args: argparse.Namespace) -> int:
    from ..serve.registry import EndpointRegistry

    statuses = EndpointRegistry().statuses()
    rows = [[s.endpoint.name, _engine_cell(s.endpoint), s.state + (" (orphaned)" if s.orphaned else ""),
             s.endpoint.base_url, str(s.endpoint.pid or "-"), ",".join(s.endpoint.devices) or "-",
             s.endpoint.model or "-"] for s in statuses]
    header = ["NAME", "ENGINE", "STATE", "BASE URL", "PID", "DEVICES", "MODEL"]
    # The one table rule of every command (one line per row, control characters escaped).
    if rows:
        text = table(rows, header)
    else:
        text = "No endpoints: start one with `workbench serve MODEL` or add one with `workbench endpoints add NAME URL`."
    emit(args, [s.to_dict() for s in statuses], text)
    return 0


def cmd_endpoints_add(args: argparse.Namespace) -> int:
    from ..serve.registry import EndpointRegistry

    kind = None if args.engine == "unknown" else args.engine
    ep = EndpointRegistry().add_remote(args.name, args.url, api_key_env=args.api_key_env, model=args.model,
                                       replace=args.replace, engine_kind=kind)
    key = f", API key from ${ep.api_key_env}" if ep.api_key_env else ""
    served = f", {ep.engine_kind} requests" if ep.engine_kind else ""
    emit(args, ep.to_dict(), f"added {ep.name}: {ep.base_url}{key}{served}")
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
    from ..serve.registry import EndpointRegistry

    reg = EndpointRegistry()
    ep = reg.get(args.name)
    var = share_variable(ep.name)
    add = ["workbench", "endpoints", "add", ep.name, ep.base_url]
    if ep.model:
        add += ["--model", ep.model]
    # The colleague's requests follow the engine's own rules too (vLLM's top_k...).
    if ep.request_engine in ENGINE_KINDS[1:]:
        add += ["--engine", ep.request_engine]
    if ep.is_remote:
        if ep.api_key_env:
            add += ["--api-key-env", ep.api_key_env]
        doc = {"name": ep.name, "base_url": ep.base_url, "model": ep.model, "api_key_env": ep.api_key_env,
               "api_key": None, "commands": [shlex.join(add)]}
        text = ("A remote endpoint: its key, if any, is the one you were given"
                + (f" (in ${ep.api_key_env})" if ep.api_key_env else "") + f". A colleague registers it with:\n\n"
                f"  {shlex.join(add)}")
        emit(args, doc, text)
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
    emit(args, doc, text)
    return 0


def cmd_endpoints_stop(args: argparse.Namespace) -> int:
    from ..serve.launch import stop

    report = stop(args.name)
    if report.engine == "remote":
        text = f"removed {report.name} (a remote endpoint: nothing to stop here)"
    else:
        text = (f"stopped {report.name} (process group {report.pid})" if report.was_running
                else f"removed {report.name} (its engine had already exited)")
    emit(args, report.to_dict(), text)
    return 0


def register(subparsers: Any) -> None:
    """Add ``endpoints`` (and ``add``, ``stop``, ``share``) to the ``workbench`` command's subparsers."""
    ep = add_command(subparsers, "endpoints", cmd_endpoints, "running and registered OpenAI-compatible endpoints")
    sub = ep.add_subparsers(dest="endpoints_command", required=False)
    sp = add_command(sub, "add", cmd_endpoints_add, "register a remote OpenAI-compatible endpoint by URL")
    sp.add_argument("name")
    sp.add_argument("url", help="its base URL, e.g. http://gpu-box:8000/v1")
    sp.add_argument("--api-key-env", default=None,
                    help="the environment variable holding its API key (the key is never stored)")
    sp.add_argument("--model", default=None, help="the model name to request (default: the first it lists)")
    sp.add_argument("--replace", action="store_true", help="replace an endpoint of the same name")
    sp.add_argument("--engine", default="unknown", choices=ENGINE_KINDS,
                    help="the engine behind the URL, so that its own request fields (vLLM's top_k, "
                         "repetition_penalty, min_p) are sent; unknown: OpenAI fields only")
    sp = add_command(sub, "stop", cmd_endpoints_stop, "stop an engine (its process group) and forget the endpoint")
    sp.add_argument("name")
    sp = add_command(sub, "share", cmd_endpoints_share,
                     "print what a colleague runs to use an endpoint, with its API key (a deliberate act: the key "
                     "lets them prompt your engine)")
    sp.add_argument("name")
