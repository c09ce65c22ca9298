"""What the model reads: a plain prompt or a chat, rendered with the tokenizer's chat template.

A plain prompt becomes one user message; a system prompt goes first when the chat
has none. Without a chat template, a plain prompt is used as is and a chat becomes
``"Role: content"`` lines ending in ``"Assistant:"``.

A message's content is a string, or a list of content parts as transformers' chat
templates take them (and OpenAI's API sends them): ``{"type": "text", "text": ...}``
and ``{"type": "image", ...}`` with the image as ``"image"`` (a ``PIL.Image`` or the
file's bytes), ``"path"`` (a local file), ``"base64"`` or ``"url"`` (a ``data:`` URL);
OpenAI's ``{"type": "image_url", "image_url": {"url": ...}}`` is taken too. The
template sees each image as a bare ``{"type": "image"}`` part (where the model's image
token goes); :func:`prompt_images` reads the images themselves, within bounds, for the
processor. A message of text parts only becomes one string, so text-only templates work.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import GenerationError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ..store.entry import ModelEntry

Messages = Sequence[Mapping[str, Any]]
"""A chat: ``{"role": ..., "content": ...}`` dicts in order; content a string or a list of parts."""
Prompt = str | Messages
"""A plain prompt, or a chat."""

#: Largest image file read for a prompt (bytes), and most pixels decoded (a decompression bomb's cost).
MAX_IMAGE_BYTES = 64 << 20
MAX_IMAGE_PIXELS = 50_000_000
_PART_HINT = ('content parts look like {"type": "text", "text": "..."} or {"type": "image", "image": <PIL image '
              'or bytes>} ("path": a local file, "url": a data: URL, "base64": the encoded file)')


def _content(content: Any) -> tuple[Any, list[Any]]:
    """``(content for the template, the image sources in order)`` of one message."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, (list, tuple)):
        return str(content), []
    parts: list[dict[str, Any]] = []
    images: list[Any] = []
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind in ("image", "image_url"):
            images.append(_image_source(part))
            parts.append({"type": "image"})
        else:
            raise GenerationError(f"a content part is not a text or image part: {str(part)[:120]}", hint=_PART_HINT)
    if not images:
        return "".join(p["text"] for p in parts), []
    return parts, images


def _image_source(part: Mapping[str, Any]) -> Any:
    if part.get("type") == "image_url":
        inner = part.get("image_url")
        url = inner.get("url") if isinstance(inner, Mapping) else inner
        return ("url", url)
    for key in ("image", "path", "url", "base64"):
        if part.get(key) is not None:
            return (key, part[key])
    raise GenerationError("an image part holds no image", hint=_PART_HINT)


def _messages(prompt: Prompt, system_prompt: str | None) -> tuple[list[dict[str, Any]], bool, list[Any]]:
    """``(messages, was_plain_prompt, image sources)``; checks the shape of a messages list."""
    images: list[Any] = []
    if isinstance(prompt, str):
        if not prompt.strip():
            raise GenerationError("the prompt is empty", hint="write something to answer")
        msgs: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
        plain = True
    else:
        try:
            msgs = []
            for m in prompt:
                content, found = _content(m["content"])
                msgs.append({"role": str(m["role"]), "content": content})
                images.extend(found)
        except (TypeError, KeyError, AttributeError) as exc:
            raise GenerationError(f"messages must be dicts with 'role' and 'content' ({exc})",
                                  hint='e.g. [{"role": "user", "content": "Hello"}]') from None
        if not msgs:
            raise GenerationError("the message list is empty", hint="add a user message")
        plain = False
    if system_prompt and not any(m["role"] == "system" for m in msgs):
        msgs = [{"role": "system", "content": system_prompt}, *msgs]
    return msgs, plain, images


def prompt_images(prompts: Sequence[Prompt]) -> list[list[Any]]:
    """The images of each prompt, in the order their parts come, as RGB ``PIL.Image`` objects.

    Raises:
        GenerationError: an image that cannot be read or decoded, a file over
            :data:`MAX_IMAGE_BYTES`, more than :data:`MAX_IMAGE_PIXELS` pixels, or a URL that
            is not a ``data:`` URL (nothing is downloaded).
    """
    return [[_load_image(kind, value) for kind, value in _messages(p, None)[2]] for p in prompts]


def _load_image(kind: str, value: Any) -> Any:
    from PIL import Image

    if isinstance(value, Image.Image):
        return _checked(value).convert("RGB")
    data = _image_bytes(kind, value)
    try:
        img = Image.open(io.BytesIO(data))
        _checked(img)
        img.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise GenerationError(f"an image in the prompt cannot be read ({type(exc).__name__}: {str(exc)[:200]})",
                              hint="pass a PNG, JPEG or another format Pillow reads") from None
    return img.convert("RGB")


def _checked(img: Any) -> Any:
    width, height = img.size
    if width * height > MAX_IMAGE_PIXELS:
        raise GenerationError(f"an image in the prompt has {width}x{height} pixels, more than the "
                              f"{MAX_IMAGE_PIXELS:,} the workbench decodes", hint="resize it first")
    return img


def _image_bytes(kind: str, value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)) and kind == "image":
        data = bytes(value)
    elif kind == "path" or (kind == "image" and isinstance(value, str)):
        data = _read_file(str(value))
    elif kind == "base64" and isinstance(value, str):
        data = _b64(value)
    elif kind == "url" and isinstance(value, str) and value.startswith("data:") and "," in value:
        head, _, payload = value.partition(",")
        data = _b64(payload) if head.endswith(";base64") else payload.encode()
    elif kind == "url" and isinstance(value, str) and value.startswith("file://"):
        data = _read_file(value[len("file://"):])
    else:
        raise GenerationError(f"an image part's {kind!r} is not an image the workbench reads: {str(value)[:80]}",
                              hint="pass the image itself, a local path or a data: URL; nothing is downloaded")
    if len(data) > MAX_IMAGE_BYTES:
        raise GenerationError(f"an image in the prompt is {len(data):,} bytes, more than the {MAX_IMAGE_BYTES:,} "
                              "the workbench reads", hint="resize or recompress it first")
    return data


def _b64(text: str) -> bytes:
    if len(text) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise GenerationError("an image in the prompt is larger than the workbench reads", hint="resize it first")
    try:
        return base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise GenerationError(f"an image's base64 text does not decode ({exc})", hint=_PART_HINT) from None


def _read_file(path: str) -> bytes:
    from .._bounded_read import read_bytes

    try:
        return read_bytes(path, MAX_IMAGE_BYTES)
    except (OSError, ValueError) as exc:
        raise GenerationError(f"the image {path} cannot be read ({exc})", hint="check the path") from None


def openai_messages(messages: Messages) -> list[dict[str, Any]]:
    """The messages as an OpenAI-compatible server reads them: images as ``image_url`` parts.

    A text-only message keeps its content as is; each image part becomes
    ``{"type": "image_url", "image_url": {"url": "data:<mime>;base64,..."}}`` (what OpenAI's
    chat API, vLLM, llama.cpp's server and ``transformers serve`` take), read within the same
    bounds as for a model loaded here. An ``http(s)`` URL is passed on as it is: the server
    fetches it, the workbench downloads nothing.

    Raises:
        GenerationError: a malformed part, or an image that cannot be read (as :func:`prompt_images`).
    """
    out: list[dict[str, Any]] = []
    for m in messages:
        msg = dict(m)
        content = msg.get("content")
        if isinstance(content, (list, tuple)):
            parts: list[dict[str, Any]] = []
            for part in content:
                kind = part.get("type") if isinstance(part, Mapping) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    parts.append({"type": "text", "text": part["text"]})
                elif kind in ("image", "image_url"):
                    parts.append({"type": "image_url", "image_url": {"url": _wire_url(*_image_source(part))}})
                else:
                    raise GenerationError(f"a content part is not a text or image part: {str(part)[:120]}",
                                          hint=_PART_HINT)
            msg["content"] = parts
        out.append(msg)
    return out


def _wire_url(kind: str, value: Any) -> str:
    if kind == "url" and isinstance(value, str) and value.startswith(("http://", "https://")):
        return value
    from PIL import Image

    if isinstance(value, Image.Image):
        buf = io.BytesIO()
        _checked(value).save(buf, format="PNG")
        data, mime = buf.getvalue(), "image/png"
    else:
        data = _image_bytes(kind, value)
        try:
            with Image.open(io.BytesIO(data)) as img:
                _checked(img)
                mime = Image.MIME.get(img.format or "", "")
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise GenerationError(f"an image in the prompt cannot be read ({type(exc).__name__}: {str(exc)[:200]})",
                                  hint="pass a PNG, JPEG or another format Pillow reads") from None
        if not mime:
            raise GenerationError("an image in the prompt is in a format with no MIME type to send",
                                  hint="convert it to PNG or JPEG")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, system_prompt: str | None = None, *,
                  template_source: str | None = None,
                  template_kwargs: Mapping[str, Any] | None = None) -> tuple[str, bool]:
    """The text fed to the model, and whether the tokenizer should add special tokens.

    With a chat template, the template formats the messages (a plain prompt becomes
    one user message) and adds its own special tokens; it is rendered within bounds on
    time and memory (:mod:`workbench.chat_template`). Without one, a plain prompt
    is used as is; messages become ``"Role: content"`` lines ending in ``"Assistant:"``.

    Args:
        template_source: the template's file, named in errors (default: the tokenizer's folder).
        template_kwargs: variables the chat template sees (``{"enable_thinking": False}``).

    Raises:
        GenerationError: an empty prompt or message list, or messages that are not role/content dicts.
        ChatTemplateError: the template failed or went past its bounds.
    """
    return render_prompts(tokenizer, [prompt], system_prompt, template_source=template_source,
                          template_kwargs=template_kwargs)[0]


def render_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], system_prompt: str | None = None,
                   *, template_source: str | None = None,
                   template_kwargs: Mapping[str, Any] | None = None) -> list[tuple[str, bool]]:
    """:func:`render_prompt` for a batch, with one bounded render of the chat template for all of them."""
    shaped = [_messages(p, system_prompt) for p in prompts]
    if getattr(tokenizer, "chat_template", None):
        from ..chat_template import render_chat_template

        source = template_source or f"{getattr(tokenizer, 'name_or_path', '') or 'the tokenizer'} (chat template)"
        texts = render_chat_template(tokenizer, [msgs for msgs, _plain, _images in shaped], source=source,
                                     add_generation_prompt=True, **dict(template_kwargs or {}))
        return [(t, False) for t in texts]
    if any(images for _msgs, _plain, images in shaped):
        raise GenerationError("the prompt holds images, and the model has no chat template to place them",
                              hint="add the model's chat template (chat_template.json) or send text only")
    out = []
    for msgs, plain, _images in shaped:
        if plain and len(msgs) == 1:
            out.append((msgs[0]["content"], True))
            continue
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in msgs]
        out.append(("\n".join([*lines, "Assistant:"]), True))
    return out


def takes_enable_thinking(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template reads ``enable_thinking`` (Qwen3's switch for its reasoning)."""
    template = getattr(tokenizer, "chat_template", None)
    text = template if isinstance(template, str) else " ".join(map(str, template.values())) \
        if isinstance(template, dict) else ""
    return "enable_thinking" in text


def template_source(entry: ModelEntry) -> str:
    """The file a store entry's chat template comes from, as errors name it."""
    if entry.format == "gguf":
        return f"{entry.path} (tokenizer.chat_template)"
    if entry.chat_template_source:
        return str(entry.path / entry.chat_template_source)
    return f"{entry.path} (chat template)"
