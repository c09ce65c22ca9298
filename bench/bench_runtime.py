"""The runtime against plain transformers: load time and greedy decode speed, alternating.

    python bench/bench_runtime.py [--device cpu] [--dtype bfloat16] [--rounds 5]
                                  [--new-tokens 48] [--json]

Uses the seeded SmolLM2-135M-Instruct (`make seed`). In one process, each round:

* load with the workbench (``Registry.load``: fit check, tokenizer, weights, placement)
  and with plain transformers (``AutoTokenizer`` + ``AutoModelForCausalLM.from_pretrained``
  with the same dtype and device), in alternating order, unloading in between;
* greedy-decode the same chat prompt to the same token count through the workbench
  (``stream``, consumed piece by piece) and through plain ``generate`` (chat template,
  tokenizing and ``generate`` all inside the timed region for both).

Prints medians and ``load_ratio`` (workbench / plain; target <= 1.05) and
``decode_ratio`` (workbench tokens/s / plain tokens/s, end to end; target >= 0.97).
The plain load includes the tokenizer because generating needs one; the
model-only ratio is printed too.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time

SMOL = "SmolLM2-135M-Instruct"
PROMPT = "Write a long story about a dragon who learns to bake bread."


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=SMOL)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workbench.runtime import GenerationParams, LoadSpec, get_registry, stream
    from workbench.runtime._memory import release_memory
    from workbench.store import ModelStore

    entry = ModelStore().get(args.model)
    registry = get_registry()
    spec = LoadSpec(entry, devices=(args.device,), dtype=args.dtype)
    device_map = "cpu" if args.device == "cpu" else {"": args.device}

    def wb_load() -> float:
        t = time.perf_counter()
        m = registry.load(spec)
        elapsed = time.perf_counter() - t
        registry.unload(m.name)
        return elapsed

    def plain_load() -> tuple[float, float]:
        t = time.perf_counter()
        tok = AutoTokenizer.from_pretrained(entry.path)
        t_tok = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(entry.path, dtype=getattr(torch, args.dtype),
                                                     device_map=device_map)
        t_end = time.perf_counter()
        del model, tok
        release_memory()  # the same clean-up the workbench's unload does, outside the timing
        return t_end - t, t_end - t_tok

    log(f"warming up ({args.model}, {args.dtype} on {args.device})")
    wb_load()
    plain_load()
    wb_times, plain_times, plain_model_times = [], [], []
    for i in range(args.rounds):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for which in order:
            if which == 0:
                wb_times.append(wb_load())
            else:
                total, model_only = plain_load()
                plain_times.append(total)
                plain_model_times.append(model_only)
        log(f"load round {i + 1}: workbench {wb_times[-1]:.3f} s, plain {plain_times[-1]:.3f} s")

    # Decode: both models in memory, same prompt, same greedy tokens.
    loaded = registry.load(spec)
    tok = AutoTokenizer.from_pretrained(entry.path)
    plain = AutoModelForCausalLM.from_pretrained(entry.path, dtype=getattr(torch, args.dtype), device_map=device_map)
    plain.eval()
    params = GenerationParams(temperature=0, max_new_tokens=args.new_tokens)

    def wb_decode() -> tuple[float, int, float]:
        t = time.perf_counter()
        s = stream(loaded, PROMPT, params)
        for _piece in s:
            pass
        elapsed = time.perf_counter() - t
        return elapsed, s.result.new_tokens, s.result.tokens_per_s

    def plain_decode() -> tuple[float, int]:
        t = time.perf_counter()
        text = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                       tokenize=False)
        enc = tok(text, return_tensors="pt", add_special_tokens=False).to(args.device)
        with torch.inference_mode():
            out = plain.generate(**enc, max_new_tokens=args.new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        n = out.shape[1] - enc["input_ids"].shape[1]
        tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return time.perf_counter() - t, int(n)

    wb_decode()  # warm-up; also measures the memory bandwidth once
    plain_decode()
    wb_rates, plain_rates, wb_reported = [], [], []
    counts = set()
    for i in range(args.rounds):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for which in order:
            if which == 0:
                elapsed, n, reported = wb_decode()
                wb_rates.append(n / elapsed)
                wb_reported.append(reported)
                counts.add(("workbench", n))
            else:
                elapsed, n = plain_decode()
                plain_rates.append(n / elapsed)
                counts.add(("plain", n))
        log(f"decode round {i + 1}: workbench {wb_rates[-1]:.1f} tokens/s, plain {plain_rates[-1]:.1f} tokens/s")
    last = stream(loaded, PROMPT, params)
    last.wait()
    efficiency = last.result.decode_efficiency
    bandwidth = last.result.bandwidth_bytes_per_s
    registry.unload(loaded.name)
    plain = None  # noqa: F841 (drop the model before the summary)
    gc.collect()

    med = statistics.median
    doc = {
        "model": args.model, "device": args.device, "dtype": args.dtype, "rounds": args.rounds,
        "new_tokens": args.new_tokens, "token_counts": sorted(counts),
        "load_workbench_s": med(wb_times), "load_plain_s": med(plain_times),
        "load_plain_model_only_s": med(plain_model_times),
        "load_ratio": med(wb_times) / med(plain_times),
        "load_ratio_model_only": med(wb_times) / med(plain_model_times),
        "decode_workbench_tokens_per_s": med(wb_rates), "decode_plain_tokens_per_s": med(plain_rates),
        "decode_ratio": med(wb_rates) / med(plain_rates),
        "workbench_reported_decode_tokens_per_s": med(wb_reported),
        "decode_efficiency": efficiency, "bandwidth_bytes_per_s": bandwidth,
        "targets": {"load_ratio": "<= 1.05", "decode_ratio": ">= 0.97"},
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
    }
    doc["load_ok"] = doc["load_ratio"] <= 1.05
    doc["decode_ok"] = doc["decode_ratio"] >= 0.97
    if args.json:
        print(json.dumps(doc))
    else:
        print(f"{args.model}, {args.dtype} on {args.device}, median of {args.rounds} alternating rounds")
        print(f"load    workbench {doc['load_workbench_s']:.3f} s   plain {doc['load_plain_s']:.3f} s "
              f"(model only {doc['load_plain_model_only_s']:.3f} s)   load_ratio {doc['load_ratio']:.3f} "
              f"(model only {doc['load_ratio_model_only']:.3f})  target <= 1.05")
        print(f"decode  workbench {doc['decode_workbench_tokens_per_s']:.1f} tokens/s   plain "
              f"{doc['decode_plain_tokens_per_s']:.1f} tokens/s   decode_ratio {doc['decode_ratio']:.3f}  "
              f"target >= 0.97")
        eff = "N/A" if efficiency is None else f"{100 * efficiency:.0f}%"
        bw = "N/A" if bandwidth is None else f"{bandwidth / 1e9:.1f} GB/s"
        print(f"workbench-reported decode {doc['workbench_reported_decode_tokens_per_s']:.1f} tokens/s, "
              f"decode efficiency {eff} of {bw}; token counts {sorted(counts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
