"""The quantization study on the embedded model: memory, speed and quality per variant.

    python bench/bench_quant.py [--device cpu] [--variants bfloat16,int8,nf4,nf4+dq,fp4]
                                [--eval-tokens 1024] [--json]

Uses the seeded SmolLM2-135M-Instruct from the user store (`make seed`). Prints the
table and the recommendation; with --json, one JSON document.
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
    ap.add_argument("--variants", default="bfloat16,int8,nf4,nf4+dq,fp4")
    ap.add_argument("--eval-tokens", type=int, default=1024)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    t = time.perf_counter()
    study = compare(args.model, args.variants.split(","), args.device, max_eval_tokens=args.eval_tokens,
                    new_tokens=args.new_tokens,
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
