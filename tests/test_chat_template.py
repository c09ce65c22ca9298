"""Chat templates are code from the model folder: rendering has bounds on time and memory, the kernel survives.

Issue 15, section 4: nested ``{% for %}`` loops hung a prompt past 90 s and
``{{ 'x' * 10**10 }}`` grew the kernel to 16.9 GB. Here each attack is made against a
real loaded model (and the renderer itself): the prompt fails with a typed error naming
the template's file, this process's memory does not grow, and the next prompt works.
Truth for the common case is transformers' own ``apply_chat_template``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from workbench import chat_template as ct
from workbench.errors import ChatTemplateError
from workbench.runtime import GenerationParams, LoadSpec, generate
from workbench.runtime.registry import Registry
from workbench.store import ModelStore

# Hours of looping that print nothing: only the time bound can stop it (a loop that prints may
# reach the memory budget first on a fast machine, which is the other bound's test).
LOOPS = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
HUGE = "{{ 'x' * 10**10 }}"
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]


def _rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))


def _tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("which", ["smollm2", "tiny-chatml"])
def test_renders_exactly_as_transformers(which, seeded_model, tiny_models):
    tok = _tokenizer(seeded_model if which == "smollm2" else tiny_models["llama"])
    chats = [CHAT, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                    {"role": "user", "content": "{{ not a template }} ' \" \\ é 日本"}]]
    for chat in chats:
        assert ct.render_chat_template(tok, chat, source="x") == tok.apply_chat_template(
            chat, add_generation_prompt=True, tokenize=False)
    assert ct.render_chat_template(tok, chats, source="x") == tok.apply_chat_template(
        chats, add_generation_prompt=True, tokenize=False)


def test_loops_are_stopped_in_time_and_the_next_render_works():
    before = ct.worker_starts()
    t0 = time.perf_counter()
    with pytest.raises(ChatTemplateError) as info:
        ct.render_chat_templates(LOOPS, [CHAT], source="/models/evil/chat_template.jinja", timeout_s=2.0)
    took = time.perf_counter() - t0
    assert info.value.reason == "time"
    assert "/models/evil/chat_template.jinja" in str(info.value)
    assert took < 2.0 + 60, took  # the worker's start (first use) plus the bound, never the loops' hours
    assert ct.worker_pid() is None  # it was killed
    assert ct.render_chat_templates("{{ messages[1]['content'] }}", [CHAT], source="ok")[0] == CHAT[1]["content"]
    assert ct.worker_starts() > before


def test_a_template_that_allocates_gigabytes_fails_in_the_worker_not_here():
    ct.render_chat_templates("warm", [CHAT], source="ok")
    rss = _rss_bytes()
    with pytest.raises(ChatTemplateError) as info:
        ct.render_chat_templates(HUGE, [CHAT], source="/models/evil/chat_template.jinja", memory_bytes=256 << 20)
    assert info.value.reason == "memory"
    assert "/models/evil/chat_template.jinja" in str(info.value)
    assert _rss_bytes() - rss < 64 << 20  # this process did not grow
    # Output beyond any context is refused too (allocating it is within the budget).
    with pytest.raises(ChatTemplateError) as info:
        ct.render_chat_templates("{{ 'x' * 40000000 }}", [CHAT], source="big.jinja")
    assert info.value.reason == "output"
    with pytest.raises(ChatTemplateError) as info:
        ct.render_chat_templates("{{ raise_exception('roles must alternate') }}", [CHAT], source="strict.jinja")
    assert info.value.reason == "error"
    assert "roles must alternate" in str(info.value)


def test_a_loaded_model_with_a_hostile_template_keeps_working(tiny_models, tmp_path):
    """Through the runtime: the prompt is refused naming the file; the model stays loaded; a good
    template in the same kernel then answers."""
    evil = shutil.copytree(tiny_models["llama"], tmp_path / "evil")
    (evil / "chat_template.jinja").write_text(LOOPS)
    shutil.copytree(tiny_models["llama"], tmp_path / "good")
    reg = Registry(ModelStore([tmp_path], cache_path=None))
    try:
        bad = reg.load(LoadSpec("evil", devices=("cpu",)))
        good = reg.load(LoadSpec("good", devices=("cpu",)))
        from workbench.config import get_settings

        get_settings().chat_template_timeout_s = 2.0
        with pytest.raises(ChatTemplateError) as info:
            generate(bad, "hi", GenerationParams(max_new_tokens=2, temperature=0))
        assert str(evil / "chat_template.jinja") in str(info.value)
        assert bad.model is not None
        out = generate(good, "hi", GenerationParams(max_new_tokens=2, temperature=0))
        assert out.new_tokens >= 1
    finally:
        reg.unload_all()
