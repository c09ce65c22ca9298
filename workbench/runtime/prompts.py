"""What the model reads: a plain prompt or a chat, rendered with the tokenizer's chat template.

A plain prompt becomes one user message; a system prompt goes first when the chat
has none. Without a chat template, a plain prompt is used as is and a chat becomes
``"Role: content"`` lines ending in ``"Assistant:"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..errors import GenerationError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ..store.entry import ModelEntry

Messages = Sequence[Mapping[str, str]]
"""A chat: ``{"role": ..., "content": ...}`` dicts in order."""
Prompt = str | Messages
"""A plain prompt, or a chat."""


def _messages(prompt: Prompt, system_prompt: str | None) -> tuple[list[dict[str, str]], bool]:
    """``(messages, was_plain_prompt)``; checks the shape of a messages list."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise GenerationError("the prompt is empty", hint="write something to answer")
        msgs = [{"role": "user", "content": prompt}]
        plain = True
    else:
        try:
            msgs = [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]
        except (TypeError, KeyError) as exc:
            raise GenerationError(f"messages must be dicts with 'role' and 'content' ({exc})",
                                  hint='e.g. [{"role": "user", "content": "Hello"}]') from None
        if not msgs:
            raise GenerationError("the message list is empty", hint="add a user message")
        plain = False
    if system_prompt and not any(m["role"] == "system" for m in msgs):
        msgs = [{"role": "system", "content": system_prompt}, *msgs]
    return msgs, plain


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, system_prompt: str | None = None, *,
                  template_source: str | None = None) -> tuple[str, bool]:
    """The text fed to the model, and whether the tokenizer should add special tokens.

    With a chat template, the template formats the messages (a plain prompt becomes
    one user message) and adds its own special tokens; it is rendered within bounds on
    time and memory (:mod:`workbench.chat_template`). Without one, a plain prompt
    is used as is; messages become ``"Role: content"`` lines ending in ``"Assistant:"``.

    Args:
        template_source: the template's file, named in errors (default: the tokenizer's folder).

    Raises:
        GenerationError: an empty prompt or message list, or messages that are not role/content dicts.
        ChatTemplateError: the template failed or went past its bounds.
    """
    return render_prompts(tokenizer, [prompt], system_prompt, template_source=template_source)[0]


def render_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], system_prompt: str | None = None,
                   *, template_source: str | None = None) -> list[tuple[str, bool]]:
    """:func:`render_prompt` for a batch, with one bounded render of the chat template for all of them."""
    shaped = [_messages(p, system_prompt) for p in prompts]
    if getattr(tokenizer, "chat_template", None):
        from ..chat_template import render_chat_template

        source = template_source or f"{getattr(tokenizer, 'name_or_path', '') or 'the tokenizer'} (chat template)"
        texts = render_chat_template(tokenizer, [msgs for msgs, _plain in shaped], source=source,
                                     add_generation_prompt=True)
        return [(t, False) for t in texts]
    out = []
    for msgs, plain in shaped:
        if plain and len(msgs) == 1:
            out.append((msgs[0]["content"], True))
            continue
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in msgs]
        out.append(("\n".join([*lines, "Assistant:"]), True))
    return out


def template_source(entry: ModelEntry) -> str:
    """The file a store entry's chat template comes from, as errors name it."""
    if entry.format == "gguf":
        return f"{entry.path} (tokenizer.chat_template)"
    if entry.chat_template_source:
        return str(entry.path / entry.chat_template_source)
    return f"{entry.path} (chat template)"
