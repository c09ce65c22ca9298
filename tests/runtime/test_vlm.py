"""Vision-language models load with AutoModelForImageTextToText and chat: text, and images as content parts.

Tiny random Llava and Qwen2-VL checkpoints (tests/tiny_multimodal.py). Truth comes from
transformers: the class loaded is the one its auto class builds, an image costs the tokens
its processor expands it to, and a batch answers each row as that prompt alone does.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import pytest

from workbench.errors import GenerationError
from workbench.runtime import GenerationParams, LoadSpec, Registry, generate, generate_batch
from workbench.store import ModelStore
from workbench.store.support import IMAGE_TEXT_TO_TEXT

GREEDY = GenerationParams(temperature=0, max_new_tokens=6)


@pytest.fixture(scope="module")
def vlms(vlm_root) -> Iterator[dict]:
    reg = Registry(ModelStore([vlm_root], cache_path=None))
    yield {"llava": reg.load(LoadSpec("tiny-llava")), "qwen2_vl": reg.load(LoadSpec("tiny-qwen2-vl")),
           "gemma3": reg.load(LoadSpec("tiny-gemma3"))}
    reg.unload_all()


def _image(colour: tuple[int, int, int], size: int = 40):
    from PIL import Image

    return Image.new("RGB", (size, size), colour)


def _png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    _image(colour).save(buf, format="PNG")
    return buf.getvalue()


def _chat(text: str, *images) -> list[dict]:
    return [{"role": "user", "content": [*({"type": "image", "image": i} for i in images),
                                         {"type": "text", "text": text}]}]


def test_listed_ok_and_loaded_with_the_image_text_to_text_class(vlms, vlm_root):
    import transformers

    for kind, loaded in vlms.items():
        assert loaded.entry.status == "ok"
        assert loaded.entry.auto_class == IMAGE_TEXT_TO_TEXT
        config = transformers.AutoConfig.from_pretrained(loaded.entry.path)
        built = transformers.AutoModelForImageTextToText._model_mapping[type(config)]
        assert type(loaded.model) is built, kind
    assert type(vlms["llava"].processor).__name__ == "LlavaProcessor"
    assert type(vlms["gemma3"].processor).__name__ == "Gemma3Processor"
    # Qwen2-VL's processor needs torchvision (its video part), which is not installed: text still runs.
    assert vlms["qwen2_vl"].processor is None
    assert "torchvision" in vlms["qwen2_vl"].processor_problem.lower()


@pytest.mark.parametrize("kind", ["llava", "qwen2_vl", "gemma3"])
def test_text_prompts_batch_like_one_at_a_time(vlms, kind):
    loaded = vlms[kind]
    prompts = ["Hello world", [{"role": "user", "content": [{"type": "text", "text": "What is the answer?"}]}]]
    alone = [generate(loaded, p, GREEDY) for p in prompts]
    batch = generate_batch(loaded, prompts, GREEDY)
    assert [r.text for r in batch] == [r.text for r in alone]
    assert [r.prompt_tokens for r in batch] == [r.prompt_tokens for r in alone]
    assert all(r.new_tokens > 0 for r in alone)


@pytest.mark.parametrize("kind", ["llava", "gemma3"])
def test_an_image_costs_the_tokens_the_processor_expands_it_to(vlms, kind):
    loaded = vlms[kind]
    text_only = generate(loaded, _chat("Describe it"), GREEDY)
    with_image = generate(loaded, _chat("Describe it", _image((255, 0, 0))), GREEDY)
    # The truth: transformers' own apply_chat_template with the processor, on the same chat.
    enc = loaded.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image", "image": _image((255, 0, 0))},
                                      {"type": "text", "text": "Describe it"}]}],
        add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    assert with_image.prompt_tokens == enc["input_ids"].shape[1] > text_only.prompt_tokens
    per_image = int((enc["input_ids"] == loaded.model.config.image_token_id).sum())
    assert per_image == loaded.entry.image_tokens > 0  # what the store lists, before any load
    assert vlms["qwen2_vl"].entry.image_tokens is None  # dynamic resolution: it depends on the image
    assert with_image.new_tokens > 0


@pytest.mark.parametrize("kind", ["llava", "gemma3"])
def test_image_batches_match_one_at_a_time_and_every_source_form_reads(vlms, tmp_path, kind):
    loaded = vlms[kind]
    path = tmp_path / "blue.png"
    path.write_bytes(_png((0, 0, 255)))
    prompts = [
        _chat("What colour?", _image((255, 0, 0))),
        [{"role": "user", "content": [{"type": "image", "path": str(path)}, {"type": "text", "text": "And this?"}]}],
        [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(
                _png((0, 255, 0))).decode()}},
            {"type": "text", "text": "Two"}, {"type": "image", "image": _png((9, 9, 9))}]}],
        "plain text in the same batch",
    ]
    alone = [generate(loaded, p, GREEDY) for p in prompts]
    batch = generate_batch(loaded, prompts, GREEDY)
    assert [r.text for r in batch] == [r.text for r in alone]
    assert [r.prompt_tokens for r in batch] == [r.prompt_tokens for r in alone]
    # Different images give different pixel inputs: the answer to a red and a blue image need not
    # differ (random weights), but the same image twice answers the same.
    again = generate(loaded, prompts[0], GREEDY)
    assert again.text == alone[0].text


def test_images_refused_with_a_reason_and_the_model_kept(vlms, tiny_llama, tmp_path):
    with pytest.raises(GenerationError, match="(?i)cannot read images: .*torchvision"):
        generate(vlms["qwen2_vl"], _chat("hi", _image((1, 2, 3))), GREEDY)
    with pytest.raises(GenerationError, match="text model"):
        generate(tiny_llama, _chat("hi", _image((1, 2, 3))), GREEDY)
    bad = [
        ({"type": "image", "url": "https://example.com/cat.png"}, "nothing is downloaded"),
        ({"type": "image", "image": b"not an image"}, "cannot be read"),
        ({"type": "image", "path": str(tmp_path / "missing.png")}, "cannot be read"),
        ({"type": "image"}, "holds no image"),
        ({"type": "audio", "audio": "x"}, "not a text or image part"),
    ]
    for part, words in bad:
        with pytest.raises(GenerationError, match=words):
            generate(vlms["llava"], [{"role": "user", "content": [part, {"type": "text", "text": "hi"}]}], GREEDY)
    assert generate(vlms["llava"], "still loaded", GREEDY).new_tokens > 0
    assert generate(tiny_llama, [{"role": "user", "content": [{"type": "text", "text": "parts"}]}],
                    GREEDY).new_tokens > 0


def test_a_decompression_bomb_is_refused_before_it_is_decoded(vlms, monkeypatch):
    from workbench.runtime import prompts

    monkeypatch.setattr(prompts, "MAX_IMAGE_PIXELS", 30 * 30)
    with pytest.raises(GenerationError, match="pixels"):
        generate(vlms["llava"], _chat("hi", _png((5, 5, 5))), GREEDY)


def test_unload_drops_the_processor(vlm_root):
    reg = Registry(ModelStore([vlm_root], cache_path=None))
    loaded = reg.load(LoadSpec("tiny-llava"))
    assert loaded.processor is not None
    reg.unload("tiny-llava")
    assert loaded.processor is None
    assert loaded.model is None
