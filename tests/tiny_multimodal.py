"""Tiny random checkpoints of families beyond decoder-only text models, built locally for tests.

Vision-language models (Llava, Qwen2-VL, Gemma 3) with a tiny processor (image processor plus the
byte-level tokenizer of :mod:`tiny_models`, with the model's image token added), and the
families the runtime does not run (T5, an encoder-decoder; BERT, an encoder with a
masked-LM head). Random weights, nothing downloaded.
"""

from __future__ import annotations

from pathlib import Path

from tiny_models import build_tokenizer

#: The chat template of tiny VLMs: content parts, an image part drawn as the model's image token.
VLM_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ IMAGE }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

UNSUPPORTED = ("t5", "bert")
VLMS = ("llava", "qwen2_vl", "gemma3")


def _save_text_model(model, tokenizer, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def build_unsupported(kind: str, dest: Path, seed: int = 0) -> Path:
    """A tiny ``t5`` (``T5ForConditionalGeneration``) or ``bert`` (``BertForMaskedLM``) with a tokenizer."""
    import torch
    import transformers

    tok = build_tokenizer()
    torch.manual_seed(seed)
    if kind == "t5":
        config = transformers.T5Config(vocab_size=384, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                                       decoder_start_token_id=tok.pad_token_id, pad_token_id=tok.pad_token_id,
                                       eos_token_id=tok.eos_token_id)
        model = transformers.T5ForConditionalGeneration(config)
    elif kind == "bert":
        config = transformers.BertConfig(vocab_size=384, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=128, max_position_embeddings=256)
        model = transformers.BertForMaskedLM(config)
    else:
        raise ValueError(kind)
    return _save_text_model(model, tok, dest)


def _vlm_tokenizer(image_token: str, extra: tuple[str, ...] = ()):
    tok = build_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": [image_token, *extra]})
    return tok


class _Parts:
    """Saves an image processor and a tokenizer (with its chat template) as a processor's files."""

    def __init__(self, image_processor, tokenizer):
        self.parts = (image_processor, tokenizer)

    def save_pretrained(self, dest: Path) -> None:
        for part in self.parts:
            part.save_pretrained(dest)


def build_vlm(kind: str, dest: Path, seed: int = 0) -> Path:
    """A tiny random ``llava``, ``qwen2_vl`` or ``gemma3`` checkpoint with its processor, saved as people save them.

    The text model has 2 layers of width 64, the vision tower 1-2 layers; images are
    resized to 32x32 (Llava: 16 image tokens of 8x8 patches; Qwen2-VL: 4 merged tokens;
    Gemma 3: 4 pooled tokens).
    """
    import torch
    import transformers

    torch.manual_seed(seed)
    if kind == "llava":
        tok = _vlm_tokenizer("<image>")
        tok.chat_template = VLM_TEMPLATE.replace("{{ IMAGE }}", "{{ '<image>' }}")
        image_token_id = tok.convert_tokens_to_ids("<image>")
        vocab = ((len(tok) + 63) // 64) * 64
        text = transformers.LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=256, bos_token_id=tok.bos_token_id,
                                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                               num_attention_heads=2, image_size=32, patch_size=8,
                                               projection_dim=32)
        config = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token_id,
                                          image_seq_length=16, vision_feature_layer=-1,
                                          vision_feature_select_strategy="default")
        model = transformers.LlavaForConditionalGeneration(config)
        image_processor = transformers.CLIPImageProcessorPil(size={"shortest_edge": 32},
                                                          crop_size={"height": 32, "width": 32})
        processor = transformers.LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=8,
                                                vision_feature_select_strategy="default",
                                                chat_template=tok.chat_template, num_additional_image_tokens=1)
    elif kind == "qwen2_vl":
        tok = _vlm_tokenizer("<|image_pad|>", ("<|vision_start|>", "<|vision_end|>", "<|video_pad|>"))
        tok.chat_template = VLM_TEMPLATE.replace("{{ IMAGE }}", "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}")
        ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|vision_start|>", "<|vision_end|>",
                                                          "<|video_pad|>")}
        vocab = ((len(tok) + 63) // 64) * 64
        config = transformers.Qwen2VLConfig(
            text_config=dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                             rope_scaling={"type": "mrope", "mrope_section": [2, 2, 4]},
                             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id),
            vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=8,
                               spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
            image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
        model = transformers.Qwen2VLForConditionalGeneration(config)
        image_processor = transformers.Qwen2VLImageProcessorPil(patch_size=8, merge_size=2, temporal_patch_size=2,
                                                             min_pixels=32 * 32, max_pixels=32 * 32)
        # Qwen2VLProcessor needs torchvision (its video processor), which the workbench does not
        # require: the parts are saved as the processor would save them.
        processor = _Parts(image_processor, tok)
    elif kind == "gemma3":
        # In both the causal-LM and the image-text-to-text tables: the workbench must pick the latter.
        from transformers import PreTrainedTokenizerFast

        base = build_tokenizer()
        tok = PreTrainedTokenizerFast(
            tokenizer_object=base._tokenizer, bos_token=base.bos_token, eos_token=base.eos_token,
            pad_token=base.pad_token, unk_token=base.unk_token,
            extra_special_tokens={"boi_token": "<start_of_image>", "image_token": "<image_soft_token>",
                                  "eoi_token": "<end_of_image>"})
        tok.chat_template = VLM_TEMPLATE.replace("{{ IMAGE }}", "{{ '<start_of_image>' }}")
        vocab = ((len(tok) + 63) // 64) * 64
        text = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                    sliding_window=64, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                    pad_token_id=tok.pad_token_id)
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      image_size=32, patch_size=8)
        config = transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                                           boi_token_index=tok.boi_token_id, image_token_index=tok.image_token_id,
                                           eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"))
        model = transformers.Gemma3ForConditionalGeneration(config)
        processor = transformers.Gemma3Processor(
            image_processor=transformers.Gemma3ImageProcessorPil(size={"height": 32, "width": 32}),
            tokenizer=tok, image_seq_length=4, chat_template=tok.chat_template)
    else:
        raise ValueError(kind)
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    processor.save_pretrained(dest)
    return dest
