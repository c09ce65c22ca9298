"""The quantization study on the embedded model: memory, speed and quality per variant.

    python bench/bench_quant.py [--device cpu] [--variants bfloat16,int8,nf4,nf4+dq,fp4,gguf,llamacpp:Q8_0,...]
                                [--gguf-source NAME_OR_FILE] [--eval-tokens 1024] [--allow-unknown-cache] [--json]

Uses the seeded SmolLM2-135M-Instruct from the user store (`make seed`, which also adds its
Q4_1 GGUF). The default variants put bitsandbytes and GGUF side by side: ``gguf`` is every store
GGUF of the same model (run on llama.cpp as stored), ``llamacpp:F16`` the F16 GGUF llama.cpp's
quantizer starts from (written from the safetensors into a temporary folder unless
``--gguf-source`` names one), ``llamacpp:Q8_0`` and ``llamacpp:Q4_K_M`` its quantizations.
``--allow-unknown-cache`` loads a model whose cache the store cannot measure (as ``workbench run``'s).
Prints the table and the recommendation; with --json, one JSON document.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from workbench.quant import compare


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="SmolLM2-135M-Instruct")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variants",
                    default="bfloat16,int8,nf4,nf4+dq,fp4,gguf,llamacpp:F16,llamacpp:Q8_0,llamacpp:Q4_K_M")
    ap.add_argument("--gguf-source", default=None, help="F16/BF16/F32 GGUF (store entry or file) to quantize from")
    ap.add_argument("--eval-tokens", type=int, default=1024)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--allow-unknown-cache", action="store_true",
                    help="load even when the store cannot measure the model's KV cache (leave room for it yourself)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    t = time.perf_counter()
    study = compare(args.model, args.variants.split(","), args.device, max_eval_tokens=args.eval_tokens,
                    new_tokens=args.new_tokens, gguf_source=args.gguf_source,
                    allow_unknown_cache=args.allow_unknown_cache,
                    progress=lambda msg, frac: print(f"[{frac:4.0%}] {msg}", file=sys.stderr, flush=True))
    elapsed = time.perf_counter() - t
    if args.json:
        print(json.dumps({**study.to_dict(), "elapsed_s": elapsed}, default=str))
    else:
        print(study.format_table())
        print()
        print("recommendation:", study.recommendation().reason)
        print(f"({study.eval_tokens} evaluation tokens, {elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
