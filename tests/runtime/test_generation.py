"""Generation: chat templates, sampling, streaming with stop, batches, metrics, errors that keep the model."""

from __future__ import annotations

import json
import logging
import sys
import threading
import types

import pytest

from workbench.errors import ConfigError, GenerationError, GenerationOutOfMemoryError
from workbench.runtime import (
    GenerationParams,
    LoadSpec,
    Registry,
    Stream,
    generate,
    generate_batch,
    measure_bandwidth,
    render_prompt,
    stream,
)

GREEDY = GenerationParams(temperature=0, max_new_tokens=24)


# --- the embedded model: real answers ----------------------------------------------------------


@pytest.mark.slow
def test_answer_and_metrics(smol_bf16, events):
    r = generate(smol_bf16, "What is the capital of France?", GREEDY)
    assert "Paris" in r.text and r.stopped_by == "eos"
    assert r.prompt_tokens > 10  # the chat template's system and user turns
    assert 0 < r.new_tokens <= 24
    assert 0 < r.ttft_s <= r.total_s and r.tokens_per_s > 0
    assert r.weight_bytes == smol_bf16.footprint_bytes
    assert r.achieved_bytes_per_s == pytest.approx(r.weight_bytes * r.tokens_per_s)
    # A placement-weighted combination of per-device bandwidths: equal up to float rounding.
    assert r.bandwidth_bytes_per_s == pytest.approx(measure_bandwidth("cpu"), rel=1e-9) and r.bandwidth_bytes_per_s > 0
    assert 0 < r.decode_efficiency <= 1.0  # the roofline: no run beats the memory bandwidth
    assert json.loads(json.dumps(r.to_dict()))["stopped_by"] == "eos"
    assert r.tokens_per_s_str.endswith("tokens/s") and r.efficiency_str.endswith("%")
    finished = events.of("generate_finished")[-1]
    assert finished.data["tokens_per_s"] == r.tokens_per_s and events.of("generate_started")


@pytest.mark.slow
def test_batch_keeps_input_order(smol_bf16):
    prompts = ["What is the capital of France?", "What is the capital of Japan?", "What is the capital of Italy?"]
    params = GenerationParams(temperature=0, max_new_tokens=12)
    results = generate_batch(smol_bf16, prompts, params)
    assert [c in r.text for c, r in zip(["Paris", "Tokyo", "Rome"], results)] == [True, True, True]
    singles = [generate(smol_bf16, p, GenerationParams(temperature=0, max_new_tokens=1)) for p in prompts]
    assert [r.prompt_tokens for r in results] == [s.prompt_tokens for s in singles]
    assert all(r.total_s == results[0].total_s and r.tokens_per_s > 0 for r in results)


@pytest.mark.slow
def test_stop_strings_cut_the_text_and_the_stream(smol_bf16):
    params = GenerationParams(temperature=0, max_new_tokens=40, stop=("5",))
    s = stream(smol_bf16, "Count from 1 to 10, separated by commas. Only the numbers.", params)
    pieces = list(s)
    assert s.result.stopped_by == "stop_string"
    assert "5" not in "".join(pieces) and "".join(pieces) == s.result.text
    assert "4" in s.result.text
    r = generate(smol_bf16, "Count from 1 to 10, separated by commas. Only the numbers.", params)
    assert r.text == s.result.text and r.new_tokens == s.result.new_tokens


def test_chat_template_and_system_prompt(tiny_llama):
    tok = tiny_llama.tokenizer
    text, add_special = render_prompt(tok, "Hi", "Be brief")
    assert text == "<|im_start|>system\nBe brief<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert add_special is False
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert render_prompt(tok, msgs, "ignored")[0].count("system") == 1
    plain = types.SimpleNamespace(chat_template=None)
    assert render_prompt(plain, "Once upon a time") == ("Once upon a time", True)
    assert render_prompt(plain, msgs)[0] == "System: S\nUser: U\nAssistant:"
    with pytest.raises(GenerationError, match="empty"):
        generate(tiny_llama, "   ")
    with pytest.raises(GenerationError, match="role"):
        generate(tiny_llama, [{"text": "x"}])
    with pytest.raises(ConfigError, match="max_new_tokens"):
        generate(tiny_llama, "Hi", GenerationParams(max_new_tokens=0))


# --- the tiny model: mechanics ------------------------------------------------------------------


def test_seed_makes_sampling_reproducible(tiny_llama):
    p = GenerationParams(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=16, seed=1234)
    a, b = generate(tiny_llama, "Hello world", p), generate(tiny_llama, "Hello world", p)
    assert a.text == b.text and a.new_tokens == b.new_tokens
    others = {generate(tiny_llama, "Hello world", GenerationParams(temperature=1.0, top_k=0, top_p=1.0,
                                                                   max_new_tokens=16, seed=s)).text
              for s in (1, 2, 3)}
    assert len(others) > 1  # a random 384-token vocabulary: different seeds, different samples
    g1, g2 = generate(tiny_llama, "Hello world", GREEDY), generate(tiny_llama, "Hello world", GREEDY)
    assert g1.text == g2.text
    assert generate(tiny_llama, "Hello", GenerationParams(repetition_penalty=1.3, top_k=5, max_new_tokens=4,
                                                         seed=0)).new_tokens == 4


def test_stream_matches_generate_and_calls_back(tiny_llama):
    got = []
    s = stream(tiny_llama, "The quick brown fox", GREEDY, on_piece=got.append)
    pieces = list(s)
    assert pieces == got and "".join(pieces) == s.result.text
    assert s.result.text == generate(tiny_llama, "The quick brown fox", GREEDY).text
    assert s.result.stopped_by == "max_new_tokens" and s.result.new_tokens == 24
    cb = []
    assert stream(tiny_llama, "Hello", GREEDY, on_piece=cb.append).wait().text == "".join(cb)


def test_stop_ends_generation_within_one_step(tiny_llama, monkeypatch):
    """stop() during the 5th forward pass: generation ends after that step, 5 tokens in all."""
    model = tiny_llama.model
    real = model.forward
    calls = []
    s = Stream(tiny_llama, "Hello world", GenerationParams(temperature=0, max_new_tokens=200))

    def forward(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            s.stop()
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "forward", forward)
    text = "".join(s)
    assert s.result.stopped_by == "cancelled"
    assert len(calls) == 5 and s.result.new_tokens == 5
    assert text == s.result.text


def test_stop_from_the_consumer(tiny_llama):
    s = stream(tiny_llama, "Hello world", GenerationParams(temperature=0, max_new_tokens=400))
    for _ in s:
        s.stop()
    assert s.result.stopped_by == "cancelled" and s.result.new_tokens < 400


def test_stream_does_not_hang_when_generation_raises(tiny_llama, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("boom in forward")

    monkeypatch.setattr(tiny_llama.model, "forward", broken)
    outcome = {}

    def consume():
        try:
            list(stream(tiny_llama, "Hello", GREEDY))
        except GenerationError as exc:
            outcome["error"] = exc

    t = threading.Thread(target=consume)
    t.start()
    t.join(60)
    assert not t.is_alive()
    assert "boom in forward" in str(outcome["error"]) and "still loaded" in str(outcome["error"])


def test_out_of_memory_keeps_the_model_usable(tiny_llama, monkeypatch, events):
    import torch

    expected = generate(tiny_llama, "Hello world", GREEDY).text
    real = tiny_llama.model.forward
    state = {"raised": 0}

    def once(*args, **kwargs):
        if not state["raised"]:
            state["raised"] += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(tiny_llama.model, "forward", once)
    with pytest.raises(GenerationOutOfMemoryError) as err:
        generate(tiny_llama, "Hello world", GREEDY)
    assert isinstance(err.value, MemoryError) and "still loaded" in str(err.value)
    assert err.value.__context__ is None  # no traceback pinning the activations
    assert generate(tiny_llama, "Hello world", GREEDY).text == expected
    assert events.of("error")[-1].data["error"] == "GenerationOutOfMemoryError"
    state["raised"] = 0
    with pytest.raises(GenerationOutOfMemoryError):
        list(stream(tiny_llama, "Hello world", GREEDY))
    assert tiny_llama.loaded


def test_tiny_weights_have_no_roofline(tiny_llama):
    r = generate(tiny_llama, "Hello", GenerationParams(temperature=0, max_new_tokens=3))
    assert r.decode_efficiency is None and r.efficiency_str == "N/A"  # 385 KiB lives in cache
    assert r.bandwidth_bytes_per_s is not None


def test_bandwidth_is_measured_once(tiny_llama):
    import time

    first = measure_bandwidth("cpu")
    t = time.perf_counter()
    assert measure_bandwidth("cpu") == first
    assert time.perf_counter() - t < 0.01
    with pytest.raises(ValueError):
        measure_bandwidth("tpu:0")


def test_int8_matmul_noise_is_filtered(shared_store, caplog):
    from workbench.runtime import _noise

    reg = Registry(shared_store)
    m = reg.load(LoadSpec("tiny-llama", dtype="bfloat16", quant="int8"))
    before = _noise.suppressed_count
    with caplog.at_level(logging.WARNING):
        generate(m, "Hello", GenerationParams(temperature=0, max_new_tokens=3))
    reg.unload_all()
    assert not [r for r in caplog.records if "MatMul8bitLt" in r.getMessage()]
    assert _noise.suppressed_count > before  # the messages were there, and dropped


@pytest.mark.skipif(sys.platform != "linux", reason="OpenMP pools are released on Linux only")
def test_openmp_pool_is_released_after_a_generation(tiny_llama):
    """One OpenMP team at a time (see workbench/runtime/_memory.py): the release must find libgomp."""
    from workbench.runtime import _memory

    generate(tiny_llama, "Hello", GenerationParams(temperature=0, max_new_tokens=2))
    assert _memory.release_omp_threads() is True
