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


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, system_prompt: str | None = None) -> tuple[str, bool]:
    """The text fed to the model, and whether the tokenizer should add special tokens.

    With a chat template, the template formats the messages (a plain prompt becomes
    one user message) and adds its own special tokens. Without one, a plain prompt
    is used as is; messages become ``"Role: content"`` lines ending in ``"Assistant:"``.

    Raises:
        GenerationError: an empty prompt or message list, or messages that are not role/content dicts.
    """
    msgs, plain = _messages(prompt, system_prompt)
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        return text, False
    if plain and len(msgs) == 1:
        return msgs[0]["content"], True
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in msgs]
    return "\n".join([*lines, "Assistant:"]), True
