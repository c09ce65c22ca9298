"""Generation: one prompt, a stream of text pieces, or a batch; with the metrics of every run.

Every run reports prompt tokens, new tokens, time to first token, decode tokens/s,
total time, and the roofline the user is working against (:mod:`.metrics`). The
prompt is rendered by :mod:`.prompts`; what ``model.generate`` is fed per step (the
streamer, the stop-string gate, the cancel criterion) lives in :mod:`.streaming`.

Example:
    >>> r = generate(loaded, "What is the capital of France?", GenerationParams(temperature=0))  # doctest: +SKIP
    >>> r.text, r.tokens_per_s_str  # doctest: +SKIP
    ('The capital of France is Paris.', '38.2 tokens/s')
    >>> s = stream(loaded, [{"role": "user", "content": "Tell me a story"}])  # doctest: +SKIP
    >>> for piece in s: print(piece, end="")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .._records import Record
from ..errors import ConfigError, GenerationError, GenerationOutOfMemoryError, WorkbenchError
from ..store import format_bytes
from ..telemetry.events import post_event
from . import _memory
from .load_errors import is_oom
from .metrics import RunResult, decode_rate, roofline
from .prompts import Prompt, prompt_images, render_prompts, template_source
from .registry import LoadedModel
from .streaming import (
    EventStop,
    StopStringGate,
    Stream,
    StreamFeed,
    ThinkSplitter,
    opens_thinking,
    streamer_class,
)

StoppedBy = Literal["eos", "max_new_tokens", "stop_string", "cancelled"]
"""Why a generation ended."""


@dataclass(frozen=True)
class GenerationParams(Record):
    """Sampling settings. ``temperature=0`` means greedy decoding.

    Attributes:
        max_new_tokens: at most this many tokens are generated.
        temperature, top_p, top_k: sampling (``top_k=0`` disables top-k).
        repetition_penalty: above 1 discourages repeats.
        stop: strings that end generation; the text returned stops before them.
        seed: seed torch's RNG for a reproducible sample (``None``: not seeded).
        system_prompt: a system message, put first when the prompt has none.
        enable_thinking: for chat templates that take it (Qwen3): ``True``/``False`` turn a
            reasoning model's thinking on or off; ``None`` leaves the template's default.
    """

    max_new_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 50
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    system_prompt: str | None = None
    enable_thinking: bool | None = None

    def __post_init__(self) -> None:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        object.__setattr__(self, "stop", stop)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def validate(self) -> GenerationParams:
        """``self``, once every setting is in range.

        Raises:
            ConfigError: naming the setting at fault and a value that works.
        """
        def bad(what: str, hint: str) -> ConfigError:
            return ConfigError(what, hint=hint)

        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise bad(f"max_new_tokens must be a positive integer, not {self.max_new_tokens!r}", "e.g. 128")
        if not self.temperature >= 0:
            raise bad(f"temperature must be 0 (greedy) or more, not {self.temperature!r}", "e.g. 0.7")
        if not 0 < self.top_p <= 1:
            raise bad(f"top_p must be in (0, 1], not {self.top_p!r}", "e.g. 0.95, or 1 to disable it")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise bad(f"top_k must be 0 or a positive integer, not {self.top_k!r}", "e.g. 50, or 0 to disable it")
        if not self.repetition_penalty > 0:
            raise bad(f"repetition_penalty must be positive, not {self.repetition_penalty!r}", "1.0 means none")
        if self.enable_thinking not in (None, True, False):
            raise bad(f"enable_thinking must be True, False or None, not {self.enable_thinking!r}",
                      "None leaves the chat template's default")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise bad(f"stop strings must be non-empty strings, not {list(self.stop)!r}", "e.g. stop=('###',)")
        return self


@dataclass(frozen=True, kw_only=True)
class GenerationResult(RunResult):
    """One local generation: the fields of every :class:`~workbench.runtime.metrics.RunResult`
    (text, tokens, ttft_s, tokens_per_s, stopped_by, reasoning...), plus the roofline.

    Attributes:
        weight_bytes: bytes a decode step reads (footprint plus quantization scales).
        achieved_bytes_per_s: ``weight_bytes x tokens_per_s``.
        bandwidth_bytes_per_s: the devices' measured memory bandwidth (``None`` if unmeasured).
        decode_efficiency: achieved over measured bandwidth, 0..1; ``None`` when the
            weights are small enough to live in caches (the roofline does not apply).
    """

    weight_bytes: int
    achieved_bytes_per_s: float

    @property
    def achieved_str(self) -> str:
        return f"{format_bytes(self.achieved_bytes_per_s)}/s"


# --- the core --------------------------------------------------------------------------------


def _generation_config(loaded: LoadedModel, params: GenerationParams) -> Any:
    model, tok = loaded.model, loaded.tokenizer
    gc = copy.deepcopy(model.generation_config)
    settings: dict[str, Any] = {"max_new_tokens": params.max_new_tokens, "repetition_penalty": params.repetition_penalty,
                                "stop_strings": list(params.stop) or None}
    if params.greedy:
        # Unset the sampling knobs so transformers does not warn that they are ignored.
        settings.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        settings.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None)
    if gc.pad_token_id is None:
        settings["pad_token_id"] = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if gc.eos_token_id is None and tok.eos_token_id is not None:
        settings["eos_token_id"] = tok.eos_token_id
    gc.update(**settings)
    return gc


def _pad_id(gc: Any) -> int | None:
    """The token a batch is padded with: the generation config's pad token, else its (first) EOS token."""
    if gc.pad_token_id is not None:
        return int(gc.pad_token_id)
    eos = gc.eos_token_id
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    return None if eos is None else int(eos)


def _encode(loaded: LoadedModel, texts: list[str], add_special: bool, gc: Any) -> Any:
    """Tokenize one prompt, or a batch left-padded to one length.

    A tokenizer without a pad token pads with the generation config's pad or EOS
    token (what ``generate`` itself falls back to).

    Raises:
        GenerationError: a batch, and neither the tokenizer nor the generation
            config has a pad or EOS token to pad with.
    """
    tok = loaded.tokenizer
    if len(texts) == 1 or tok.pad_token_id is not None:
        return tok(texts, return_tensors="pt", padding=len(texts) > 1, padding_side="left",
                   add_special_tokens=add_special)
    pad = _pad_id(gc)
    if pad is None:
        raise GenerationError(
            f"cannot batch prompts for {loaded.name}: its tokenizer has neither a pad nor an EOS token, "
            "so shorter prompts cannot be padded",
            hint="set one on the loaded model, e.g. `loaded.tokenizer.pad_token = loaded.tokenizer.unk_token` or "
                 "`loaded.model.generation_config.pad_token_id = <a token id>`, or generate the prompts one at a time; "
                 "the model is still loaded",
            name=loaded.name)
    import torch

    rows = tok(texts, add_special_tokens=add_special)["input_ids"]
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask}


def _encode_with_images(loaded: LoadedModel, texts: list[str], images: list[list[Any]], add_special: bool) -> Any:
    """The processor's inputs (token ids with each image's tokens expanded, pixel values...) for
    prompts with images, left-padded to one length: what ``processor.apply_chat_template`` feeds.

    Raises:
        GenerationError: the model takes no images, or its processor could not be built here.
    """
    _require_processor(loaded)
    # One list of images per prompt (Gemma 3 checks each row's count; the others flatten it).
    try:
        return loaded.processor(text=texts, images=images, return_tensors="pt", padding=len(texts) > 1,
                                padding_side="left", add_special_tokens=add_special)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise GenerationError(f"{loaded.name}'s processor refused the prompt's images ({type(exc).__name__}: "
                              f"{str(exc)[:300]})", hint="check that each image part sits in a user message; "
                              "the model is still loaded", name=loaded.name) from None


def _require_processor(loaded: LoadedModel) -> None:
    """Raises GenerationError: the model takes no images, or its processor could not be built here."""
    if loaded.processor is None:
        why = (loaded.processor_problem if loaded.processor_problem else
               f"it is a text model ({loaded.entry.auto_class or 'AutoModelForCausalLM'})")
        hint = ("install what that names and load the model again, or send text only; the model is still loaded"
                if loaded.processor_problem else "send text only, or load a vision-language model "
                "(`workbench store list` names each model's auto class)")
        raise GenerationError(f"{loaded.name} cannot read images: {why}", hint=hint, name=loaded.name)


def _eos_ids(loaded: LoadedModel, gc: Any) -> set[int]:
    eos = gc.eos_token_id
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    if loaded.tokenizer.eos_token_id is not None:
        ids.add(loaded.tokenizer.eos_token_id)
    return ids


def _row_tokens(row: list[int], eos: set[int], pad: int | None) -> tuple[list[int], bool]:
    """The tokens a row really generated, and whether it ended with an EOS token."""
    for i, t in enumerate(row):
        if t in eos:
            return row[: i + 1], True
    if pad is not None:
        while row and row[-1] == pad:
            row = row[:-1]
    return row, False


def _tokens_to_stop(tokenizer: Any, ids: list[int], stop: str) -> int:
    """How many of ``ids`` it took for the decoded text to contain ``stop``."""
    for k in range(1, len(ids) + 1):
        if stop in tokenizer.decode(ids[:k], skip_special_tokens=True):
            return k
    return len(ids)


def _template_kwargs(params: GenerationParams) -> dict[str, Any]:
    """Variables the chat template gets beyond the messages (only those the user set)."""
    return {} if params.enable_thinking is None else {"enable_thinking": params.enable_thinking}


def _run(loaded: LoadedModel, prompts: list[Any], params: GenerationParams, *,
         on_piece: Callable[[str], None] | None, stop_event: threading.Event | None,
         on_reasoning: Callable[[str], None] | None = None) -> list[GenerationResult]:
    """Generate for one prompt (streamed to ``on_piece``) or a left-padded batch; in this thread."""
    params.validate()
    loaded.require()
    with loaded.lock:
        loaded.require()  # unloaded while we waited for the lock
        loaded.touch()
        t0 = time.perf_counter()
        tok = loaded.tokenizer
        images = prompt_images(prompts)  # read (within bounds) and checked before any render
        if any(images):
            _require_processor(loaded)
        # One bounded render of the model's chat template for the batch (runtime/chat_template.py).
        rendered = render_prompts(tok, prompts, params.system_prompt, template_source=template_source(loaded.entry),
                                  template_kwargs=_template_kwargs(params))
        texts = [text for text, _special in rendered]
        add_special = rendered[-1][1] if rendered else True
        if getattr(loaded, "engine", "transformers") == "llamacpp":  # a GGUF on llama.cpp (runtime/llamacpp.py)
            from .llamacpp import generate_rows

            post_event("generate_started", f"generating with {loaded.name}", model=loaded.name, batch=len(texts),
                 max_new_tokens=params.max_new_tokens)
            try:
                rows, t_end = generate_rows(loaded, texts, add_special, params, on_piece=on_piece,
                                            stop_event=stop_event or threading.Event(), t0=t0,
                                            on_reasoning=on_reasoning)
            except GenerationError as exc:
                post_event("error", str(exc), model=loaded.name, error=type(exc).__name__, phase="generate")
                raise
            return _results(loaded, rows, t_end - t0, len(texts))
        gc = _generation_config(loaded, params)
        try:
            enc = (_encode_with_images(loaded, texts, images, add_special) if any(images)
                   else _encode(loaded, texts, add_special, gc))
        except GenerationError as exc:
            post_event("error", str(exc), model=loaded.name, error=type(exc).__name__, phase="generate")
            raise
        prompt_lens = [int(x) for x in enc["attention_mask"].sum(dim=1).tolist()]
        # A reasoning template (<think>...</think>): where each row's generation starts.
        thinking = [opens_thinking(getattr(tok, "chat_template", None), t) for t in texts]
        splitter = ThinkSplitter(thinking[0]) if len(texts) == 1 and thinking[0] is not None else None
        streamer = streamer_class()(tok, on_piece if len(texts) == 1 else None, params.stop, splitter, on_reasoning)
        event = stop_event or threading.Event()
        post_event("generate_started", f"generating with {loaded.name}", model=loaded.name, batch=len(texts),
             prompt_tokens=sum(prompt_lens), max_new_tokens=params.max_new_tokens)
        seqs = _call_generate(loaded, enc, gc, params, streamer, event)
        del enc
        t_end = time.perf_counter()
        eos, pad = _eos_ids(loaded, gc), gc.pad_token_id
        streamed = len(texts) == 1 and on_piece is not None
        rows = []
        for i, row in enumerate(seqs):
            text, reasoning, n, stopped = _row_outcome(tok, row, eos, pad, params, event,
                                                       streamer if streamed else None, thinking[i])
            times = streamer.step_times
            ttft = (times[0] - t0) if times else (t_end - t0)
            rows.append((text, reasoning, prompt_lens[i], n, ttft, decode_rate(n, times, t0, t_end), stopped))
        total = t_end - t0
    return _results(loaded, rows, total, len(texts))


def _results(loaded: LoadedModel, rows: list[Any], total: float, batch: int) -> list[GenerationResult]:
    """Results from ``(text, reasoning, prompt_tokens, new_tokens, ttft_s, tokens_per_s, stopped_by)`` rows;
    posts the event."""
    # Measured outside the timed region (once per device, then cached).
    results = [_result(loaded, text, reasoning, plen, n, ttft, rate, total, stopped)
               for text, reasoning, plen, n, ttft, rate, stopped in rows]
    agg = results[0]
    new_tokens = sum(r.new_tokens for r in results)
    post_event("generate_finished", f"{loaded.name}: {new_tokens} tokens, {agg.tokens_per_s:.1f} tokens/s",
         model=loaded.name, tokens_per_s=agg.tokens_per_s, new_tokens=new_tokens, ttft_s=agg.ttft_s, total_s=total,
         batch=batch, decode_efficiency=agg.decode_efficiency)
    return results


def _result(loaded: LoadedModel, text: str, reasoning: str, prompt_tokens: int, n: int, ttft: float, rate: float,
            total: float, stopped: StoppedBy) -> GenerationResult:
    weight_bytes, achieved, bandwidth, efficiency = roofline(loaded, rate)
    return GenerationResult(text, prompt_tokens, n, ttft, rate, total, stopped, model=loaded.name, reasoning=reasoning,
                            weight_bytes=weight_bytes, achieved_bytes_per_s=achieved,
                            bandwidth_bytes_per_s=bandwidth, decode_efficiency=efficiency)


def _call_generate(loaded: LoadedModel, enc: Any, gc: Any, params: GenerationParams, streamer: Any,
                   event: threading.Event) -> list[list[int]]:
    """``model.generate`` on the encoded prompts; the new tokens of each row.

    Raises:
        GenerationOutOfMemoryError, GenerationError: after the failed call's frames are
            cleared and memory released (the model stays loaded).
    """
    first_device = next(iter(loaded.placement), loaded.devices[0])
    if first_device == "meta":
        first_device = loaded.devices[0]
    input_ids = enc["input_ids"].to(first_device)
    attention = enc["attention_mask"].to(first_device)
    # A processor's other inputs (pixel values, image sizes, grids), floats in the model's dtype.
    extra = {k: (v.to(first_device, dtype=loaded.model.dtype) if v.is_floating_point() else v.to(first_device))
             for k, v in enc.items() if k not in ("input_ids", "attention_mask") and hasattr(v, "to")}
    failure: WorkbenchError | None = None
    try:
        import torch
        from transformers import StoppingCriteriaList

        if params.seed is not None:
            torch.manual_seed(params.seed)
        try:
            with torch.inference_mode():
                out = loaded.model.generate(input_ids=input_ids, attention_mask=attention, generation_config=gc,
                                            streamer=streamer, stopping_criteria=StoppingCriteriaList([EventStop(event)]),
                                            tokenizer=loaded.tokenizer, **extra)
        finally:
            _memory.release_omp_threads()  # one OpenMP team at a time
    except Exception as exc:  # translated below, outside the handler, so no frame pins activations
        failure = _generation_failure(loaded, exc)
        _memory.scrub_exception(exc)
        del exc
    if failure is not None:
        input_ids = attention = extra = None
        _memory.release_memory()
        post_event("error", str(failure), model=loaded.name, error=type(failure).__name__, phase="generate")
        raise failure
    seqs = out[:, input_ids.shape[1]:].tolist()
    del out
    return seqs


def _generation_failure(loaded: LoadedModel, exc: BaseException) -> WorkbenchError:
    if is_oom(exc):
        return GenerationOutOfMemoryError(
            f"{loaded.name} ran out of memory generating on {', '.join(loaded.devices)} "
            f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})",
            hint="the model is still loaded: try a shorter prompt, fewer new tokens or a smaller batch",
            name=loaded.name, devices=list(loaded.devices))
    return GenerationError(f"generation with {loaded.name} failed ({type(exc).__name__}: {exc})",
                           hint="the model is still loaded; check the prompt and settings", name=loaded.name)


def _row_outcome(tok: Any, row: list[int], eos: set[int], pad: int | None, params: GenerationParams,
                 event: threading.Event, streamed: Any, thinking: bool | None) -> tuple[str, str, int, StoppedBy]:
    """``(text, reasoning, new tokens, stopped_by)`` of one row.

    ``streamed`` is the streamer a streamed row went through (its gate and reasoning);
    ``thinking`` whether the row started inside ``<think>`` (``None``: no reasoning template).
    """
    ids, ended = _row_tokens(row, eos, pad)
    if streamed is not None:
        gate, reasoning = streamed.gate, "".join(streamed.reasoning)
    else:
        decoded = tok.decode(ids, skip_special_tokens=True)
        reasoning, answer = ThinkSplitter.split(decoded, thinking) if thinking is not None else ("", decoded)
        gate = StopStringGate.cut(answer, params.stop)
    stopped: StoppedBy
    if gate.hit is not None:
        stopped = "stop_string"
        stop = next((s for s in params.stop if s in tok.decode(ids, skip_special_tokens=True)), None)
        if stop is not None:
            ids = ids[: _tokens_to_stop(tok, ids, stop)]
    elif ended:
        stopped = "eos"
    elif event.is_set() and len(ids) < params.max_new_tokens:
        stopped = "cancelled"
    else:
        stopped = "max_new_tokens"
    return gate.final_text, reasoning.strip(), len(ids), stopped


def _resolve(loaded: LoadedModel | str) -> LoadedModel:
    if isinstance(loaded, str):
        from .registry import get_registry

        return get_registry().get(loaded)
    return loaded


def generate(loaded: LoadedModel | str, prompt_or_messages: Prompt,
             params: GenerationParams = GenerationParams()) -> GenerationResult:  # noqa: B008 (frozen, shared safely)
    """Generate an answer to a prompt or a chat (a list of ``{"role", "content"}`` dicts).

    A message's content may be a list of parts, as transformers' chat templates take them:
    ``[{"type": "image", "image": pil_or_bytes}, {"type": "text", "text": "What is this?"}]``
    (images for vision-language models; see :mod:`workbench.runtime.prompts` for every form).

    Raises:
        ModelNotLoadedError: the model was unloaded.
        GenerationOutOfMemoryError: out of memory; the model stays loaded and usable.
        GenerationError: anything else that went wrong; the model stays loaded.
    """
    return _run(_resolve(loaded), [prompt_or_messages], params, on_piece=None, stop_event=None)[0]


def generate_batch(loaded: LoadedModel | str, prompts: Sequence[Prompt],
                   params: GenerationParams = GenerationParams()) -> list[GenerationResult]:  # noqa: B008
    """Generate for several prompts together (left padding); results in input order.

    Each result's ``tokens_per_s`` is its row's rate (one token per step while it
    runs); ``total_s`` is the whole batch.

    Raises:
        GenerationError: ``prompts`` is a string or empty; a prompt is empty; anything else that
            went wrong (the model stays loaded).
        ModelNotLoadedError: the model was unloaded (or no loaded model has that name).
        GenerationOutOfMemoryError: out of memory; the model stays loaded and usable.
    """
    if isinstance(prompts, str) or not prompts:
        raise GenerationError("generate_batch needs a list of prompts", hint="use generate() for one prompt")
    return _run(_resolve(loaded), list(prompts), params, on_piece=None, stop_event=None)


def stream(loaded: LoadedModel | str, prompt_or_messages: Prompt,
           params: GenerationParams = GenerationParams(), *,  # noqa: B008
           on_piece: Callable[[str], None] | None = None, start: bool = True) -> Stream:
    """Start a streamed generation; iterate the returned :class:`~workbench.runtime.streaming.Stream`
    for text pieces (its result is this run's :class:`GenerationResult`).

    Args:
        on_piece: also called with each piece as the iterator yields it (the callback form).
        start: ``False`` returns the stream unstarted (iterating or ``start()`` starts it).

    Raises:
        ModelNotLoadedError: the model was unloaded. ``ConfigError``: a setting out of range.
        Iterating raises what :func:`generate` raises.

    Example:
        >>> s = stream(loaded, "Count to ten")  # doctest: +SKIP
        >>> for piece in s:  # doctest: +SKIP
        ...     if "5" in piece: s.stop()
        >>> s.result.stopped_by  # doctest: +SKIP
        'cancelled'
    """
    m = _resolve(loaded)
    m.require()
    params.validate()

    def produce(feed: StreamFeed) -> GenerationResult:
        return _run(m, [prompt_or_messages], params, on_piece=feed.content, stop_event=feed.cancel,
                    on_reasoning=feed.reasoning)[0]

    def wrap(exc: Exception) -> GenerationError:
        return GenerationError(f"generation with {m.name} failed ({type(exc).__name__}: {exc})",
                               hint="the model is still loaded", name=m.name)

    # The consumer's OpenMP pool would throttle the generation thread's (see
    # _memory.release_omp_threads): it is given back just before the stream starts.
    s = Stream(produce, name=f"generate-{m.name}", on_piece=on_piece, wrap_error=wrap,
               before_start=_memory.release_omp_threads)
    return s.start() if start else s
