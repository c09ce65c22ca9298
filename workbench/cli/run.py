"""``workbench run``: load a store model, generate once, unload; or ask an endpoint (``--endpoint NAME``).

The answer is printed to stdout as it is generated (as ``ollama run`` does; ``--json``: one
document at the end). Ctrl-C keeps and prints what arrived, then the command exits 130.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import ConfigError
from ..precision import DTYPES, QUANTS
from ._output import add_command, consume, finish_run, printable, progress
from .store import open_store


def cmd_run(args: argparse.Namespace) -> int:
    if args.endpoint:
        # The engine behind an endpoint was placed and quantized when it started: these would be ignored.
        local = [flag for flag, used in (("a model name", args.name), ("--device", args.device != "cpu"),
                                         ("--dtype", args.dtype != "auto"), ("--quant", args.quant != "none"),
                                         ("--allow-pickle", args.allow_pickle),
                                         ("--trust-remote-code", args.trust_remote_code),
                                         ("--allow-unknown-cache", args.allow_unknown_cache)) if used]
        if local:
            raise ConfigError(f"{', '.join(local)} cannot go with --endpoint {args.endpoint}",
                              hint="an endpoint serves the model its engine was started with: drop them, "
                                   "or run a store model without --endpoint")
        return cmd_run_endpoint(args)
    if not args.name:
        raise ConfigError("no model given", hint="pass a store entry name, or --endpoint NAME")
    from ..runtime.oneshot import run_once

    open_store()  # a bad root fails here in one line, before torch is imported
    devices = [d.strip() for d in args.device.split(",") if d.strip()]
    report = run_once(
        args.name, args.prompt, devices=devices, dtype=args.dtype, quant=args.quant,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
        allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code,
        progress=None if args.json else progress, system_prompt=args.system,
        engine=args.engine, n_ctx=args.n_ctx, allow_unknown_cache=args.allow_unknown_cache,
        # The answer on stdout as it is generated (`ollama run`); --json: one document at the end.
        stream_to=lambda s: consume(s, live=not args.json),
    )
    summary = (f"[{report.new_tokens} tokens, TTFT {report.ttft_s:.3f} s, {report.tokens_per_s:.1f} tokens/s, "
               f"load {report.load_s:.2f} s, footprint {report.footprint_bytes / 2**20:.1f} MiB on "
               f"{', '.join(report.devices)}]")
    finish_run(args, report.to_dict(), report.text, summary, report.interrupted)
    return 130 if report.interrupted else 0


def cmd_run_endpoint(args: argparse.Namespace) -> int:
    """``workbench run --endpoint NAME --prompt TEXT``: the answer streamed to stdout as it arrives
    (``--json``: one document at the end, the same keys as a local run); Ctrl-C keeps what
    arrived, prints it, exits 130."""
    from ..runtime.generation import GenerationParams
    from ..serve.client import EndpointClient

    params = GenerationParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
                              system_prompt=args.system)
    s = EndpointClient(args.endpoint).stream(args.prompt, params)
    interrupted = consume(s, live=not args.json)
    r = s.result
    for notice in r.notices:
        print(printable(f"workbench: {notice}"), file=sys.stderr)  # on stderr: --json stays one document
    doc = {**r.to_dict(), "interrupted": interrupted}
    finish_run(args, doc, r.text, f"[{r.new_tokens} tokens, TTFT {r.ttft_s:.3f} s, {r.tokens_per_s:.1f} "
               f"tokens/s, endpoint {r.endpoint}, model {r.model}]", interrupted)
    return 130 if interrupted else 0


def register(subparsers: Any) -> None:
    """Add ``run`` to the ``workbench`` command's subparsers."""
    sp = add_command(subparsers, "run", cmd_run,
                     "load a model, generate once, unload (or ask an endpoint: --endpoint NAME)")
    sp.add_argument("name", nargs="?", help="a store entry name (not with --endpoint)")
    sp.add_argument("--endpoint", default=None, help="ask this registered endpoint instead of loading a model")
    sp.add_argument("--prompt", required=True)
    sp.add_argument("--device", default="cpu", help="cpu, or cuda:0[,cuda:1...]")
    sp.add_argument("--dtype", default="auto", choices=DTYPES)
    sp.add_argument("--quant", default="none", choices=QUANTS)
    sp.add_argument("--max-new-tokens", type=int, default=64)
    sp.add_argument("--temperature", type=float, default=0.0, help="0 means greedy")
    sp.add_argument("--seed", type=int, default=None)
    sp.add_argument("--system", default=None, help="a system prompt (default: the chat template's own, if any)")
    sp.add_argument("--engine", default="auto", choices=("auto", "llamacpp", "transformers"),
                    help="auto: llama.cpp for a GGUF entry at its own quantization, transformers otherwise")
    sp.add_argument("--n-ctx", type=int, default=None, help="llama.cpp's context in tokens (default 4096)")
    sp.add_argument("--allow-pickle", action="store_true", help="allow pickle checkpoints (weights_only=True)")
    sp.add_argument("--trust-remote-code", action="store_true", help="allow this model's own Python code")
    sp.add_argument("--allow-unknown-cache", action="store_true",
                    help="load even when the KV cache cannot be measured (the fit check then covers the rest only)")
