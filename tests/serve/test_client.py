"""The openai-client wrapper against a small local OpenAI-compatible server: answers, metrics, typed errors."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from serve.fake_openai import ANSWER, serve_in_thread
from workbench.errors import (
    EndpointAuthError,
    EndpointModelNotFoundError,
    EndpointRateLimitError,
    EndpointResponseError,
    EndpointStreamError,
    EndpointUnreachableError,
    ServeError,
)
from workbench.runtime import GenerationParams
from workbench.serve import Endpoint, EndpointClient, EndpointRegistry
from workbench.serve.process import free_port


@pytest.fixture
def server() -> Iterator[tuple[str, list]]:
    srv, log = serve_in_thread("fake-model", key="sk-test")
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1", log
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def client(server, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FAKE_KEY", "sk-test")
    url, log = server
    EndpointRegistry().add_remote("fake", url, api_key_env="FAKE_KEY")
    return EndpointClient("fake"), log


def test_streamed_answer_with_server_usage(client) -> None:
    c, log = client
    pieces: list[str] = []
    r = c.chat("What is the capital of France?", GenerationParams(temperature=0, stop=("###",), seed=3),
               on_piece=pieces.append)
    assert r.text == "".join(ANSWER)
    assert pieces == ANSWER
    assert (r.prompt_tokens, r.new_tokens, r.usage_reported) == (11, len(ANSWER), True)
    assert r.finish_reason == "stop"
    assert r.model == "fake-model"
    assert r.endpoint == "fake"
    assert 0 < r.ttft_s <= r.total_s
    assert r.tokens_per_s > 0
    req = log[-1]
    assert req["model"] == "fake-model"
    assert req["stream"] is True
    assert req["stop"] == ["###"]
    assert req["temperature"] == 0
    assert req["seed"] == 3
    assert req["stream_options"] == {"include_usage": True}
    assert req["messages"] == [{"role": "user", "content": "What is the capital of France?"}]


def test_batch_is_concurrent_requests_in_order(client) -> None:
    c, log = client
    prompts = [f"question {i}" for i in range(6)]
    results = c.batch(prompts, GenerationParams(temperature=0, max_new_tokens=3), max_concurrency=3)
    assert [r.text for r in results] == ["".join(ANSWER[:3])] * 6
    assert sorted(m["messages"][0]["content"] for m in log) == sorted(prompts)


def test_wrong_or_missing_key_is_an_auth_error(server, monkeypatch: pytest.MonkeyPatch) -> None:
    url, _ = server
    monkeypatch.setenv("FAKE_KEY", "sk-wrong")
    EndpointRegistry().add_remote("fake", url, api_key_env="FAKE_KEY", model="fake-model")
    with pytest.raises(EndpointAuthError, match=r"'fake'.*HTTP 401.*Invalid API key.*set FAKE_KEY") as info:
        EndpointClient("fake").chat("hi")
    assert info.value.endpoint == "fake"
    assert isinstance(info.value, PermissionError)


@pytest.mark.parametrize("model, error, text", [
    ("missing", EndpointModelNotFoundError, "does not serve model 'missing'"),
    ("busy", EndpointRateLimitError, "HTTP 429"),
    ("boom", EndpointResponseError, "HTTP 500"),
])
def test_status_errors_are_typed(server, monkeypatch: pytest.MonkeyPatch, model: str, error: type,
                                 text: str) -> None:
    url, _ = server
    monkeypatch.setenv("FAKE_KEY", "sk-test")
    ep = Endpoint("fake", "remote", url, model=model, api_key_env="FAKE_KEY")
    with pytest.raises(error, match=text) as info:
        EndpointClient(ep).chat("hi")
    assert info.value.endpoint == "fake"
    assert info.value.hint


def test_a_stream_cut_midway_keeps_what_arrived(client) -> None:
    c, _ = client
    c._model = "cut"
    with pytest.raises(EndpointStreamError, match="stopped mid-way") as info:
        c.chat("hi")
    assert info.value.partial_text == "".join(ANSWER[:2])
    # The client is still usable afterwards.
    c._model = "fake-model"
    assert "Paris" in c.chat("hi").text


def test_unreachable_endpoint() -> None:
    ep = Endpoint("gone", "remote", f"http://127.0.0.1:{free_port()}/v1", model="m")
    with pytest.raises(EndpointUnreachableError, match="'gone'.*cannot be reached"):
        EndpointClient(ep, timeout_s=5).chat("hi")
    with pytest.raises(ServeError):
        EndpointClient(ep, timeout_s=5).models()


def test_cli_run_endpoint_json_has_the_local_run_keys(client, capsys) -> None:
    from workbench.cli import main

    assert main(["run", "--endpoint", "fake", "--prompt", "What is the capital of France?", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {"text", "prompt_tokens", "new_tokens", "ttft_s", "tokens_per_s"} <= set(doc)
    assert "Paris" in doc["text"]
    assert doc["new_tokens"] == len(ANSWER)
    assert main(["run", "--endpoint", "nope", "--prompt", "x"]) == 1
    assert "no endpoint called 'nope'" in capsys.readouterr().err


def test_a_stream_can_be_stopped_and_keeps_what_arrived(client) -> None:
    c, _ = client
    c._model = "slow"
    s = c.stream("hi", GenerationParams(temperature=0))
    pieces = []
    for piece in s:
        pieces.append(piece)
        s.stop()
    assert s.result.finish_reason == "cancelled"
    assert s.result.stopped_by == "cancelled"
    assert 1 <= len(pieces) < len(ANSWER)
    assert s.result.text == "".join(pieces)
