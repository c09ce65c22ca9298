"""The pieces ``model.generate`` is fed per step: the streamer, the stop-string gate, the cancel criterion.

* :class:`StopStringGate` holds back text that is, or may become, a stop string, so
  a stream never shows one (transformers' ``stop_strings`` ends generation, but the
  text already streamed would include it).
* :func:`streamer_class`: transformers' ``TextStreamer`` (which decides when decoded
  text is final: CJK characters at once, words at a space, never half a UTF-8
  character), timing each step and streaming batch-1 text through the gate.
* :class:`EventStop`: a stopping criterion that ends generation at the next step once
  an event is set (``Stream.stop()``, Ctrl-C).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any


class StopStringGate:
    """Release text as it arrives, but never a stop string or what may become one.

    :meth:`feed` takes each decoded piece and returns what may be shown now;
    :meth:`finish` releases what was held back at the end. :attr:`final_text` is the
    whole text cut before the first stop string, :attr:`hit` where it starts (``None``
    when no stop string appeared).
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.text = ""
        self.emitted = 0
        self.hit: int | None = None

    @classmethod
    def cut(cls, text: str, stops: tuple[str, ...]) -> StopStringGate:
        """A gate fed the whole ``text`` at once (batches are decoded at the end)."""
        gate = cls(stops)
        gate.feed(text)
        gate.finish()
        return gate

    def feed(self, piece: str) -> str:
        self.text += piece
        return self._release(final=False)

    def finish(self) -> str:
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self.hit is not None:
            return ""
        end = len(self.text)
        if self.stops:
            found = [i for i in (self.text.find(s, self.emitted) for s in self.stops) if i >= 0]
            if found:
                self.hit = end = min(found)
            elif not final:
                hold = 0
                for s in self.stops:
                    for k in range(min(len(s) - 1, len(self.text) - self.emitted), hold, -1):
                        if self.text.endswith(s[:k]):
                            hold = k
                            break
                end -= hold
        out = self.text[self.emitted:end]
        self.emitted = max(self.emitted, end)
        return out

    @property
    def final_text(self) -> str:
        return self.text if self.hit is None else self.text[: self.hit]


@functools.cache
def streamer_class() -> type:
    """transformers' ``TextStreamer`` with step timing, a stop-string gate and a callback.

    Built on first use: transformers is imported inside functions (``import workbench``
    stays fast). ``TextStreamer`` decides when decoded text is final: at once for CJK
    characters, letters and digits, at a space or newline otherwise, and never while
    the text ends in an incomplete UTF-8 character.
    """
    from transformers import TextStreamer

    class _Streamer(TextStreamer):
        """Times each generation step; streams batch-1 text through the gate to ``on_text``."""

        def __init__(self, tokenizer: Any, on_text: Callable[[str], None] | None, stops: tuple[str, ...]) -> None:
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
            self.on_text = on_text
            self.gate = StopStringGate(stops)
            self.step_times: list[float] = []

        def put(self, value: Any) -> None:
            if self.next_tokens_are_prompt:  # generate() passes the prompt first
                self.next_tokens_are_prompt = False
                return
            self.step_times.append(time.perf_counter())
            if self.on_text is None or value.numel() != 1:  # batches are decoded at the end
                return
            super().put(value.reshape(-1))

        def end(self) -> None:
            if self.on_text is not None:
                super().end()

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            self._emit(self.gate.feed(text))
            if stream_end:
                self._emit(self.gate.finish())

        def _emit(self, piece: str) -> None:
            if piece and self.on_text is not None:
                self.on_text(piece)

    return _Streamer


class EventStop:
    """A stopping criterion that ends generation at the next step once ``event`` is set."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)
