"""What a request sends: OpenAI fields always, an engine's own fields only to engines known to take them.

Every control of the Prompt panel's Sampling section is set through its widget and the
request body the engine received is read back: from a fake vLLM engine (a subprocess
that records each body), and from a fake server added by URL (unknown kind: the
extensions are not sent, and the result says so, naming them).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fakes.fake_pynvml import FakeGpu
from serve.fake_openai import ANSWER, serve_in_thread
from workbench.runtime import GenerationParams
from workbench.serve import Endpoint, EndpointClient, EndpointRegistry
from workbench.serve.client import request_plan
from workbench.ui.prompt_panel import PromptPanel

SMOL = "SmolLM2-135M-Instruct"
QUESTION = "What is the capital of France?"


def _set_every_sampling_control(panel: PromptPanel) -> None:
    """Through the widgets, as a user would: every control of the Sampling section."""
    c = panel.controls
    c.params["max_new_tokens"].value = 5
    c.params["temperature"].value = 0.7
    c.params["top_p"].value = 0.9
    c.params["top_k"].value = 40
    c.params["repetition_penalty"].value = 1.2
    c.seed.value = "7"
    c.stop_at.value = "###, User:"


def _panel(tmp_path: Path) -> PromptPanel:
    from workbench.runtime import Registry
    from workbench.store import ModelStore

    return PromptPanel(Registry(ModelStore([tmp_path / "empty"], cache_path=None)))


def test_every_sampling_control_reaches_a_vllm_engine(seeded_store, fake_vllm, fake_nvml, clean_devices,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from workbench.serve import plan_serve, start, stop

    requests = tmp_path / "requests.jsonl"
    monkeypatch.setenv("FAKE_ENGINE_REQUESTS", str(requests))
    fake_nvml([FakeGpu(memory_total_bytes=8 * 2**30, memory_used_bytes=1 * 2**30)], torch=True)
    ep = start(plan_serve(SMOL, engine="vllm", devices=["cuda:0"]))
    panel = _panel(tmp_path)
    try:
        panel.widget  # noqa: B018 (the live widgets)
        panel.refresh_models()
        panel.controls.model.value = f"endpoint:{ep.name}"
        _set_every_sampling_control(panel)
        r = panel.send(QUESTION)
    finally:
        panel.close()
        stop(ep.name)
    body = json.loads(requests.read_text().splitlines()[-1])
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["seed"]) == (5, 0.7, 0.9, 7)
    assert body["stop"] == ["###", "User:"]
    # vLLM's extra sampling params, as top-level fields of the body (the client's extra_body).
    assert (body["top_k"], body["repetition_penalty"]) == (40, 1.2)
    assert r.not_sent == ()
    assert r.notices == ()
    assert panel.message is None
    assert r.text == "".join(ANSWER[:5])


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[list]:
    srv, log = serve_in_thread("fake-model")
    EndpointRegistry().add_remote("team", f"http://127.0.0.1:{srv.server_address[1]}/v1")
    yield log
    srv.shutdown()
    srv.server_close()


def test_an_endpoint_of_unknown_kind_gets_openai_fields_and_the_result_names_what_was_not_sent(
        remote, tmp_path: Path) -> None:
    panel = _panel(tmp_path)
    try:
        panel.widget  # noqa: B018
        panel.refresh_models()
        panel.controls.model.value = "endpoint:team"
        _set_every_sampling_control(panel)
        r = panel.send(QUESTION)
    finally:
        panel.close()
    body = remote[-1]
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["seed"]) == (5, 0.7, 0.9, 7)
    assert body["stop"] == ["###", "User:"]
    assert "top_k" not in body
    assert "repetition_penalty" not in body
    assert r.not_sent == ("top_k", "repetition_penalty")
    assert len(r.notices) == 2
    assert "top_k=40" in r.notices[0]
    assert "'team'" in r.notices[0]
    kind, = {panel.message[1]}
    assert kind == "warning"
    assert "top_k=40 was not sent" in panel.message[0]
    assert "repetition_penalty=1.2" in panel.message[0]


def test_controls_that_change_nothing_are_not_reported(remote) -> None:
    ep = EndpointRegistry().get("team")
    # Greedy: top_k does not matter; a penalty of 1 is none.
    assert request_plan(ep, GenerationParams(temperature=0, top_k=50)).not_sent == ()
    assert request_plan(ep, GenerationParams(temperature=0.7, top_k=0)).not_sent == ()
    tf = Endpoint("tf", "transformers", "http://127.0.0.1:1/v1", argv=("serve", "--continuous-batching"))
    plan = request_plan(tf, GenerationParams(temperature=0.7, top_k=50))
    assert plan.extra_body == {}
    assert plan.not_sent == ("top_k",)
    assert any("continuous-batching" in n and "first" in n for n in plan.notices)
    # A greedy request is not safe either: after a sampled first request it is sampled (transformers 5.24's
    # CBGenerateManager passes only max_new_tokens and eos_token_id per request).
    greedy = request_plan(tf, GenerationParams(temperature=0))
    assert [n for n in greedy.notices if "continuous-batching" in n and "(greedy)" in n] != []
    alone = Endpoint("tf1", "transformers", "http://127.0.0.1:1/v1", argv=("serve",))
    assert request_plan(alone, GenerationParams(temperature=0.7, top_k=0)).notices == ()
    # llama.cpp's servers penalise repeats (1.1) and cut by min_p (0.05) unless told otherwise:
    # greedy and unpenalised there too, as in the kernel (runtime/llamacpp.py's NEUTRAL_SAMPLING).
    llama = Endpoint("l", "llamacpp", "http://127.0.0.1:1/v1")
    assert request_plan(llama, GenerationParams(temperature=0)).extra_body == {
        "repeat_penalty": 1.0, "min_p": 0.0, "top_k": 0}
    assert request_plan(llama, GenerationParams(temperature=0.7, top_k=50, repetition_penalty=1.2)).extra_body == {
        "repeat_penalty": 1.2, "min_p": 0.0, "top_k": 50}
    vllm = Endpoint("v", "vllm", "http://127.0.0.1:1/v1")
    assert request_plan(vllm, GenerationParams(temperature=0.7, top_k=50, repetition_penalty=1.1)).extra_body == {
        "top_k": 50, "repetition_penalty": 1.1}


def test_stop_strings_are_applied_by_the_client_whatever_the_engine_does(remote) -> None:
    # The fake engine ignores "stop": the answer still ends before it, and says why.
    r = EndpointClient("team").chat(QUESTION, GenerationParams(temperature=0, stop=(" Paris",)))
    assert r.text == "".join(ANSWER[:5])
    assert r.stopped_by == r.finish_reason == "stop_string"


def test_an_image_uploaded_in_the_prompt_tab_reaches_an_endpoint_as_an_image_url_part(remote, tmp_path: Path) -> None:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(buf, format="PNG")
    data = buf.getvalue()
    panel = _panel(tmp_path)
    try:
        panel.widget  # noqa: B018
        panel.refresh_models()
        panel.controls.model.value = "endpoint:team"
        panel.controls.params["temperature"].value = 0.0
        panel.controls.image.set_state({"value": [{"name": "g.png", "type": "image/png", "size": len(data),
                                                   "content": memoryview(data), "last_modified": 0}]})
        panel.controls.input.value = "What colour is this?"
        panel.controls.send.click()
        r = panel.wait()
    finally:
        panel.close()
    image_part, text_part = remote[-1]["messages"][-1]["content"]
    assert text_part == {"type": "text", "text": "What colour is this?"}
    head, _, payload = image_part["image_url"]["url"].partition(",")
    assert (image_part["type"], head, base64.b64decode(payload)) == ("image_url", "data:image/png;base64", data)
    assert r.text == "".join(ANSWER)


def test_an_image_given_as_a_pil_image_or_a_web_url_goes_as_openai_parts(remote) -> None:
    from PIL import Image

    from workbench.runtime.prompts import openai_messages

    msgs = openai_messages([{"role": "user", "content": [
        {"type": "image", "image": Image.new("RGB", (4, 4))},
        {"type": "image_url", "image_url": {"url": "https://example.org/cat.png"}},
        {"type": "text", "text": "Compare."}]}])
    pil, web, text = msgs[0]["content"]
    assert pil["image_url"]["url"].startswith("data:image/png;base64,")
    # The server fetches a web URL; the workbench downloads nothing.
    assert web == {"type": "image_url", "image_url": {"url": "https://example.org/cat.png"}}
    assert text == {"type": "text", "text": "Compare."}


@pytest.mark.parametrize("engine_flag, sent", [((), False), (("--engine", "unknown"), False),
                                               (("--engine", "vllm"), True)])
def test_an_endpoint_added_by_hand_with_its_engine_gets_that_engines_fields(capsys, engine_flag, sent) -> None:
    """``workbench endpoints add NAME URL --engine vllm``: top_k reaches the engine (unknown: it is named, not sent)."""
    from workbench.cli import main

    srv, log = serve_in_thread("fake-model")
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
        assert main(["endpoints", "add", "team", url, *engine_flag, "--json"]) == 0
        added = json.loads(capsys.readouterr().out)
        assert added["engine_kind"] == ("vllm" if sent else None)
        assert main(["run", "--endpoint", "team", "--prompt", QUESTION, "--temperature", "0.7", "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
    finally:
        srv.shutdown()
        srv.server_close()
    top_k = GenerationParams().top_k  # what `workbench run` asks for (no --top-k flag)
    assert log[-1].get("top_k") == (top_k if sent else None)
    assert doc["not_sent"] == ([] if sent else ["top_k"])


def test_an_engine_kind_the_workbench_does_not_know_is_refused(capsys) -> None:
    from workbench.cli import main
    from workbench.errors import ConfigError

    with pytest.raises(SystemExit):
        main(["endpoints", "add", "team", "http://127.0.0.1:9/v1", "--engine", "tgi"])
    assert "invalid choice: 'tgi'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="'tgi' is not an engine kind"):
        EndpointRegistry().add_remote("team", "http://127.0.0.1:9/v1", engine_kind="tgi")


def test_sharing_a_remote_endpoint_passes_its_engine_kind_on(capsys) -> None:
    from workbench.cli import main

    EndpointRegistry().add_remote("team", "http://127.0.0.1:9/v1", engine_kind="llamacpp")
    assert main(["endpoints", "share", "team", "--json"]) == 0
    [add] = json.loads(capsys.readouterr().out)["commands"]
    assert add == "workbench endpoints add team http://127.0.0.1:9/v1 --engine llamacpp"
    assert EndpointRegistry().get("team").request_engine == "llamacpp"  # read back from the registry file
    assert main(["endpoints"]) == 0
    [row] = capsys.readouterr().out.splitlines()[1:]
    assert row.split()[:3] == ["team", "remote", "(llamacpp)"]
