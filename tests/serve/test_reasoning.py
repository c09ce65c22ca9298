"""Reasoning models over an endpoint: thinking streamed in its own delta field, kept apart, timed as tokens.

The fake server streams :data:`REASONING` then the answer; the client's clock is the
test's (one tick of 20 ms per piece), so the expected metrics are exact, with no sleeps.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from serve.fake_openai import ANSWER, REASONING, serve_in_thread
from workbench.runtime import GenerationParams
from workbench.serve import EndpointClient, EndpointRegistry

TICK_S = 0.02


@pytest.fixture
def url() -> Iterator[str]:
    srv, _log = serve_in_thread("fake-model")
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def _ticking_client(url: str, model: str) -> EndpointClient:
    EndpointRegistry().add_remote(model, url, model=model)
    ticks = itertools.count()
    return EndpointClient(model, clock=lambda: next(ticks) * TICK_S)


@pytest.mark.parametrize("model", ["thinker", "thinker-new"])  # reasoning_content, and reasoning
def test_reasoning_is_kept_apart_and_counts_as_decoding(url: str, model: str) -> None:
    c = _ticking_client(url, model)
    answer, thoughts = [], []
    r = c.chat("What is the capital of France?", GenerationParams(temperature=0), on_piece=answer.append,
               on_reasoning=thoughts.append)
    assert r.text == "".join(ANSWER) == "".join(answer)
    assert r.reasoning == "".join(REASONING) == "".join(thoughts)
    pieces = len(REASONING) + len(ANSWER)
    assert r.new_tokens == pieces  # the server's usage: thinking included
    # Request at tick 0, piece i at tick i + 1: the first token is the first thought.
    assert r.ttft_s == pytest.approx(TICK_S)
    # The whole decode span (first thought to last answer piece), not the answer's alone.
    assert r.tokens_per_s == pytest.approx((pieces - 1) / ((pieces - 1) * TICK_S))
    assert r.total_s == pytest.approx((pieces + 1) * TICK_S)


def test_the_stream_hands_reasoning_pieces_apart(url: str) -> None:
    s = _ticking_client(url, "thinker").stream("hi", GenerationParams(temperature=0))
    kinds = [(p.kind, p.text) for p in s.pieces()]
    assert kinds == [("reasoning", t) for t in REASONING] + [("content", w) for w in ANSWER]
    assert s.wait().reasoning == "".join(REASONING)


def test_run_json_has_the_reasoning(url: str, capsys) -> None:
    import json

    from workbench.cli import main

    EndpointRegistry().add_remote("thinker", url, model="thinker")
    assert main(["run", "--endpoint", "thinker", "--prompt", "hi", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["reasoning"] == "".join(REASONING)
    assert doc["text"] == "".join(ANSWER)


def test_enable_thinking_reaches_engines_that_take_it_and_is_named_where_not_sent() -> None:
    from workbench.serve import Endpoint
    from workbench.serve.client import request_plan

    off = GenerationParams(temperature=0, enable_thinking=False)
    for engine in ("vllm", "transformers"):
        plan = request_plan(Endpoint("e", engine, "http://127.0.0.1:1/v1"), off)
        assert plan.extra_body == {"chat_template_kwargs": {"enable_thinking": False}}
        assert plan.not_sent == ()
    plan = request_plan(Endpoint("r", "remote", "http://127.0.0.1:1/v1"), off)
    assert plan.not_sent == ("enable_thinking",)
    assert "enable_thinking=False was not sent" in plan.notices[0]
