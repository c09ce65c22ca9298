"""Check every GPU path of the runtime in one run, on a machine with an NVIDIA GPU.

    python bench/gpu_check.py [--device cuda:0] [--json]
    python bench/gpu_check.py --dry-run        # on a CPU-only machine: the same checks on "cpu"

For bfloat16, int8 and nf4 it loads the embedded SmolLM2-135M-Instruct (`make seed`)
on the device, checks the placement and the footprint against the store's estimate
(within 3%), answers "What is the capital of France?" greedily (Paris), stops a stream
after three pieces, unloads, and checks that CUDA memory went back. It also checks a
refusal (a ``max_memory`` budget too small), the NVML free memory the fit check used,
and, with two or more GPUs, a load split across cuda:0 and cuda:1. With vLLM installed
(setting ``vllm_command``), it serves the model through vLLM, asks for Paris over the
OpenAI API and stops it (skipped with a message otherwise). With the seeded GGUF entry
(SmolLM2-135M-Instruct-GGUF) and a CUDA build of llama-cpp-python (``make setup
LLAMA_CMAKE_ARGS=-DGGML_CUDA=on``), it loads it on llama.cpp with every layer on the GPU,
checks llama.cpp's footprint against the store's estimate, answers Paris, and unloads
(on a CPU build the step says it offloads nothing and fails on a GPU; on --dry-run it runs on the CPU).

Each check prints PASS, FAIL or SKIP with its numbers; the summary table shows
footprints (estimated and measured), tokens/s, decode efficiency against the measured
bandwidth, and memory after unload. The exit status is 1 if any check failed, 2 if
the machine cannot run the checks at all (no CUDA without --dry-run, no seeded model).

``--dry-run`` runs everything it can on the CPU (the same loads, generations and
unloads with RSS instead of CUDA memory) plus the multi-GPU ``max_memory`` map
against the NVML fakes of tests/fakes, so the script itself is tested on any machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from workbench.precision import is_gpu

MiB = 2**20
GiB = 2**30
SMOL = "SmolLM2-135M-Instruct"
PROMPT = "What is the capital of France?"
#: Memory an unload may leave behind: allocator rounding, cuBLAS workspaces, heap pages.
UNLOAD_MARGIN = 64 * MiB


class Checks:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def record(self, name: str, ok: bool | None, detail: str = "") -> bool:
        status = "SKIP" if ok is None else ("PASS" if ok else "FAIL")
        self.rows.append({"check": name, "status": status, "detail": detail})
        print(f"{status:4}  {name}: {detail}", flush=True)
        return bool(ok)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] == "FAIL"]


def mib(n: float | int | None) -> str:
    return "N/A" if n is None else f"{n / MiB:.1f} MiB"


def cuda_state(torch: Any, device: str) -> dict[str, int]:
    torch.cuda.synchronize(device)
    return {"allocated": int(torch.cuda.memory_allocated(device)), "reserved": int(torch.cuda.memory_reserved(device))}


def nvml_used(device: str) -> int | None:
    """Memory NVML says is used on the device (all processes): what other users see."""
    from workbench.devices import get_device

    try:
        return get_device(device).memory_used_bytes
    except Exception:  # noqa: BLE001 (a diagnostic: any failure just means "unknown")
        return None


def run_variant(checks: Checks, entry: Any, device: str, label: str, dtype: str, quant: str,
                new_tokens: int) -> dict[str, Any]:
    import torch

    from workbench.errors import WorkbenchError
    from workbench.runtime import GenerationParams, LoadSpec, generate, get_registry, stream
    from workbench.runtime._memory import release_memory, rss_bytes

    reg = get_registry()
    on_gpu = is_gpu(device)
    row: dict[str, Any] = {"variant": label, "device": device}
    release_memory()
    before_cuda = cuda_state(torch, device) if on_gpu else None
    before_nvml = nvml_used(device) if on_gpu else None
    before_rss = rss_bytes()
    t = time.perf_counter()
    try:
        m = reg.load(LoadSpec(entry, devices=(device,), dtype=dtype, quant=quant))
    except WorkbenchError as exc:
        checks.record(f"{label}: load on {device}", False, str(exc))
        return row
    row["load_s"] = time.perf_counter() - t
    checks.record(f"{label}: load on {device}", True, f"{row['load_s']:.2f} s, phases "
                  + ", ".join(f"{k} {v:.2f} s" for k, v in m.load_times_s.items()))
    row["estimate_bytes"] = m.estimate.weights_bytes if m.estimate else None
    row["footprint_bytes"] = m.footprint_bytes
    err = m.estimate_error
    row["estimate_error"] = err
    checks.record(f"{label}: footprint within 3% of the estimate", err is not None and abs(err) <= 0.03,
                  f"estimated {mib(row['estimate_bytes'])}, measured {mib(m.footprint_bytes)} "
                  f"({100 * err:+.2f}%)" if err is not None else "no estimate")
    devices = set(m.module_devices.values()) | set(m.placement)
    checks.record(f"{label}: every module on {device}", devices == {device},
                  f"placement {m.placement_str}; modules on {sorted(devices)}")
    if on_gpu and m.fit is not None:
        free = m.fit.budgets[0].free_bytes
        checks.record(f"{label}: fit check used NVML free memory", free is not None,
                      f"{mib(free)} free before load; needed {mib(m.fit.needed_bytes)}")
    try:
        r = generate(m, PROMPT, GenerationParams(temperature=0, max_new_tokens=new_tokens))
        row.update(text=r.text, tokens_per_s=r.tokens_per_s, ttft_s=r.ttft_s, decode_efficiency=r.decode_efficiency,
                   bandwidth_bytes_per_s=r.bandwidth_bytes_per_s, new_tokens=r.new_tokens)
        checks.record(f"{label}: answers Paris", "Paris" in r.text, repr(r.text[:80]))
        eff = r.decode_efficiency
        checks.record(f"{label}: metrics", r.tokens_per_s > 0 and r.ttft_s > 0 and r.bandwidth_bytes_per_s is not None
                      and (eff is None or 0 < eff <= 1.0),
                      f"{r.new_tokens} tokens, TTFT {r.ttft_s * 1000:.0f} ms, {r.tokens_per_s:.1f} tokens/s, "
                      f"efficiency {r.efficiency_str} of {mib(r.bandwidth_bytes_per_s)}/s")
        s = stream(m, "Tell me a long story about a lighthouse keeper.",
                   GenerationParams(temperature=0.7, seed=0, max_new_tokens=200))
        pieces = 0
        for _piece in s:
            pieces += 1
            if pieces == 3:
                s.stop()
        checks.record(f"{label}: stream stops on request", s.result.stopped_by == "cancelled"
                      and s.result.new_tokens < 200, f"{s.result.new_tokens} tokens, {s.result.stopped_by}")
    except WorkbenchError as exc:
        checks.record(f"{label}: generate", False, str(exc))
    report = reg.unload(m.name)
    del m
    release_memory()
    row["rss_delta_bytes"] = rss_bytes() - before_rss
    if on_gpu:
        after = cuda_state(torch, device)
        row["cuda_after"] = after
        row["cuda_reserved_after_unload"] = report.cuda_after_bytes.get(device)
        leaked = after["allocated"] - before_cuda["allocated"]
        checks.record(f"{label}: CUDA memory back after unload", leaked <= UNLOAD_MARGIN
                      and after["reserved"] - before_cuda["reserved"] <= UNLOAD_MARGIN,
                      f"allocated {mib(before_cuda['allocated'])} -> {mib(after['allocated'])}, reserved "
                      f"{mib(before_cuda['reserved'])} -> {mib(after['reserved'])}, freed {report.freed_str}")
        used = nvml_used(device)
        if before_nvml is not None and used is not None:
            # The first load starts the CUDA context (hundreds of MB) that stays for the process.
            row["nvml_used_delta_bytes"] = used - before_nvml
            checks.record(f"{label}: NVML used memory back after unload", used - before_nvml <= UNLOAD_MARGIN,
                          f"{mib(before_nvml)} -> {mib(used)} (all processes on the device)")
    else:
        checks.record(f"{label}: RSS back after unload", row["rss_delta_bytes"] <= UNLOAD_MARGIN,
                      f"{mib(before_rss)} -> {mib(before_rss + row['rss_delta_bytes'])}, freed {report.freed_str}")
    return row


def check_refusal(checks: Checks, entry: Any, device: str) -> None:
    from workbench.errors import InsufficientMemoryError
    from workbench.runtime import LoadSpec, get_registry

    try:
        get_registry().load(LoadSpec(entry, devices=(device,), max_memory={device: 16 * MiB}))
    except InsufficientMemoryError as exc:
        checks.record("refusal when the budget is too small", "needs about" in str(exc), str(exc)[:160])
    else:
        get_registry().unload_all()
        checks.record("refusal when the budget is too small", False, "the load was not refused")


def check_fake_multi_gpu(checks: Checks) -> None:
    """The two-GPU max_memory map, against the NVML fakes (no GPU needed)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from transformers import LlamaConfig

    from fakes.fake_pynvml import FakeGpu, FakeProcess, installed, make_fake_nvml
    from workbench.runtime import LoadSpec, check_fit, placement_plan
    from workbench.runtime.fit import CUDA_CONTEXT_BYTES
    from workbench.store import ModelEntry, WeightStats

    params = 16_000_000_000
    # A Llama config of the fake's shape, so the store measures its KV cache (transformers' meta-device cache):
    # without one the cache is unknown, and an unknown cache is never counted as no cache.
    folder = Path(tempfile.mkdtemp(prefix="gpu-check-fake-"))
    LlamaConfig(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                num_key_value_heads=8, vocab_size=32000).save_pretrained(folder)
    entry = ModelEntry(name="fake-16b", path=folder, root=folder.parent, writable=False,
                       format="safetensors", params=params, dtype="bfloat16", num_layers=40, num_kv_heads=8,
                       head_dim=128, weights=WeightStats(params=params, linear_params=params // 10 * 9,
                                                         linear_rows=params // 5120, linear_count=280,
                                                         bytes_by_dtype={"BF16": 2 * params}))
    fake = make_fake_nvml([FakeGpu(processes=[FakeProcess(4242, 3 * GiB)]), FakeGpu()])
    try:
        with installed(fake, torch=fake.torch_cuda()):
            spec = LoadSpec(entry, devices=("cuda:0", "cuda:1")).validate()
            chk = check_fit(entry, spec)
            device_map, mm = placement_plan(spec, chk)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    # cuda:0's budget is its free memory less the CUDA context and its share of the KV cache (so strictly
    # below 21 GiB less the context), and below cuda:1's by the other process's 3 GiB.
    ok = device_map == "auto" and set(mm) == {0, 1} and mm[0] < 21 * GiB - CUDA_CONTEXT_BYTES < mm[1]
    checks.record("fake 2x24 GiB GPUs: max_memory map", ok and chk.fits is True,
                  f"{ {k: mib(v) for k, v in mm.items()} }, fits={chk.fits}")


def check_real_multi_gpu(checks: Checks, entry: Any) -> None:
    import torch

    from workbench.errors import WorkbenchError
    from workbench.runtime import GenerationParams, LoadSpec, generate, get_registry

    if torch.cuda.device_count() < 2:
        checks.record("split across cuda:0 and cuda:1", None, "fewer than two GPUs")
        return
    reg = get_registry()
    # Cap cuda:0 below the model so accelerate has to put layers on cuda:1.
    spec = LoadSpec(entry, devices=("cuda:0", "cuda:1"), dtype="bfloat16",
                    max_memory={"cuda:0": 160 * MiB, "cuda:1": 4 * GiB})
    try:
        m = reg.load(spec)
        r = generate(m, PROMPT, GenerationParams(temperature=0, max_new_tokens=16))
        checks.record("split across cuda:0 and cuda:1", set(m.placement) == {"cuda:0", "cuda:1"} and "Paris" in r.text,
                      f"placement {m.placement_str}; {r.tokens_per_s:.1f} tokens/s")
        reg.unload(m.name)
    except WorkbenchError as exc:
        checks.record("split across cuda:0 and cuda:1", False, str(exc))


def check_vllm(checks: Checks, entry: Any, device: str) -> None:
    """Serve the model with vLLM (setting ``vllm_command``) on ``device``, ask for Paris, stop it."""
    name = "vLLM serve, streaming chat, stop"
    from workbench.errors import WorkbenchError
    from workbench.runtime import GenerationParams
    from workbench.serve import EndpointClient, serve, stop
    from workbench.serve.engines import vllm_command
    from workbench.serve.listener import group_members
    from workbench.serve.process import port_open

    if not is_gpu(device):
        checks.record(name, None, "no GPU (vLLM runs on GPUs only)")
        return
    if vllm_command() is None:
        checks.record(name, None, "vLLM not found: install it in its own venv and set WORKBENCH_VLLM_COMMAND "
                                  "to its `vllm` (see README, Serving)")
        return
    try:
        t0 = time.perf_counter()
        ep = serve(entry.name, engine="vllm", devices=(device,), dtype="bfloat16", name="gpu-check-vllm",
                   ready_timeout_s=900)
        try:
            r = EndpointClient(ep).chat(PROMPT, GenerationParams(temperature=0, max_new_tokens=16))
            util = ep.argv[list(ep.argv).index("--gpu-memory-utilization") + 1]
            max_len = ep.argv[list(ep.argv).index("--max-model-len") + 1]
        finally:
            stop(ep.name)
        port = int(ep.base_url.rsplit(":", 1)[1].split("/")[0])
        left = bool(group_members(ep.pid)) or port_open("127.0.0.1", port)
        checks.record(name, "Paris" in r.text and not left,
                      f"ready in {ep.ready_s:.0f} s (total {time.perf_counter() - t0:.0f} s), utilization {util}, "
                      f"max-model-len {max_len}, TTFT {r.ttft_s:.3f} s, {r.tokens_per_s:.1f} tokens/s; "
                      f"{'nothing left running' if not left else 'LEFT RUNNING'}; answer {r.text!r}")
    except WorkbenchError as exc:
        checks.record(name, False, str(exc)[:2000])


GGUF = "SmolLM2-135M-Instruct-GGUF"


def check_llamacpp(checks: Checks, device: str) -> None:
    """The seeded GGUF on llama.cpp with all layers on ``device``: placement, footprint, Paris, unload."""
    name = f"llama.cpp: all layers on {device}, Paris, unload"
    from workbench.errors import WorkbenchError
    from workbench.runtime import GenerationParams, LoadSpec, generate, get_registry
    from workbench.store import ModelStore

    try:
        entry = ModelStore().get(GGUF)
    except WorkbenchError as exc:
        checks.record(name, None, f"no GGUF entry ({exc}); run `workbench store seed`")
        return
    try:
        import llama_cpp
    except ImportError:
        checks.record(name, None, "llama-cpp-python is not installed (make setup builds it)")
        return
    offload = bool(getattr(llama_cpp, "llama_supports_gpu_offload", lambda: False)())
    if is_gpu(device) and not offload:
        checks.record(name, False, "this llama-cpp-python is a CPU build: rebuild it with "
                                   "`make clean && make setup LLAMA_CMAKE_ARGS=-DGGML_CUDA=on`")
        return
    reg = get_registry()
    try:
        t = time.perf_counter()
        m = reg.load(LoadSpec(entry, devices=(device,), n_ctx=1024))
        load_s = time.perf_counter() - t
        try:
            kwargs = m.model.placement_kwargs
            r = generate(m, PROMPT, GenerationParams(temperature=0, max_new_tokens=16,
                                                     system_prompt="You are a helpful assistant."))
            est = m.estimate.weights_bytes if m.estimate else None
        finally:
            report = reg.unload(m.name)
        placed = kwargs.get("n_gpu_layers") == (-1 if is_gpu(device) else 0)
        ok = placed and "Paris" in r.text and m.engine == "llamacpp" and est == m.footprint_bytes
        checks.record(name, ok, f"{kwargs}, load {load_s:.2f} s, footprint {mib(m.footprint_bytes)} (estimate "
                                f"{mib(est)}), TTFT {r.ttft_s:.3f} s, {r.tokens_per_s:.1f} tokens/s, freed "
                                f"{mib(report.freed_bytes)}; answer {r.text!r}")
    except WorkbenchError as exc:
        checks.record(name, False, str(exc)[:2000])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--model", default=SMOL)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--variants", default="bf16,int8,nf4", help="comma-separated subset of bf16,int8,nf4")
    ap.add_argument("--dry-run", action="store_true", help="run what can run on the CPU (no GPU needed)")
    ap.add_argument("--json", action="store_true", help="print one JSON document at the end")
    args = ap.parse_args(argv)

    import torch

    from workbench.errors import WorkbenchError
    from workbench.store import ModelStore

    checks = Checks()
    device = "cpu" if args.dry_run else args.device
    if not args.dry_run and not torch.cuda.is_available():
        print(f"FAIL  CUDA: torch {torch.__version__} sees no GPU; run with --dry-run on a CPU-only machine")
        return 2
    try:
        entry = ModelStore().get(args.model)
    except WorkbenchError as exc:
        print(f"FAIL  model: {exc}")
        return 2
    if is_gpu(device):
        props = torch.cuda.get_device_properties(device)
        print(f"{props.name}, {props.total_memory / GiB:.0f} GiB, torch {torch.__version__}, "
              f"CUDA {torch.version.cuda}", flush=True)
    else:
        print(f"dry run on the CPU, torch {torch.__version__}", flush=True)

    # Warm up once (model code, tokenizer, bitsandbytes, the CUDA context, the bandwidth
    # probe), so the memory checks below measure the models, not first-use costs.
    import bitsandbytes  # noqa: F401

    from workbench.runtime import GenerationParams, LoadSpec, generate, get_registry

    warm = get_registry().load(LoadSpec(entry, devices=(device,), dtype="bfloat16"))
    generate(warm, PROMPT, GenerationParams(temperature=0, max_new_tokens=2))
    get_registry().unload(warm.name)
    del warm

    wanted = {v.strip() for v in args.variants.split(",") if v.strip()}
    rows = [run_variant(checks, entry, device, label, dtype, quant, args.new_tokens)
            for label, dtype, quant in (("bf16", "bfloat16", "none"), ("int8", "bfloat16", "int8"),
                                        ("nf4", "bfloat16", "nf4")) if label in wanted]
    check_refusal(checks, entry, device)
    check_fake_multi_gpu(checks)
    if is_gpu(device):
        check_real_multi_gpu(checks, entry)
    check_vllm(checks, entry, device)
    check_llamacpp(checks, device)

    print()
    after_col = "CUDA alloc/reserved after" if is_gpu(device) else "RSS delta after"
    print(f"{'variant':8} {'estimate':>11} {'measured':>11} {'error':>7} {'tokens/s':>9} {'efficiency':>10}  {after_col}")
    for r in rows:
        if "footprint_bytes" not in r:
            print(f"{r['variant']:8} (failed to load)")
            continue
        eff = r.get("decode_efficiency")
        after = (f"{mib(r['cuda_after']['allocated'])} / {mib(r['cuda_after']['reserved'])}" if "cuda_after" in r
                 else mib(r.get("rss_delta_bytes")))
        print(f"{r['variant']:8} {mib(r['estimate_bytes']):>11} {mib(r['footprint_bytes']):>11} "
              f"{100 * (r['estimate_error'] or 0):+6.2f}% {r.get('tokens_per_s', 0):9.1f} "
              f"{'N/A' if eff is None else f'{100 * eff:.0f}%':>10}  {after}")
    failed = checks.failed
    print(f"\n{len(checks.rows) - len(failed)} of {len(checks.rows)} checks passed or skipped; "
          f"{len(failed)} failed" + (": " + "; ".join(f["check"] for f in failed) if failed else ""))
    if args.json:
        print(json.dumps({"device": device, "dry_run": args.dry_run, "checks": checks.rows, "variants": rows},
                         default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
