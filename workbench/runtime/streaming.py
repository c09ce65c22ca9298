"""The pieces ``model.generate`` is fed per step: the streamer, the stop-string gate, the cancel criterion.

* :class:`StopStringGate` holds back text that is, or may become, a stop string, so
  a stream never shows one (transformers' ``stop_strings`` ends generation, but the
  text already streamed would include it).
* :func:`streamer_class`: transformers' ``TextStreamer`` (which decides when decoded
  text is final: CJK characters at once, words at a space, never half a UTF-8
  character), timing each step and streaming batch-1 text through the gate.
* :class:`ThinkSplitter`: a reasoning model's ``<think>...</think>`` text (Qwen3,
  DeepSeek-R1 distills) told apart from the answer as it streams, as engines' reasoning
  parsers do (vLLM's ``deepseek_r1``/``qwen3`` parsers: the text up to ``</think>`` is
  reasoning, also when the template opened ``<think>`` in the prompt).
* :class:`EventStop`: a stopping criterion that ends generation at the next step once
  an event is set (``Stream.stop()``, Ctrl-C).
* :class:`Stream`: the one stream a consumer reads, whoever produces it (a local
  ``model.generate``, an endpoint's SSE stream, llama.cpp): the shape of transformers'
  ``TextIteratorStreamer`` (a queue, an end sentinel, a producer on a background thread),
  plus ``stop()``, ``wait()``, ``text()`` and the producer's final result. Our own code
  because ``TextIteratorStreamer`` is fed by ``generate`` only and has no result, no
  reasoning channel and no error hand-off.

The producer interface, all a new engine implements (see :class:`StreamFeed`)::

    def produce(feed: StreamFeed) -> RunResult:
        for text, kind in engine_pieces():      # kind: "content" or "reasoning"
            feed.put(text, kind=kind)           # timestamped now (or t_s=perf_counter seconds)
            if feed.cancelled:                  # the consumer called stop()
                break
        return result                           # a workbench.runtime.metrics.RunResult

    s = Stream(produce, name="llama.cpp:my-model").start()
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .metrics import RunResult

PieceKind = Literal["content", "reasoning"]
"""What a streamed piece is: the answer, or a reasoning model's thinking before it."""


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


THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def opens_thinking(template: Any, prompt_text: str) -> bool | None:
    """Whether a reasoning template left ``<think>`` open at the end of the prompt.

    Returns:
        ``None`` when the chat template knows no ``<think>`` (no splitting at all), else
        whether generation starts inside the reasoning (R1 distills end the prompt with
        ``<think>``; Qwen3 with thinking off closes it: ``<think>\n\n</think>``).
    """
    text = template if isinstance(template, str) else " ".join(str(v) for v in (template or {}).values()) \
        if isinstance(template, dict) else ""
    if THINK_OPEN not in text:
        return None
    return prompt_text.rfind(THINK_OPEN) > prompt_text.rfind(THINK_CLOSE)


class ThinkSplitter:
    """Split streamed text into reasoning (inside ``<think>...</think>``) and answer pieces.

    :meth:`feed` returns ``[(kind, text), ...]`` releasable now (a tag cut across two
    pieces is held back until it is whole); :meth:`finish` releases the rest. The tags
    themselves are dropped, and so are the newlines between ``</think>`` and the answer.
    """

    def __init__(self, inside: bool = False) -> None:
        self.inside = inside
        self._buf = ""
        self._answer_started = False

    def _out(self, out: list[tuple[PieceKind, str]], text: str) -> None:
        if not self.inside and not self._answer_started:
            text = text.lstrip("\n")
            self._answer_started = bool(text)
        if text:
            out.append(("reasoning" if self.inside else "content", text))

    def feed(self, text: str) -> list[tuple[PieceKind, str]]:
        self._buf += text
        out: list[tuple[PieceKind, str]] = []
        while True:
            tag = THINK_CLOSE if self.inside else THINK_OPEN
            i = self._buf.find(tag)
            if i < 0:
                break
            self._out(out, self._buf[:i])
            self._buf = self._buf[i + len(tag):]
            self.inside = not self.inside
        hold = next((k for k in range(min(len(tag) - 1, len(self._buf)), 0, -1) if self._buf.endswith(tag[:k])), 0)
        self._out(out, self._buf[: len(self._buf) - hold])
        self._buf = self._buf[len(self._buf) - hold:]
        return out

    def finish(self) -> list[tuple[PieceKind, str]]:
        out: list[tuple[PieceKind, str]] = []
        self._out(out, self._buf)
        self._buf = ""
        return out

    @classmethod
    def split(cls, text: str, inside: bool) -> tuple[str, str]:
        """``(reasoning, answer)`` of a whole text (batches are decoded at the end)."""
        s = cls(inside)
        parts = s.feed(text) + s.finish()
        return ("".join(t for k, t in parts if k == "reasoning"), "".join(t for k, t in parts if k == "content"))


def route_text(text: str, end: bool, *, splitter: Any, gate: Any, reasoning: list[str],
               on_reasoning: Callable[[str], None] | None, emit: Callable[[str], None]) -> None:
    """Decoded text to its place, for every engine: with a :class:`ThinkSplitter`, thinking to
    ``reasoning`` and ``on_reasoning``; the answer through the stop-string ``gate`` to ``emit``
    (called with what the gate releases, possibly ``""``). ``end``: the last text of the answer
    (the splitter's held text is flushed; the gate is not: its owner decides)."""
    parts = [("content", text)] if splitter is None else splitter.feed(text)
    if end and splitter is not None:
        parts += splitter.finish()
    for kind, piece in parts:
        if kind == "reasoning":
            reasoning.append(piece)
            if on_reasoning is not None:
                on_reasoning(piece)
        else:
            emit(gate.feed(piece))


def _route(streamer: Any, text: str, stream_end: bool) -> None:
    """Final text of the streamer: reasoning to ``on_reasoning``, the answer through the stop gate."""
    route_text(text, stream_end, splitter=streamer.splitter, gate=streamer.gate, reasoning=streamer.reasoning,
               on_reasoning=streamer.on_reasoning, emit=streamer._emit)
    if stream_end:
        streamer._emit(streamer.gate.finish())


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
        """Times each generation step; streams batch-1 text through the gate to ``on_text``
        (and, with a ``splitter``, a reasoning model's thinking to ``on_reasoning``)."""

        def __init__(self, tokenizer: Any, on_text: Callable[[str], None] | None, stops: tuple[str, ...],
                     splitter: ThinkSplitter | None = None,
                     on_reasoning: Callable[[str], None] | None = None) -> None:
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
            self.on_text = on_text
            self.on_reasoning = on_reasoning
            self.splitter = splitter
            self.reasoning: list[str] = []
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
            _route(self, text, stream_end)

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


@dataclass(frozen=True)
class Piece:
    """One streamed piece.

    Attributes:
        text: the text released now.
        kind: ``"content"`` (the answer) or ``"reasoning"`` (thinking, shown apart).
        t_s: when it arrived (``time.perf_counter()`` seconds).
    """

    text: str
    kind: PieceKind = "content"
    t_s: float = 0.0


class StreamFeed:
    """What a producer is handed: :meth:`put` pieces, watch :attr:`cancelled` (or :attr:`cancel`).

    Attributes:
        cancel: set by :meth:`Stream.stop`; a producer that can check an event passes it on
            (``model.generate``'s stopping criterion, the endpoint client's ``cancel``).
    """

    def __init__(self, q: queue.Queue[Any], cancel: threading.Event) -> None:
        self._queue = q
        self.cancel = cancel

    def put(self, text: str, *, kind: PieceKind = "content", t_s: float | None = None) -> None:
        """Hand one piece to the consumer (empty text is dropped)."""
        if text:
            self._queue.put(Piece(text, kind, time.perf_counter() if t_s is None else t_s))

    def content(self, text: str) -> None:
        """``put(text)``: the callback form for producers that call ``on_piece(text)``."""
        self.put(text)

    def reasoning(self, text: str) -> None:
        """``put(text, kind="reasoning")``."""
        self.put(text, kind="reasoning")

    @property
    def cancelled(self) -> bool:
        return self.cancel.is_set()


_DONE = object()


class Stream:
    """An iterator of answer pieces from a producer on a background thread.

    Iterate for the answer's text pieces (``str``), or :meth:`pieces` for every
    :class:`Piece` (reasoning included). :meth:`stop` asks the producer to end; what
    arrived stays. :attr:`result` is the producer's :class:`~workbench.runtime.metrics.RunResult`
    once it ended; :meth:`wait` returns it (iterating what is left first, so it never
    hangs, also after the stream was iterated). If the producer raises, iteration and
    :meth:`wait` raise it (through ``wrap_error`` when it is not a ``WorkbenchError``).
    Interrupting the iteration (Ctrl-C, a generator closed early) stops the producer.

    Args:
        producer: ``producer(feed) -> RunResult`` (see the module doc).
        name: the thread's name (``workbench-stream-NAME``).
        on_piece: called with each answer piece as the consumer reads it.
        wrap_error: turns an unexpected exception into a typed one.
        before_start: called in the consumer's thread just before the producer's starts.
    """

    def __init__(self, producer: Callable[[StreamFeed], RunResult], *, name: str = "stream",
                 on_piece: Callable[[str], None] | None = None,
                 wrap_error: Callable[[Exception], BaseException] | None = None,
                 before_start: Callable[[], None] | None = None) -> None:
        self._before_start = before_start
        self.result: RunResult | None = None
        self.error: BaseException | None = None
        self._on_piece = on_piece
        self._wrap = wrap_error
        self._queue: queue.Queue[Any] = queue.Queue()
        self._stop = threading.Event()
        self._feed = StreamFeed(self._queue, self._stop)
        self._producer = producer
        self._done = False
        self._thread = threading.Thread(target=self._work, daemon=True, name=f"workbench-stream-{name}")
        self._started = False

    def start(self) -> Stream:
        if not self._started:
            self._started = True
            if self._before_start is not None:
                self._before_start()
            self._thread.start()
        return self

    def _work(self) -> None:
        from ..errors import WorkbenchError

        try:
            self.result = self._producer(self._feed)
        except WorkbenchError as exc:
            self.error = exc
        except Exception as exc:  # surfaced to the consumer as a typed error
            self.error = self._wrap(exc) if self._wrap is not None else exc
        finally:
            self._queue.put(_DONE)  # always: the consumer never waits forever

    def stop(self) -> None:
        """Ask the producer to end (a local generation ends within one token step)."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stop.is_set()

    def pieces(self) -> Iterator[Piece]:
        """Every piece as it arrives, reasoning included; ends when the producer does."""
        self.start()
        try:
            while not self._done:
                item = self._queue.get()
                if item is _DONE:
                    self._done = True
                    break
                if item.kind == "content" and self._on_piece is not None:
                    self._on_piece(item.text)
                yield item
        except BaseException:
            # Interrupted (KeyboardInterrupt, generator closed early): stop the worker, then re-raise.
            self._stop.set()
            self._thread.join()
            raise
        self._thread.join()
        if self.error is not None:
            raise self.error

    def __iter__(self) -> Iterator[str]:
        return (p.text for p in self.pieces() if p.kind == "content")

    def text(self) -> str:
        """Consume the stream and return the answer's text."""
        return "".join(self)

    def wait(self) -> RunResult:
        """Consume what is left (calling ``on_piece`` for each answer piece) and return the result.

        Raises:
            The producer's error.
        """
        for _ in self.pieces():
            pass
        if self.result is None:  # the producer neither returned nor raised: cannot happen, say so
            raise RuntimeError("the stream's producer ended without a result")
        return self.result
