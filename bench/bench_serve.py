"""Concurrent streaming clients against `transformers serve`, and the same prompts one at a time in-process.

    python bench/bench_serve.py [--clients 1,4,8] [--requests 2] [--new-tokens 32]
                                [--max-seconds 600] [--no-continuous-batching] [--json]

Uses the seeded SmolLM2-135M-Instruct (`make seed`), on the CPU, loopback only:

1. ``workbench.serve.serve(engine="transformers")`` starts the engine (continuous
   batching unless ``--no-continuous-batching``); one warm-up request;
2. for each concurrency in ``--clients`` (default 1, 4 and 8), that many threads each
   send ``--requests`` streaming chat requests, one after the other, through :class:`workbench.serve.EndpointClient` (the official ``openai``
   client), greedy, ``--new-tokens`` at most. Every request either completes or fails
   with a typed :class:`~workbench.errors.ServeError`; the count is checked, none may
   be lost. The run is bounded by ``--max-seconds`` (requests not started by then are
   reported as skipped, not lost);
3. the engine is stopped (nothing left running), then the largest level's prompts are
   answered one at a time in this process by ``workbench.runtime`` (load once, ``generate``).

Reports per level requests/s, TTFT p50/p95, aggregate tokens/s (tokens over wall time),
and ``throughput_ratio`` = served aggregate tokens/s / in-process sequential tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections import Counter

SMOL = "SmolLM2-135M-Instruct"
QUESTIONS = [
    "What is the capital of France?",
    "Name three colours of the rainbow.",
    "Write one sentence about the sea.",
    "What is two plus two?",
    "Give me a word that rhymes with cat.",
    "Describe a tree in one sentence.",
    "What do bees make?",
    "Say hello in Spanish.",
]
MAX_CLIENTS = 16
MAX_REQUESTS = 8


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def run_level(client, clients: int, per_client: int, params, max_seconds: float) -> dict:
    """``clients`` threads x ``per_client`` streaming requests; the level's numbers."""
    from workbench.errors import ServeError

    prompts = [[QUESTIONS[(c * per_client + i) % len(QUESTIONS)] for i in range(per_client)] for c in range(clients)]
    results: list = []
    errors: Counter[str] = Counter()
    skipped = 0
    lock = threading.Lock()
    deadline = time.perf_counter() + max_seconds

    def worker(mine: list[str]) -> None:
        nonlocal skipped
        for p in mine:
            if time.perf_counter() > deadline:
                with lock:
                    skipped += 1
                continue
            try:
                r = client.chat(p, params)
                with lock:
                    results.append(r)
            except ServeError as exc:
                with lock:
                    errors[type(exc).__name__] += 1

    threads = [threading.Thread(target=worker, args=(mine,), daemon=True) for mine in prompts]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(max_seconds + 120)
    wall = time.perf_counter() - start
    total = clients * per_client
    tokens = sum(r.new_tokens for r in results)
    ttfts = [r.ttft_s for r in results]
    return {"clients": clients, "requests": total, "completed": len(results), "failed": dict(errors),
            "skipped": skipped, "lost": total - len(results) - sum(errors.values()) - skipped,
            "wall_s": round(wall, 2), "requests_per_s": round(len(results) / wall, 3) if wall else None,
            "ttft_p50_s": pct(ttfts, 0.5), "ttft_p95_s": pct(ttfts, 0.95), "served_tokens": tokens,
            "served_tokens_per_s": round(tokens / wall, 2) if wall else 0.0,
            "per_request_tokens_per_s_median": round(statistics.median([r.tokens_per_s for r in results]), 2)
            if results else None, "prompts": [p for mine in prompts for p in mine]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=SMOL)
    ap.add_argument("--clients", default="1,4,8", help="concurrency levels, comma-separated")
    ap.add_argument("--requests", type=int, default=2, help="per client")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--max-seconds", type=float, default=600.0, help="per level: no request starts after this")
    ap.add_argument("--no-continuous-batching", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    levels = sorted({max(1, min(int(c), MAX_CLIENTS)) for c in str(args.clients).split(",") if c.strip()})
    per_client = max(1, min(args.requests, MAX_REQUESTS))

    from workbench.runtime import GenerationParams, LoadSpec, generate, get_registry
    from workbench.serve import EndpointClient, serve, stop
    from workbench.serve.listener import group_members
    from workbench.serve.process import is_running, port_open

    params = GenerationParams(max_new_tokens=args.new_tokens, temperature=0)
    log(f"starting transformers serve for {args.model} on the CPU ...")
    t0 = time.perf_counter()
    ep = serve(args.model, engine="transformers", devices=("cpu",), dtype="bfloat16", name="bench-serve",
               continuous_batching=not args.no_continuous_batching, ready_timeout_s=300)
    ready_s = time.perf_counter() - t0
    rows = []
    try:
        client = EndpointClient(ep, timeout_s=args.max_seconds)
        client.chat(QUESTIONS[0], GenerationParams(max_new_tokens=4, temperature=0))  # warm-up
        log(f"ready in {ready_s:.1f} s")
        for n in levels:
            log(f"{n} concurrent clients x {per_client} requests ...")
            rows.append(run_level(client, n, per_client, params, args.max_seconds))
    finally:
        stop(ep.name)
    left = bool(group_members(ep.pid)) or is_running(ep.pid) or port_open("127.0.0.1", int(ep.base_url.split(":")[2].split("/")[0]))

    log("the largest level's prompts one at a time in-process (workbench.runtime) ...")
    registry = get_registry()
    loaded = registry.load(LoadSpec(args.model, devices=("cpu",), dtype="bfloat16"))
    try:
        generate(loaded, QUESTIONS[0], GenerationParams(max_new_tokens=4, temperature=0))  # warm-up
        local = []
        t1 = time.perf_counter()
        for p in rows[-1]["prompts"]:
            local.append(generate(loaded, p, params))
        local_wall = time.perf_counter() - t1
    finally:
        registry.unload(loaded.name)
    local_tokens = sum(r.new_tokens for r in local)
    local_tps = local_tokens / local_wall if local_wall > 0 else 0.0
    for row in rows:
        row.pop("prompts")
        row["throughput_ratio"] = round(row["served_tokens_per_s"] / local_tps, 3) if local_tps else None
    doc = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "load_average": [round(x, 1) for x in os.getloadavg()],
        "model": args.model, "engine": "transformers serve", "continuous_batching": not args.no_continuous_batching,
        "requests_per_client": per_client, "new_tokens_max": args.new_tokens, "ready_s": round(ready_s, 2),
        "left_running": left, "levels": rows, "local_sequential_wall_s": round(local_wall, 2),
        "local_tokens": local_tokens, "local_tokens_per_s": round(local_tps, 2),
    }
    if args.json:
        print(json.dumps(doc))
    else:
        for row in rows:
            print(f"{row['clients']:>2} clients: {row['completed']}/{row['requests']} ok, lost {row['lost']}, "
                  f"{row['requests_per_s']} req/s, TTFT p50 {row['ttft_p50_s']} p95 {row['ttft_p95_s']} s, "
                  f"{row['served_tokens_per_s']} tokens/s, ratio {row['throughput_ratio']}")
        print(f"in-process one at a time: {doc['local_tokens_per_s']} tokens/s; left running: {left}; "
              f"load average {doc['load_average']}")
    return 0 if all(r["lost"] == 0 for r in rows) and not left else 1


if __name__ == "__main__":
    sys.exit(main())
