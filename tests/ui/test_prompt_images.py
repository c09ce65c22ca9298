"""The Prompt tab sends an uploaded image beside the message to a vision-language model."""

from __future__ import annotations

import io

from workbench.runtime import Registry, generate
from workbench.store import ModelStore
from workbench.ui import PromptPanel


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (36, 36), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_the_upload_beside_the_message_goes_to_the_model_as_an_image_part(vlm_root) -> None:
    from workbench.runtime import GenerationParams, LoadSpec

    reg = Registry(ModelStore([vlm_root], cache_path=None))
    try:
        loaded = reg.load(LoadSpec("tiny-llava"))
        panel = PromptPanel(registry=reg)
        _ = panel.widget
        panel.controls.params["max_new_tokens"].value = 5
        panel.controls.params["temperature"].value = 0.0
        data = _png()
        # As the browser sends it: the widget's own deserializer turns the message into its value.
        panel.controls.image.set_state({"value": [{"name": "red.png", "type": "image/png", "size": len(data),
                                                   "content": memoryview(data), "last_modified": 0}]})
        panel.controls.input.value = "What is <this>?"
        panel.controls.send.click()
        assert panel.controls.input.value == ""
        assert panel.controls.image.value == ()
        result = panel.wait()
        user = panel.history[0]["content"]
        assert [p["type"] for p in user] == ["image", "text"]
        assert user[0]["image"] == data
        assert "[image] What is &lt;this&gt;?" in panel.outputs.transcript.value
        # The same chat through the API: the same prompt tokens (the image's tokens included) and answer.
        alone = generate(loaded, [{"role": "user", "content": user}],
                         GenerationParams(temperature=0, max_new_tokens=5))
        assert (result.prompt_tokens, result.text) == (alone.prompt_tokens, alone.text)
        text_only = generate(loaded, "What is <this>?", GenerationParams(temperature=0, max_new_tokens=5))
        assert result.prompt_tokens > text_only.prompt_tokens + 10  # 16 image tokens for a 32x32 image
        # Text from the same box still works, and the transcript keeps both turns.
        panel.send("and text only", wait=True)
        assert len(panel.history) == 4
        # The Batch box runs text prompts on the vision-language model, as one at a time would.
        panel.controls.batch_input.value = "What is the answer?\nHello world"
        panel.controls.run_batch.click()
        batch = panel.wait()
        one = [generate(loaded, p, GenerationParams(temperature=0, max_new_tokens=5)).text
               for p in ("What is the answer?", "Hello world")]
        assert [r.text for r in batch] == one
        # The Store panel says what an image costs, as the checkpoint's config says.
        from workbench.ui.store_panel import entry_details_html

        assert "Tokens per image" in entry_details_html(loaded.entry, devices=["cpu"])
        assert loaded.entry.image_tokens == 16
    finally:
        reg.unload_all()
