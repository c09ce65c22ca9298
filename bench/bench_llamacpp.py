"""llama.cpp through the workbench against plain llama-cpp-python and the workbench's transformers path.

    python bench/bench_llamacpp.py [--rounds 3] [--new-tokens 64] [--threads N] [--json]

Uses the seeded store (`make seed`): SmolLM2-135M-Instruct-GGUF (the embedded Q4_1 file, on
llama.cpp) and SmolLM2-135M-Instruct (bfloat16 safetensors, on transformers). Each round, in
alternating order, the same chat prompt, greedy, to the same token count (EOS ignored by asking
for a long answer and counting what came):

* ``workbench llama.cpp``: ``Registry.load`` of the GGUF entry (``n_ctx`` 1024), then ``stream``
  consumed piece by piece; decode tokens/s and TTFT as the workbench reports them;
* ``plain llama-cpp-python``: ``Llama(path, n_ctx=1024, n_threads=N)`` and
  ``create_chat_completion(stream=True)`` on the same file and threads, tokens/s from the chunk
  times after the first (one chunk a token), TTFT to the first chunk;
* ``workbench transformers``: the bfloat16 entry and the same entry in nf4, through ``stream``.

Prints medians and ``ratio_vs_plain`` (workbench llama.cpp / plain, decode tokens/s; target >= 0.95)
and ``ratio_vs_bf16`` / ``ratio_vs_nf4`` (workbench llama.cpp / workbench transformers; target >= 3).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

GGUF = "SmolLM2-135M-Instruct-GGUF"
SAFETENSORS = "SmolLM2-135M-Instruct"
PROMPT = "Write a long story about a dragon who learns to bake bread."
SYSTEM = "You are a helpful assistant."


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def workbench_run(registry, spec, new_tokens: int) -> tuple[float, float]:
    from workbench.runtime import GenerationParams, stream

    m = registry.load(spec)
    try:
        params = GenerationParams(temperature=0.0, max_new_tokens=new_tokens, system_prompt=SYSTEM)
        stream(m, PROMPT, params).text()  # warm: the prompt cache and the template worker
        s = stream(m, PROMPT, params)
        s.text()
        return s.result.tokens_per_s, s.result.ttft_s
    finally:
        registry.unload(m.name)


def plain_run(path: str, threads: int, new_tokens: int) -> tuple[float, float]:
    import llama_cpp

    llm = llama_cpp.Llama(path, n_ctx=1024, n_threads=threads, verbose=False)
    try:
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}]
        for _chunk in llm.create_chat_completion(msgs, stream=True, temperature=0.0, max_tokens=new_tokens):
            pass  # warm
        t0 = time.perf_counter()
        times = []
        for chunk in llm.create_chat_completion(msgs, stream=True, temperature=0.0, max_tokens=new_tokens):
            if chunk["choices"][0]["delta"].get("content"):
                times.append(time.perf_counter())
        rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
        return rate, (times[0] - t0) if times else 0.0
    finally:
        llm.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="default: the CPUs this process may use")
    ap.add_argument("--no-transformers", action="store_true", help="only llama.cpp, workbench against plain")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from workbench.devices.cgroup import usable_cpus
    from workbench.runtime import LoadSpec
    from workbench.runtime.registry import Registry
    from workbench.store import ModelStore

    threads = args.threads or usable_cpus()
    store = ModelStore()
    entry = store.get(GGUF)
    path = str(entry.folder / entry.gguf_file)
    registry = Registry(store)
    runs: dict[str, list[tuple[float, float]]] = {"workbench_llamacpp": [], "plain_llamacpp": [],
                                                  "workbench_bf16": [], "workbench_nf4": []}
    for r in range(args.rounds):
        order = ["workbench_llamacpp", "plain_llamacpp"]
        if not args.no_transformers:
            order += ["workbench_bf16", "workbench_nf4"]
        if r % 2:
            order.reverse()
        for name in order:
            if name == "workbench_llamacpp":
                got = workbench_run(registry, LoadSpec(GGUF, n_ctx=1024), args.new_tokens)
            elif name == "plain_llamacpp":
                got = plain_run(path, threads, args.new_tokens)
            else:
                quant = "nf4" if name.endswith("nf4") else "none"
                got = workbench_run(registry, LoadSpec(SAFETENSORS, dtype="bfloat16", quant=quant), args.new_tokens)
            runs[name].append(got)
            log(f"round {r + 1} {name}: {got[0]:.1f} tokens/s, TTFT {got[1] * 1000:.0f} ms")
    med = {k: (statistics.median(x for x, _ in v), statistics.median(t for _, t in v)) for k, v in runs.items() if v}
    wb = med["workbench_llamacpp"][0]
    out = {"machine": f"{platform.machine()} {threads} threads", "new_tokens": args.new_tokens,
           "tokens_per_s": {k: round(v[0], 1) for k, v in med.items()},
           "ttft_ms": {k: round(v[1] * 1000, 1) for k, v in med.items()},
           "ratio_vs_plain": round(wb / med["plain_llamacpp"][0], 3)}
    for k, label in (("workbench_bf16", "ratio_vs_bf16"), ("workbench_nf4", "ratio_vs_nf4")):
        if k in med and med[k][0]:
            out[label] = round(wb / med[k][0], 2)
    print(json.dumps(out, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
