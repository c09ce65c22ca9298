"""GGUF entries in the kernel through llama.cpp (llama-cpp-python's ``Llama``).

A GGUF entry loaded as stored (:func:`workbench.store.gguf_estimate.runs_on_llamacpp`)
runs on llama.cpp at its own quantization: every layer on the chosen GPUs
(``n_gpu_layers=-1``, ``main_gpu`` and ``tensor_split`` from the devices picked) or on the
CPU with one thread per CPU this process may use (:func:`workbench.devices.cgroup.usable_cpus`),
with the context (``n_ctx``) the fit check was made for. What the registry and the
generation code see is the same :class:`~workbench.runtime.registry.LoadedModel`:
``model`` is a :class:`LlamaCppModel`, ``tokenizer`` a :class:`GGUFTokenizer` whose chat
template is the GGUF's ``tokenizer.chat_template``, rendered by the bounded renderer
(:mod:`workbench.chat_template`), never by llama-cpp-python's own Jinja.

Generation (:func:`generate_rows`) drives ``Llama.generate`` token by token so that the
same metrics (TTFT, decode tokens/s from step times: :mod:`.metrics`), stop strings
(:class:`~workbench.runtime.streaming.StopStringGate`) and Stop (an event checked each
step) apply as for transformers; a batch runs its prompts one after another (llama.cpp's
KV cache keeps the common prompt prefix). Sampling maps to llama.cpp's parameters:
``temperature`` -> ``temp`` (0 is greedy), ``top_p``, ``top_k``, ``repetition_penalty``
-> ``repeat_penalty``, ``seed`` -> ``Llama.set_seed``; the rest (``min_p``) at
:data:`NEUTRAL_SAMPLING`, so that only the workbench's settings shape the distribution.

Why our own module: llama-cpp-python is the engine; this is only the adaptor that makes
it one more engine behind the workbench's load, stream, metrics and unload contracts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import GenerationError, LoadCancelledError, LoadError
from ..precision import is_gpu
from ..store import ModelEntry

logger = logging.getLogger(__name__)

#: llama.cpp's sampling fields at the values that leave the distribution alone (0 disables top-k and
#: min-p, a repeat penalty of 1 penalises nothing). The one table: the kernel's ``Llama.generate`` keywords
#: start from it (:func:`sampling_kwargs`, the workbench's own controls on top), and
#: ``serve/engines.py`` sends it to llama.cpp's servers, whose defaults are not neutral.
NEUTRAL_SAMPLING: dict[str, float | int] = {"repeat_penalty": 1.0, "min_p": 0.0, "top_k": 0}


def gpu_layout(devices: Sequence[str], free_bytes: dict[str, int | None] | None = None) -> dict[str, Any]:
    """llama.cpp's placement keywords for the devices picked.

    CPU only: ``{"n_gpu_layers": 0}``. GPUs: every layer offloaded (``n_gpu_layers=-1``),
    ``main_gpu`` the first picked, and ``tensor_split`` giving each picked GPU a share of the
    layers proportional to its free memory (equal when unknown) and the others none. The
    index is the CUDA device index, as llama.cpp numbers devices (after ``CUDA_VISIBLE_DEVICES``).
    """
    gpus = [d for d in devices if is_gpu(d)]
    if not gpus:
        return {"n_gpu_layers": 0}
    index = [int(d.split(":", 1)[1]) for d in gpus]
    free = [(free_bytes or {}).get(d) for d in gpus]
    weights = [float(f) for f in free] if all(f for f in free) else [1.0] * len(gpus)
    split = [0.0] * (max(index) + 1)
    for i, w in zip(index, weights):
        split[i] = w / sum(weights)
    out: dict[str, Any] = {"n_gpu_layers": -1, "main_gpu": index[0]}
    if len(gpus) > 1 or index[0] != 0:
        out["tensor_split"] = split
    return out


class GGUFTokenizer:
    """What the prompt renderer and the stop-string code need from a tokenizer, over llama.cpp's.

    ``chat_template`` is the GGUF's ``tokenizer.chat_template`` (``None`` without one);
    ``special_tokens_map`` holds its BOS/EOS texts, as transformers passes them to a template.
    """

    def __init__(self, llama: Any, metadata: dict[str, str], name_or_path: str) -> None:
        self._llama = llama
        self.chat_template = metadata.get("tokenizer.chat_template") or None
        self.name_or_path = name_or_path
        self.special_tokens_map: dict[str, str] = {}
        for key, tid in (("bos_token", "tokenizer.ggml.bos_token_id"), ("eos_token", "tokenizer.ggml.eos_token_id")):
            if str(metadata.get(tid, "")).lstrip("-").isdigit():
                text = self.decode([int(metadata[tid])], skip_special_tokens=False)
                if text:
                    self.special_tokens_map[key] = text

    def get_chat_template(self, chat_template: str | None = None, tools: Any = None) -> str:
        template = chat_template or self.chat_template
        if not template:
            raise ValueError(f"{self.name_or_path} has no chat template (tokenizer.chat_template)")
        return template

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._llama.tokenize(text.encode("utf-8"), add_bos=add_special_tokens, special=True))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._llama.detokenize(list(ids), special=not skip_special_tokens).decode("utf-8", errors="ignore")


class LlamaCppModel:
    """A llama.cpp model in this process: what ``LoadedModel.model`` holds for a GGUF entry.

    Attributes:
        llama: the ``llama_cpp.Llama``.
        path: the GGUF file.
        n_ctx: the context allocated, in tokens.
        n_threads: CPU threads llama.cpp computes with.
        placement_kwargs: ``n_gpu_layers``, ``main_gpu``, ``tensor_split`` as passed.
    """

    engine = "llamacpp"

    def __init__(self, llama: Any, path: str, n_ctx: int, n_threads: int, placement_kwargs: dict[str, Any]) -> None:
        self.llama = llama
        self.path = path
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.placement_kwargs = placement_kwargs

    def close(self) -> None:
        """Free llama.cpp's model, context and KV cache now (not when the garbage collector runs)."""
        llama, self.llama = self.llama, None
        if llama is not None:
            close = getattr(llama, "close", None)
            if callable(close):
                close()

    def __repr__(self) -> str:
        return f"<LlamaCppModel {self.path} n_ctx={self.n_ctx}>"


def load(entry: ModelEntry, spec: Any, *, n_ctx: int, free_bytes: dict[str, int | None] | None = None,
         progress: Callable[[Any], None] | None = None, cancel: threading.Event | None = None,
         phase_times: dict[str, float] | None = None) -> Any:  # -> loader.LoadOutcome
    """Load a GGUF entry with ``llama_cpp.Llama``; on failure nothing stays loaded.

    Args:
        entry: a GGUF entry the safety gate accepted.
        spec: the validated :class:`~workbench.runtime.spec.LoadSpec` (its devices).
        n_ctx: the context to allocate (the one the fit check was made for).
        free_bytes: free memory of the picked GPUs, to split the layers by.
        progress: called with :class:`~workbench.runtime.spec.LoadProgress`.
        cancel: checked before and after llama.cpp's load (which cannot stop half-way).

    Raises:
        LoadCancelledError: ``cancel`` was set; the model is freed.
        LoadError: llama-cpp-python is missing, or llama.cpp refused the file (named).
    """
    from ..devices.cgroup import usable_cpus
    from .loader import LoadOutcome
    from .spec import LoadProgress

    times = dict(phase_times or {})
    path = str(entry.folder / (entry.gguf_file or ""))

    def say(phase: str, frac: float, msg: str) -> None:
        if progress is not None:
            progress(LoadProgress(phase, frac, msg))  # type: ignore[arg-type]

    def cancelled(where: str) -> None:
        if cancel is not None and cancel.is_set():
            raise LoadCancelledError(f"load of {entry.name} cancelled {where}", hint="nothing was kept")

    try:
        import llama_cpp
    except ImportError as exc:
        raise LoadError(f"{entry.name} is GGUF and runs on llama.cpp, but llama-cpp-python is not installed ({exc})",
                        hint="run `make setup` (it builds llama-cpp-python), or load with engine='transformers'",
                        name=entry.name) from None
    cancelled("before it started")
    threads = usable_cpus()
    placement_kwargs = gpu_layout(spec.devices, free_bytes)
    t = time.perf_counter()
    say("weights", 0.1, f"llama.cpp: mapping {entry.gguf_file} ({n_ctx:,} tokens of context, {threads} threads)")
    try:
        llama = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                                verbose=False, **placement_kwargs)
    except (ValueError, RuntimeError, OSError) as exc:
        raise LoadError(f"llama.cpp could not load {path}: {exc}",
                        hint="check that the file is a complete GGUF of an architecture this llama.cpp knows "
                             "(llama-cpp-python " + getattr(llama_cpp, "__version__", "?") + "), and that the "
                             "context fits in memory", name=entry.name, path=path) from None
    model = LlamaCppModel(llama, path, n_ctx, threads, placement_kwargs)
    try:
        times["weights"] = time.perf_counter() - t
        cancelled("after the weights were read")
        t = time.perf_counter()
        tokenizer = GGUFTokenizer(llama, dict(getattr(llama, "metadata", {}) or {}), path)
        footprint = _model_size(llama_cpp, llama, entry)
        gpus = [d for d in spec.devices if is_gpu(d)]
        split = placement_kwargs.get("tensor_split")
        if gpus and split:
            placement = {d: int(footprint * split[int(d.split(":")[1])]) for d in gpus}
        else:
            placement = {(gpus[0] if gpus else "cpu"): footprint}
        times["finalize"] = time.perf_counter() - t
        module_devices = {"": gpus[0] if gpus else "cpu"}
        return LoadOutcome(model, tokenizer, load_times_s=times, placement=placement,  # type: ignore[arg-type]
                           module_devices=module_devices, footprint_bytes=footprint)
    except BaseException:  # noqa: B036 -- roll back, Ctrl-C included
        model.close()
        raise


def _model_size(llama_cpp: Any, llama: Any, entry: ModelEntry) -> int:
    """Bytes of the tensors as llama.cpp holds them (``llama_model_size``), else the store's count."""
    try:
        return int(llama_cpp.llama_model_size(llama.model))
    except (AttributeError, TypeError, ValueError, OSError):
        from ..store.gguf_estimate import entry_shape

        return entry_shape(entry)[1]


def sampling_kwargs(params: Any) -> dict[str, Any]:
    """The workbench's :class:`~workbench.runtime.generation.GenerationParams` as ``Llama.generate`` keywords."""
    return {**NEUTRAL_SAMPLING, "temp": float(params.temperature), "top_p": float(params.top_p),
            "top_k": int(params.top_k), "repeat_penalty": float(params.repetition_penalty)}


def _is_eog(llama: Any, token: int) -> bool:
    import llama_cpp

    try:
        vocab = llama_cpp.llama_model_get_vocab(llama.model)
        return bool(llama_cpp.llama_vocab_is_eog(vocab, token))
    except (AttributeError, TypeError):
        return token == llama.token_eos()


def generate_rows(loaded: Any, texts: list[str], add_special: bool, params: Any, *,
                  on_piece: Callable[[str], None] | None, stop_event: threading.Event,
                  t0: float, on_reasoning: Callable[[str], None] | None = None,
                  ) -> tuple[list[tuple[str, str, int, int, float, float, str]], float]:
    """Generate for each rendered prompt in turn; ``(rows, t_end)``.

    Each row is ``(text, reasoning, prompt_tokens, new_tokens, ttft_s, tokens_per_s, stopped_by)``, as
    the transformers path makes them (:func:`workbench.runtime.generation._run`). ``on_piece`` gets the
    answer of a single prompt as it is decoded, held back where a stop string may begin. A reasoning
    chat template (one that knows ``<think>``: :func:`~workbench.runtime.streaming.opens_thinking`) has
    its thinking split off by the same :class:`~workbench.runtime.streaming.ThinkSplitter` as on
    transformers: to ``reasoning`` and ``on_reasoning``, never into the answer or its stop strings.

    Raises:
        GenerationError: a prompt longer than the context, or llama.cpp failed (the model stays loaded).
    """
    if params.seed is not None:
        loaded.model.llama.set_seed(int(params.seed))
    rows = []
    t_end = t0
    for text in texts:
        start = time.perf_counter() if rows else t0
        single = len(texts) == 1
        row, t_end = _one_row(loaded, text, add_special, params, on_piece if single else None,
                              stop_event, start, on_reasoning if single else None)
        rows.append(row)
    return rows, t_end


class _Router:
    """Decoded text to its place: thinking (with a splitter) to ``reasoning`` and ``on_reasoning``,
    the answer through the stop-string gate to ``on_piece``."""

    def __init__(self, gate: Any, splitter: Any, on_piece: Callable[[str], None] | None,
                 on_reasoning: Callable[[str], None] | None) -> None:
        self.gate, self.splitter, self.on_piece, self.on_reasoning = gate, splitter, on_piece, on_reasoning
        self.reasoning: list[str] = []

    def feed(self, piece: str, end: bool = False) -> None:
        from .streaming import route_text

        route_text(piece, end, splitter=self.splitter, gate=self.gate, reasoning=self.reasoning,
                   on_reasoning=self.on_reasoning, emit=self._emit)

    def _emit(self, released: str) -> None:
        if self.on_piece is not None and released:
            self.on_piece(released)


def _one_row(loaded: Any, text: str, add_special: bool, params: Any, on_piece: Callable[[str], None] | None,
             stop_event: threading.Event, start: float, on_reasoning: Callable[[str], None] | None = None,
             ) -> tuple[tuple[str, str, int, int, float, float, str], float]:
    from .metrics import decode_rate
    from .streaming import StopStringGate, ThinkSplitter, opens_thinking

    model: LlamaCppModel = loaded.model
    llama, tok = model.llama, loaded.tokenizer
    ids = tok.encode(text, add_special_tokens=add_special)
    room = model.n_ctx - len(ids)
    if room < 1:
        raise GenerationError(f"the prompt has {len(ids):,} tokens and {loaded.name}'s context is {model.n_ctx:,}",
                              hint="shorten the prompt, or load with a larger n_ctx", name=loaded.name)
    limit = min(params.max_new_tokens, room)
    gate = StopStringGate(params.stop)
    # A reasoning template: thinking goes apart, only the answer meets the stop strings (as on transformers).
    thinking = opens_thinking(getattr(tok, "chat_template", None), text)
    route = _Router(gate, ThinkSplitter(thinking) if thinking is not None else None, on_piece, on_reasoning)

    out: list[int] = []
    times: list[float] = []
    shown = ""
    ended = False
    try:
        for token in llama.generate(ids, reset=True, **sampling_kwargs(params)):
            times.append(time.perf_counter())
            out.append(int(token))
            if _is_eog(llama, int(token)):
                ended = True
                break
            decoded = tok.decode(out)
            route.feed(decoded[len(shown):])
            shown = decoded
            if gate.hit is not None or len(out) >= limit or stop_event.is_set():
                break
    except Exception as exc:  # llama.cpp's failures are RuntimeError/ValueError; keep the model loaded
        raise GenerationError(f"generation with {loaded.name} failed in llama.cpp ({type(exc).__name__}: {exc})",
                              hint="the model is still loaded; check the prompt and settings",
                              name=loaded.name) from None
    route.feed("", end=True)
    rest = gate.finish()
    if on_piece is not None and rest:
        on_piece(rest)
    t_end = time.perf_counter()
    n = len(out)
    if gate.hit is not None:
        stopped = "stop_string"
    elif ended:
        stopped = "eos"
    elif stop_event.is_set() and n < params.max_new_tokens:
        stopped = "cancelled"
    else:
        stopped = "max_new_tokens"
    ttft = (times[0] - start) if times else (t_end - start)
    return (gate.final_text, "".join(route.reasoning).strip(), len(ids), n, ttft, decode_rate(n, times, start, t_end), stopped), t_end


def check_answer(path: Any, prompt: str, max_new_tokens: int = 20) -> str:
    """Greedy answer of the GGUF at ``path`` to ``prompt`` through its own chat template (the import check)."""
    import llama_cpp

    from ..chat_template import render_chat_template
    from ..devices.cgroup import usable_cpus

    llama = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=usable_cpus(), verbose=False)
    try:
        tok = GGUFTokenizer(llama, dict(getattr(llama, "metadata", {}) or {}), str(path))
        if tok.chat_template:
            text = render_chat_template(tok, [{"role": "user", "content": prompt}], source=f"{path} (chat template)")
            ids = tok.encode(text, add_special_tokens=False)
        else:
            ids = tok.encode(prompt)
        out = []
        for token in llama.generate(ids, reset=True, **{**NEUTRAL_SAMPLING, "temp": 0.0, "top_k": 1, "top_p": 1.0}):
            if _is_eog(llama, int(token)) or len(out) >= max_new_tokens:
                break
            out.append(int(token))
        return tok.decode(out)
    finally:
        llama.close()
