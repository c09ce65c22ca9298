"""GGUF entries in the kernel through llama.cpp: placement through a fake at the llama_cpp
boundary, and the real engine for the rest (Paris, stream, stop strings, Stop, batches, unload)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import gguf
import pytest

from workbench.runtime import GenerationParams, LoadSpec, generate, generate_batch, llamacpp, stream
from workbench.runtime.registry import Registry
from workbench.store import ModelStore
from workbench.store.importer import DEFAULT_GGUF_NAME, embedded_gguf_path, keep_gguf

SYSTEM = "You are a helpful assistant."
GREEDY = GenerationParams(temperature=0.0, max_new_tokens=24, system_prompt=SYSTEM)


@pytest.fixture(scope="module")
def gguf_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gguf-store")
    keep_gguf(embedded_gguf_path(), ModelStore([root], cache_path=None), name=DEFAULT_GGUF_NAME)
    return root


@pytest.fixture(scope="module")
def gguf_registry(gguf_root):
    reg = Registry(ModelStore([gguf_root], cache_path=None))
    yield reg
    reg.unload_all()


@pytest.fixture(scope="module")
def loaded(gguf_registry):
    return gguf_registry.load(LoadSpec(DEFAULT_GGUF_NAME, n_ctx=1024))


class FakeLlama:
    calls: list[dict] = []

    def __init__(self, **kwargs):
        FakeLlama.calls.append(kwargs)
        self.metadata = {"tokenizer.chat_template": "{{ messages[0]['content'] }}"}
        self.model = object()
        self.closed = False

    def detokenize(self, ids, special=False):
        return b"x" * len(ids)

    def close(self):
        self.closed = True


@pytest.fixture
def fake_llama_cpp(monkeypatch):
    fake = types.ModuleType("llama_cpp")
    fake.Llama = FakeLlama
    fake.llama_model_size = lambda model: 1000
    FakeLlama.calls = []
    monkeypatch.setitem(sys.modules, "llama_cpp", fake)
    return fake


def test_gpus_picked_become_n_gpu_layers_main_gpu_and_tensor_split(gguf_root, fake_llama_cpp):
    entry = ModelStore([gguf_root], cache_path=None).get(DEFAULT_GGUF_NAME)
    out = llamacpp.load(entry, LoadSpec(entry, devices=("cuda:1", "cuda:2")), n_ctx=2048,
                        free_bytes={"cuda:1": 3 * 2**30, "cuda:2": 1 * 2**30})
    [kw] = FakeLlama.calls
    assert kw["n_gpu_layers"] == -1
    assert kw["main_gpu"] == 1
    assert kw["tensor_split"] == [0.0, 0.75, 0.25]
    assert kw["n_ctx"] == 2048
    assert kw["model_path"].endswith(".gguf")
    from workbench.devices.cgroup import usable_cpus

    assert kw["n_threads"] == kw["n_threads_batch"] == usable_cpus()
    assert out.placement == {"cuda:1": 750, "cuda:2": 250}
    assert out.footprint_bytes == 1000
    FakeLlama.calls = []
    out = llamacpp.load(entry, LoadSpec(entry), n_ctx=512)
    [kw] = FakeLlama.calls
    assert kw["n_gpu_layers"] == 0
    assert "tensor_split" not in kw
    assert out.placement == {"cpu": 1000}
    assert llamacpp.gpu_layout(["cuda:0"]) == {"n_gpu_layers": -1, "main_gpu": 0}


def test_threads_follow_the_cgroup_quota(tmp_path, monkeypatch):
    from workbench.devices import cgroup

    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "cpu.max").write_text("100000 100000\n")  # one CPU's worth
    proc = tmp_path / "self-cgroup"
    proc.write_text("0::/user\n")
    monkeypatch.setattr(cgroup, "_CGROUP_ROOT", tmp_path)
    monkeypatch.setattr(cgroup, "_PROC_SELF_CGROUP", proc)
    assert cgroup.usable_cpus() == 1
    (tmp_path / "user" / "cpu.max").write_text("max 100000\n")
    assert cgroup.usable_cpus() == len(os.sched_getaffinity(0))


def test_a_failed_llamacpp_load_names_the_file(gguf_root, fake_llama_cpp):
    def refuse(**kwargs):
        raise ValueError("Failed to load model from file")

    fake_llama_cpp.Llama = refuse
    reg = Registry(ModelStore([gguf_root], cache_path=None))
    with pytest.raises(Exception, match=r"llama.cpp could not load .*\.gguf"):
        reg.load(LoadSpec(DEFAULT_GGUF_NAME))
    assert len(reg) == 0


def test_a_llamacpp_spec_refuses_bitsandbytes():
    with pytest.raises(Exception, match="own quantization"):
        LoadSpec("x", engine="llamacpp", quant="nf4").validate()


def test_the_gguf_entry_answers_paris_on_llamacpp(loaded):
    assert loaded.engine == "llamacpp"
    assert loaded.to_dict()["engine"] == "llamacpp"
    assert loaded.precision == "Q4_1"
    assert loaded.model.n_ctx == 1024
    r = generate(loaded, "What is the capital of France?", GREEDY)
    assert "Paris" in r.text
    assert r.prompt_tokens > 10
    assert r.new_tokens >= 2
    assert r.ttft_s > 0
    assert r.tokens_per_s > 0
    assert r.stopped_by in ("eos", "max_new_tokens")


def test_stream_stop_strings_stop_and_batches(loaded):
    prompt = "What is the capital of France?"
    whole = generate(loaded, prompt, GREEDY)
    s = stream(loaded, prompt, GREEDY)
    pieces = list(s)
    assert "".join(pieces) == s.result.text == whole.text
    assert len(pieces) >= 2
    # A stop string ends it before the string, in the stream and the result.
    cut = whole.text.split()[2]
    r = generate(loaded, prompt, GenerationParams(temperature=0.0, max_new_tokens=24, system_prompt=SYSTEM,
                                                  stop=(cut,)))
    assert r.stopped_by == "stop_string"
    assert cut not in r.text
    assert whole.text.startswith(r.text)
    # Stop after the first piece: the generation ends early and keeps what came.
    s = stream(loaded, prompt, GenerationParams(temperature=0.0, max_new_tokens=200, system_prompt=SYSTEM))
    got = []
    for piece in s:
        got.append(piece)
        s.stop()
    assert s.result.stopped_by in ("cancelled", "eos")
    assert s.result.new_tokens < 200
    # A batch is each prompt alone.
    prompts = [prompt, "Name a colour."]
    batch = generate_batch(loaded, prompts, GREEDY)
    assert [b.text for b in batch] == [generate(loaded, p, GREEDY).text for p in prompts]


def test_unload_returns_the_memory(gguf_root):
    code = f"""
import json, sys
from workbench.runtime import LoadSpec, generate, GenerationParams
from workbench.runtime._memory import rss_bytes, release_memory
from workbench.runtime.registry import Registry
from workbench.store import ModelStore
reg = Registry(ModelStore([{str(gguf_root)!r}], cache_path=None))
import threading
import workbench.runtime.llamacpp as lc

def cycle():
    m = reg.load(LoadSpec({DEFAULT_GGUF_NAME!r}, n_ctx=1024))
    lc.generate_rows(m, ["Hello"], True, GenerationParams(temperature=0.0, max_new_tokens=4),
                     on_piece=None, stop_event=threading.Event(), t0=0.0)
    loaded = rss_bytes()
    report = reg.unload(m.name)
    release_memory()
    return m, loaded, report

cycle()  # the first one maps llama.cpp's libraries and Python's imports, which stay
release_memory(); base = rss_bytes()
m, loaded, report = cycle()
print(json.dumps({{"base": base, "loaded": loaded, "after": rss_bytes(), "freed": report.freed_bytes,
                  "model": m.model}}, default=str))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    m = json.loads(out.stdout.strip().splitlines()[-1])
    assert m["loaded"] - m["base"] > 64 * 2**20  # the mapped weights and the KV cache were resident
    assert m["after"] - m["base"] < 16 * 2**20, m  # and are given back
    assert m["model"] is None


def test_workbench_run_answers_paris_through_llamacpp(gguf_root, tmp_path):
    env = dict(os.environ, WORKBENCH_STORE=os.pathsep.join([str(tmp_path / "user"), str(gguf_root)]))
    out = subprocess.run([sys.executable, "-m", "workbench.cli", "run", DEFAULT_GGUF_NAME, "--prompt",
                          "What is the capital of France?", "--system", SYSTEM, "--json"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert "Paris" in doc["text"]
    assert doc["engine"] == "llamacpp"
    assert doc["dtype"] == "Q4_1"
    # What llama.cpp holds for the weights is every tensor at its stored type: the reference reader's sum.
    tensor_bytes = sum(int(t.n_bytes) for t in gguf.GGUFReader(embedded_gguf_path()).tensors)
    assert doc["footprint_bytes"] == tensor_bytes
    assert doc["freed_bytes"] == doc["footprint_bytes"]


#: Qwen3's shape (as in test_generation): the generation prompt opens ``<think>``, or with
#: ``enable_thinking=False`` closes it empty.
THINK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}{% endif %}")


def test_a_reasoning_template_splits_thinking_on_llamacpp_too(loaded, monkeypatch):
    """The GGUF's template opens <think>: what llama.cpp generates is reasoning, streamed or not,
    as on transformers; closed by enable_thinking=False, it is the answer."""
    monkeypatch.setattr(loaded.tokenizer, "chat_template", THINK_TEMPLATE)
    params = GenerationParams(temperature=0.0, max_new_tokens=12)
    r = generate(loaded, "What is the capital of France?", params)
    assert r.text == ""
    assert r.new_tokens >= 2
    assert len(r.reasoning) > 5
    s = stream(loaded, "What is the capital of France?", params)
    pieces = list(s.pieces())
    assert {p.kind for p in pieces} == {"reasoning"}
    assert "".join(p.text for p in pieces).strip() == r.reasoning
    assert (s.result.text, s.result.reasoning) == ("", r.reasoning)
    off = generate(loaded, "What is the capital of France?",
                   GenerationParams(temperature=0.0, max_new_tokens=12, enable_thinking=False))
    assert off.reasoning == ""
    assert len(off.text) > 5


def test_a_think_close_in_llamacpp_output_parts_reasoning_from_answer(gguf_root, fake_llama_cpp):
    """Text llama.cpp generates as ``thought</think>answer`` (a fake engine at the llama_cpp boundary
    yields the tokens): the thought is reasoning, the answer alone meets the stop strings."""
    import threading

    vocab = ["<eos>", "Let", " me", " think", " Paris", "</think>", "\n\n", "Paris", " is", " it", "."]

    class Thinker(FakeLlama):
        def tokenize(self, data, add_bos=True, special=True):
            return [1] * 5

        def detokenize(self, ids, special=False):
            return "".join(vocab[i] for i in ids).encode()

        def token_eos(self):
            return 0

        def generate(self, ids, reset=True, **kw):
            yield from [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0]

    fake_llama_cpp.Llama = Thinker
    entry = ModelStore([gguf_root], cache_path=None).get(DEFAULT_GGUF_NAME)
    out = llamacpp.load(entry, LoadSpec(entry), n_ctx=512)
    model = types.SimpleNamespace(model=out.model, tokenizer=out.tokenizer, name="thinker")
    shown, thought = [], []
    rows, _ = llamacpp.generate_rows(model, ["q<think>\n"], False,
                                     GenerationParams(temperature=0.0, max_new_tokens=50, stop=(" it",)),
                                     on_piece=shown.append, stop_event=threading.Event(), t0=0.0,
                                     on_reasoning=thought.append)
    text, reasoning, _, _, _, _, stopped = rows[0]
    # The fake's template knows no <think>: nothing is split, the tags stay in the answer.
    assert (text, reasoning, stopped) == ("Let me think Paris</think>\n\nParis is", "", "stop_string")
    shown.clear()
    out.tokenizer.chat_template = "{{ messages[0]['content'] }}<think>"
    rows, _ = llamacpp.generate_rows(model, ["q<think>\n"], False,
                                     GenerationParams(temperature=0.0, max_new_tokens=50, stop=(" it",)),
                                     on_piece=shown.append, stop_event=threading.Event(), t0=0.0,
                                     on_reasoning=thought.append)
    text, reasoning, _, _, _, _, stopped = rows[0]
    assert (text, reasoning, stopped) == ("Paris is", "Let me think Paris", "stop_string")
    assert ("".join(thought), "".join(shown)) == ("Let me think Paris", "Paris is")
