"""Run in a fresh interpreter by test_memory.py: peak and returned RSS around real loads.

Prints one JSON document. A subprocess gives a clean measurement: no other test's
models, caches or heap fragments in the process.

Usage: python _memory_probe.py STORE_ROOT [STORE_ROOT...]
"""

from __future__ import annotations

import gc
import json
import sys
import threading
import time

import psutil

SMOL = "SmolLM2-135M-Instruct"


class PeakSampler:
    """Samples RSS every millisecond on a thread; the max is the load's peak."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.001)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def main(roots: list[str]) -> dict:
    import bitsandbytes  # noqa: F401  (imports are not what we measure)
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from workbench.errors import LoadCancelledError
    from workbench.runtime import GenerationParams, LoadSpec, Registry, generate, measure_bandwidth
    from workbench.runtime._memory import release_memory, rss_bytes
    from workbench.store import ModelStore

    reg = Registry(ModelStore(roots, cache_path=None))
    params = GenerationParams(temperature=0, max_new_tokens=8)
    # Warm up every code path once (model classes, bitsandbytes kernels, the bandwidth probe).
    for quant in ("none", "int8", "nf4"):
        m = reg.load(LoadSpec("tiny-llama", dtype="bfloat16", quant=quant))
        generate(m, "Hello", params)
        reg.unload(m.name)
        del m
    measure_bandwidth("cpu")
    release_memory()

    out: dict = {}
    for label, spec in (("nf4", LoadSpec(SMOL, quant="nf4")), ("int8", LoadSpec(SMOL, quant="int8")),
                        ("bf16", LoadSpec(SMOL))):
        release_memory()
        base = rss_bytes()
        with PeakSampler() as s:
            m = reg.load(spec)
        r = generate(m, "What is the capital of France?", params)
        report = reg.unload(m.name)
        est = m.estimate
        del m
        gc.collect()
        after = rss_bytes()
        out[label] = {"baseline": base, "peak_delta": s.peak - base, "load_peak_bytes": est.load_peak_bytes,
                      "total_bytes": est.total_bytes, "after_delta": after - base, "text": r.text,
                      "report_after_delta": report.rss_after_bytes - base}

    # A load cancelled half-way through the weights gives its memory back too.
    release_memory()
    base = rss_bytes()
    cancel = threading.Event()

    def progress(p):
        if p.phase == "weights" and p.fraction > 0.5:
            cancel.set()

    try:
        reg.load(LoadSpec(SMOL, quant="nf4"), progress=progress, cancel=cancel)
        out["cancel"] = {"error": "not cancelled"}
    except LoadCancelledError:
        gc.collect()
        time.sleep(0.2)  # loader threads finishing their last tensor
        release_memory()
        out["cancel"] = {"after_delta": rss_bytes() - base, "loaded": len(reg)}
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
