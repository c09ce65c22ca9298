"""Generation: chat templates, sampling, streaming with stop, batches, metrics, errors that keep the model."""

from __future__ import annotations

import contextlib
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
    assert "Paris" in r.text
    assert r.stopped_by == "eos"
    assert r.prompt_tokens > 10  # the chat template's system and user turns
    assert 0 < r.new_tokens <= 24
    assert 0 < r.ttft_s <= r.total_s
    assert r.tokens_per_s > 0
    assert r.weight_bytes == smol_bf16.footprint_bytes
    assert r.achieved_bytes_per_s == pytest.approx(r.weight_bytes * r.tokens_per_s)
    # A placement-weighted combination of per-device bandwidths: equal up to float rounding.
    assert r.bandwidth_bytes_per_s == pytest.approx(measure_bandwidth("cpu"), rel=1e-9)
    assert r.bandwidth_bytes_per_s > 0
    assert 0 < r.decode_efficiency <= 1.0  # the roofline: no run beats the memory bandwidth
    assert json.loads(json.dumps(r.to_dict()))["stopped_by"] == "eos"
    assert r.tokens_per_s_str.endswith("tokens/s")
    assert r.efficiency_str.endswith("%")
    finished = events.of("generate_finished")[-1]
    assert finished.data["tokens_per_s"] == r.tokens_per_s
    assert events.of("generate_started")


def _shared_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@pytest.mark.slow
def test_batch_keeps_input_order(smol_bf16):
    """Each batch row matches the same prompt generated alone (greedy), not another row's answer.

    The right answers come from one-at-a-time generation on this machine, not from
    what a 135M model knows (that changes with CPU kernels).
    """
    prompts = ["What is the capital of France?", "Name a colour.", "Write one word about the sea."]
    params = GenerationParams(temperature=0, max_new_tokens=12)
    results = generate_batch(smol_bf16, prompts, params)
    singles = [generate(smol_bf16, p, params) for p in prompts]
    assert len({s.text[:12] for s in singles}) == 3  # the prompts are told apart from the start
    for i, r in enumerate(results):
        own = _shared_prefix(r.text, singles[i].text)
        # Padding changes kernel shapes: a late near-tie may flip, the start may not.
        assert own >= min(12, len(singles[i].text)), (r.text, singles[i].text)
        assert all(own > _shared_prefix(r.text, s.text) for j, s in enumerate(singles) if j != i)
    assert [r.prompt_tokens for r in results] == [s.prompt_tokens for s in singles]
    assert {r.total_s for r in results} == {results[0].total_s}  # one batch: one wall time for all
    assert all(r.tokens_per_s > 0 for r in results)


@pytest.mark.slow
def test_stop_strings_cut_the_text_and_the_stream(smol_bf16):
    """The stop string is taken from the model's own greedy answer, so no knowledge is assumed."""
    prompt = "Count from 1 to 10, separated by commas. Only the numbers."
    full = generate(smol_bf16, prompt, GenerationParams(temperature=0, max_new_tokens=40)).text
    k = len(full) // 2
    stop = full[k:k + 3]
    assert len(stop) == 3, full
    assert full.find(stop) > 0, full
    expected = full[:full.find(stop)]
    params = GenerationParams(temperature=0, max_new_tokens=40, stop=(stop,))
    s = stream(smol_bf16, prompt, params)
    pieces = list(s)
    assert s.result.stopped_by == "stop_string"
    assert "".join(pieces) == s.result.text == expected  # nothing of the stop string leaked
    r = generate(smol_bf16, prompt, params)
    assert r.text == expected
    assert r.new_tokens == s.result.new_tokens
    assert r.stopped_by == "stop_string"


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
    assert a.text == b.text
    assert a.new_tokens == b.new_tokens
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
    assert pieces == got
    assert "".join(pieces) == s.result.text
    assert s.result.text == generate(tiny_llama, "The quick brown fox", GREEDY).text
    assert s.result.stopped_by == "max_new_tokens"
    assert s.result.new_tokens == 24
    cb = []
    assert stream(tiny_llama, "Hello", GREEDY, on_piece=cb.append).wait().text == "".join(cb)


def test_wait_after_iterating_returns_the_result(tiny_llama):
    """The stream was read to its end: wait() returns the result at once (it used to hang)."""
    s = stream(tiny_llama, "Hello", GREEDY)
    text = s.text()
    assert s.wait() is s.result
    assert s.wait().text == text
    assert list(s) == []


def test_stop_ends_generation_within_one_step(tiny_llama, monkeypatch):
    """stop() during the 5th forward pass: generation ends after that step, 5 tokens in all."""
    model = tiny_llama.model
    real = model.forward
    calls = []
    s = stream(tiny_llama, "Hello world", GenerationParams(temperature=0, max_new_tokens=200), start=False)

    def forward(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            s.stop()
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "forward", forward)
    text = "".join(s)
    assert s.result.stopped_by == "cancelled"
    assert len(calls) == 5
    assert s.result.new_tokens == 5
    assert text == s.result.text


def test_stop_from_the_consumer(tiny_llama):
    s = stream(tiny_llama, "Hello world", GenerationParams(temperature=0, max_new_tokens=400))
    for _ in s:
        s.stop()
    assert s.result.stopped_by == "cancelled"
    assert s.result.new_tokens < 400


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
    assert "boom in forward" in str(outcome["error"])
    assert "still loaded" in str(outcome["error"])


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
    assert isinstance(err.value, MemoryError)
    assert "still loaded" in str(err.value)
    assert err.value.__context__ is None  # no traceback pinning the activations
    assert generate(tiny_llama, "Hello world", GREEDY).text == expected
    assert events.of("error")[-1].data["error"] == "GenerationOutOfMemoryError"
    state["raised"] = 0
    with pytest.raises(GenerationOutOfMemoryError):
        list(stream(tiny_llama, "Hello world", GREEDY))
    assert tiny_llama.loaded


def test_tiny_weights_have_no_roofline(tiny_llama):
    r = generate(tiny_llama, "Hello", GenerationParams(temperature=0, max_new_tokens=3))
    assert r.decode_efficiency is None
    assert r.efficiency_str == "N/A"  # 385 KiB lives in cache
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


# --- streaming text that has no spaces ------------------------------------------------------------

#: 64 characters, one token each: Chinese ideographs, then hiragana and katakana.
CJK = "我你他她是的了在有不人这中大为上个国们到说和地也子时道出而要于就下得可以会来生年" + "あいうえおかきくけこさしすせそたちつてとアイウエ"


def cjk_model(tmp_path_factory, name: str, chat_template: str | None = None):
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from workbench.store import ModelStore

    assert len(CJK) == len(set(CJK)) == 64
    # The unknown token and ASCII letters sit past the model's 64 logits: never generated, but
    # transformers' stop-string matching encodes a Latin probe with the tokenizer.
    vocab = {c: i for i, c in enumerate(CJK + "abcdefghijklmnopqrstuvwxyz")} | {"<unk>": 64 + 26}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    if chat_template:
        # The template's markup (<think>, roles) is outside the model's 64 tokens: encoding drops it.
        core.normalizer = normalizers.Replace(Regex(f"[^{CJK}]"), "")
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>")
    if chat_template:
        tok.chat_template = chat_template
    root = tmp_path_factory.mktemp(f"{name}-store")
    folder = root / name
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128))
    model.generation_config = GenerationConfig()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    reg = Registry(ModelStore([root], cache_path=None))
    return reg, reg.load(LoadSpec(name))


@pytest.fixture(scope="module")
def cjk_llama(tmp_path_factory):
    """A tiny random llama whose tokenizer's vocabulary is 64 CJK characters (no spaces, no EOS, no pad)."""
    reg, loaded = cjk_model(tmp_path_factory, "tiny-cjk")
    yield loaded
    reg.unload_all()


#: A reasoning template shaped like Qwen3's: the generation prompt opens ``<think>`` (the
#: model thinks first), or with ``enable_thinking=False`` closes it empty (the model answers).
THINK_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}{% endif %}")


@pytest.fixture(scope="module")
def thinking_llama(tmp_path_factory):
    """The CJK llama with :data:`THINK_TEMPLATE`."""
    reg, loaded = cjk_model(tmp_path_factory, "tiny-thinker", THINK_TEMPLATE)
    yield loaded
    reg.unload_all()


def test_a_template_that_opens_think_makes_the_generation_reasoning(thinking_llama):
    """Generation after an open <think> is reasoning, split the same way streamed or not."""
    params = GenerationParams(temperature=0, max_new_tokens=10)
    r = generate(thinking_llama, "你是人", params)
    assert r.text == ""
    assert len(r.reasoning) == 10
    assert all(c in CJK for c in r.reasoning)
    s = stream(thinking_llama, "你是人", params)
    pieces = list(s.pieces())
    assert {p.kind for p in pieces} == {"reasoning"}
    assert "".join(p.text for p in pieces) == r.reasoning
    assert s.result.reasoning == r.reasoning
    assert s.result.text == ""
    assert s.result.new_tokens == 10
    assert 0 < s.result.ttft_s < s.result.total_s  # the first token of either kind

    # enable_thinking=False reaches the template (through the bounded renderer): the answer is text.
    off = generate(thinking_llama, "你是人", GenerationParams(temperature=0, max_new_tokens=10, enable_thinking=False))
    assert off.reasoning == ""
    assert len(off.text) == 10


def test_think_tags_split_across_pieces():
    from workbench.runtime.streaming import ThinkSplitter

    sp = ThinkSplitter(inside=False)
    out = []
    for piece in ["<th", "ink>plan", " it</th", "ink>\n\nAns", "wer <b>"]:
        out += sp.feed(piece)
    out += sp.finish()
    assert "".join(t for k, t in out if k == "reasoning") == "plan it"
    assert "".join(t for k, t in out if k == "content") == "Answer <b>"
    assert ThinkSplitter.split("thought</think>\nAnswer", inside=True) == ("thought", "Answer")


def test_cjk_text_streams_one_character_per_step(cjk_llama, monkeypatch):
    """Text without spaces streams as it is generated: one piece per token step, not one at the end."""
    params = GenerationParams(temperature=0, max_new_tokens=12)
    s = stream(cjk_llama, "你是人", params, start=False)
    queued_at_step = []
    real = cjk_llama.model.forward

    def forward(*args, **kwargs):
        queued_at_step.append(s._queue.qsize())  # pieces released before this forward pass
        return real(*args, **kwargs)

    monkeypatch.setattr(cjk_llama.model, "forward", forward)
    s.start()
    s._thread.join(60)
    pieces = list(s)
    # Prefill, then one pass per new token but the last: a piece had arrived before each of them.
    assert queued_at_step == list(range(12))
    assert len(pieces) == 12
    assert [len(p) for p in pieces] == [1] * 12
    assert all(p in CJK for p in pieces)
    assert "".join(pieces) == s.result.text == generate(cjk_llama, "你是人", params).text
    assert s.result.new_tokens == 12
    assert s.result.ttft_s < s.result.total_s


def test_cjk_stream_never_leaks_a_stop_string(cjk_llama):
    full = generate(cjk_llama, "你是人", GenerationParams(temperature=0, max_new_tokens=12)).text
    stop = full[5:7]
    expected = full[:full.find(stop)]
    s = stream(cjk_llama, "你是人", GenerationParams(temperature=0, max_new_tokens=12, stop=(stop,)))
    pieces = list(s)
    assert "".join(pieces) == s.result.text == expected
    assert s.result.stopped_by == "stop_string"
    assert all(stop not in "".join(pieces[:i + 1]) for i in range(len(pieces)))


# --- batches and pad tokens -----------------------------------------------------------------------


@contextlib.contextmanager
def _unset(loaded, token_attr: str, config_attr: str):
    """Take a special token away from the shared model's tokenizer and generation config, then restore it."""
    tok, gc = loaded.tokenizer, loaded.model.generation_config
    saved = getattr(tok, token_attr), getattr(gc, config_attr)
    setattr(tok, token_attr, None)
    setattr(gc, config_attr, None)
    try:
        yield
    finally:
        setattr(tok, token_attr, saved[0])
        setattr(gc, config_attr, saved[1])


def test_batch_without_a_pad_token_pads_with_eos(tiny_llama):
    """A tokenizer with an EOS but no pad token: the batch is padded and matches one-at-a-time output."""
    prompts = ["Hello world", "The quick brown fox jumps over"]
    singles = [generate(tiny_llama, p, GREEDY).text for p in prompts]
    with _unset(tiny_llama, "pad_token", "pad_token_id"):
        assert tiny_llama.tokenizer.pad_token_id is None
        assert [r.text for r in generate_batch(tiny_llama, prompts, GREEDY)] == singles


def test_batch_without_pad_or_eos_is_a_typed_error_and_the_model_stays_usable(tiny_llama, events):
    with _unset(tiny_llama, "pad_token", "pad_token_id"), _unset(tiny_llama, "eos_token", "eos_token_id"):
        tok = tiny_llama.tokenizer
        assert tok.pad_token_id is None
        assert tok.eos_token_id is None
        with pytest.raises(GenerationError) as err:
            generate_batch(tiny_llama, ["Hello world", "The quick brown fox"], GREEDY)
        assert not isinstance(err.value, ValueError)
        message = str(err.value)
        assert "tiny-llama" in message
        assert "pad_token" in message
        assert "still loaded" in message
        assert events.of("error")[-1].data["error"] == "GenerationError"
        r = generate(tiny_llama, "Hello world", GREEDY)  # still usable; no EOS, so it runs to the limit
        assert r.new_tokens == 24
        assert r.stopped_by == "max_new_tokens"
        assert tiny_llama.loaded


# --- the one stream, fed by any producer -------------------------------------------------------


def test_a_stream_fed_by_a_plain_producer():
    from workbench.runtime import Piece, RunResult
    from workbench.runtime.streaming import Stream

    def produce(feed):
        feed.put("thinking", kind="reasoning", t_s=1.0)
        feed.put("Par", t_s=2.0)
        feed.put("", t_s=2.5)  # empty pieces are dropped
        feed.put("is", t_s=3.0)
        return RunResult("Paris", 3, 3, 1.0, 1.0, 3.0, "eos", reasoning="thinking")

    seen = []
    s = Stream(produce, name="plain", on_piece=seen.append)
    assert list(s.pieces()) == [Piece("thinking", "reasoning", 1.0), Piece("Par", "content", 2.0),
                                Piece("is", "content", 3.0)]
    assert seen == ["Par", "is"]
    assert s.wait().reasoning == "thinking"
    assert s.text() == ""


def test_a_producers_error_reaches_the_consumer_typed_and_stop_reaches_the_producer():
    from workbench.runtime.streaming import Stream

    def produce(feed):
        feed.put("a")
        feed.cancel.wait(30)  # until the consumer stops it
        assert feed.cancelled
        raise ValueError("engine fell over")

    s = Stream(produce, wrap_error=lambda exc: GenerationError(f"wrapped: {exc}", hint="retry"))
    with pytest.raises(GenerationError, match="wrapped: engine fell over"):
        for _ in s:
            s.stop()
    assert s.stopped
    with pytest.raises(GenerationError):  # and again, never a hang
        s.wait()
