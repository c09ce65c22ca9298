"""What rendering a chat template in the bounded worker costs, against transformers rendering it in-process.

The embedded SmolLM2-135M-Instruct's tokenizer and template (seeded into the user store),
a two-message chat; ``tokenizer.apply_chat_template(..., tokenize=False)`` in this process
against :func:`workbench.chat_template.render_chat_template` (one round trip to the
worker per call), one prompt at a time and as a batch of 16. Also the worker's start (once
per process) and its restart after a template is stopped.

    python bench/bench_chat_template.py [--n 500] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def _per_call_ms(fn, n: int) -> float:
    samples = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - t) / n * 1000)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from workbench import chat_template as ct
    from workbench.errors import ChatTemplateError
    from workbench.store import ModelStore
    from workbench.store.importer import DEFAULT_MODEL_NAME

    entry = ModelStore().get(DEFAULT_MODEL_NAME)
    tok = AutoTokenizer.from_pretrained(entry.path)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]
    t = time.perf_counter()
    ct.render_chat_template(tok, msgs, source="bench")
    start_s = time.perf_counter() - t
    assert ct.render_chat_template(tok, msgs, source="bench") == tok.apply_chat_template(
        msgs, add_generation_prompt=True, tokenize=False)

    plain_ms = _per_call_ms(lambda: tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False), args.n)
    bounded_ms = _per_call_ms(lambda: ct.render_chat_template(tok, msgs, source="bench"), args.n)
    batch = [msgs] * 16
    plain_batch_ms = _per_call_ms(lambda: tok.apply_chat_template(batch, add_generation_prompt=True, tokenize=False),
                                  max(1, args.n // 16))
    bounded_batch_ms = _per_call_ms(lambda: ct.render_chat_template(tok, batch, source="bench"), max(1, args.n // 16))

    t = time.perf_counter()
    try:
        ct.render_chat_templates("{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
                                 [msgs], source="bench", timeout_s=1.0)
    except ChatTemplateError:
        pass
    stopped_s = time.perf_counter() - t
    t = time.perf_counter()
    ct.render_chat_template(tok, msgs, source="bench")
    restart_s = time.perf_counter() - t

    doc = {"worker_start_s": start_s, "plain_ms": plain_ms, "bounded_ms": bounded_ms,
           "ratio": bounded_ms / plain_ms, "plain_batch16_ms": plain_batch_ms, "bounded_batch16_ms": bounded_batch_ms,
           "batch_ratio": bounded_batch_ms / plain_batch_ms, "stopped_after_s": stopped_s, "restart_s": restart_s}
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    print(f"worker start (once per process): {start_s:.2f} s")
    print(f"one prompt:  transformers in-process {plain_ms:.3f} ms, bounded worker {bounded_ms:.3f} ms "
          f"({doc['ratio']:.1f}x, +{bounded_ms - plain_ms:.3f} ms)")
    print(f"16 prompts:  transformers in-process {plain_batch_ms:.3f} ms, bounded worker {bounded_batch_ms:.3f} ms "
          f"({doc['batch_ratio']:.1f}x)")
    print(f"a looping template stopped after {stopped_s:.2f} s (timeout 1 s); the next render restarted the worker "
          f"in {restart_s:.2f} s")


if __name__ == "__main__":
    main()
