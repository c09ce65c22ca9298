"""Prompt any OpenAI-compatible endpoint as a local model, with the official ``openai`` client.

Answers are always streamed, so time to first token and tokens/s are measured
from the stream here, as the runtime measures them for a local model; token counts
come from the server's usage report (``stream_options={"include_usage": True}``)
when it sends one, else from the number of streamed pieces. Errors become typed
:class:`~workbench.errors.ServeError` subclasses naming the endpoint.

Example:
    >>> c = EndpointClient("SmolLM2-135M-Instruct")  # doctest: +SKIP
    >>> c.chat("What is the capital of France?", GenerationParams(temperature=0)).text  # doctest: +SKIP
    'The capital of France is Paris.'
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..errors import (
    EndpointAuthError,
    EndpointModelNotFoundError,
    EndpointRateLimitError,
    EndpointResponseError,
    EndpointStreamError,
    EndpointUnreachableError,
    ServeError,
)
from ..runtime.metrics import RunResult, decode_rate
from ..runtime.streaming import Stream, StreamFeed
from .endpoint import Endpoint
from .engines import (
    ENGINE_EXTENSIONS,
    ENGINE_IGNORED_FIELDS,
    SHARED_SAMPLING_FLAG,
    engine_extensions,
    engine_neutral_fields,
)

#: OpenAI's API takes at most four stop sequences.
MAX_STOP = 4


#: An engine's finish reason -> the runtime's ``stopped_by`` (one vocabulary in every result).
STOPPED_BY = {"stop": "eos", "length": "max_new_tokens", "stop_string": "stop_string", "cancelled": "cancelled"}
#: The delta fields reasoning models stream their thinking in, before the answer: vLLM's and
#: llama.cpp's server's ``reasoning_content`` (transformers serve's too), newer vLLM's and
#: Ollama's ``reasoning``.
REASONING_FIELDS = ("reasoning_content", "reasoning")


@dataclass(frozen=True, kw_only=True)
class ChatResult(RunResult):
    """One streamed answer from an endpoint: every :class:`~workbench.runtime.metrics.RunResult`
    field (the keys of ``workbench run --json``), plus what the server said.

    ``prompt_tokens`` and ``new_tokens`` come from the server's usage report when it sent
    one (``new_tokens`` else counts the streamed pieces, reasoning included); ``ttft_s``
    runs to the first streamed piece of either kind; ``stopped_by`` is the finish reason
    in the runtime's words (:data:`STOPPED_BY`).

    Attributes:
        finish_reason: ``"stop"``, ``"length"``... as the server reports it (``"stop_string"``
            when the client cut at a stop string, ``"cancelled"`` when it stopped reading).
        endpoint: the endpoint's registry name.
        usage_reported: whether the counts came from the server.
    """

    finish_reason: str | None
    endpoint: str
    usage_reported: bool


def _translate(exc: BaseException, ep: Endpoint, model: str | None) -> ServeError | None:
    import openai

    if isinstance(exc.__cause__, ServeError):  # our own check before the request (verify_engine) refused it
        return exc.__cause__
    where = f"endpoint {ep.name!r} ({ep.base_url})"
    ctx = {"endpoint": ep.name, "base_url": ep.base_url}
    if isinstance(exc, openai.APITimeoutError):
        return EndpointUnreachableError(f"{where} did not answer in time",
                                        hint="check that the server is up and not overloaded, then retry", **ctx)
    if isinstance(exc, openai.APIConnectionError):
        hint = (f"start it again (`workbench serve {ep.store_model}`) or remove it "
                f"(`workbench endpoints stop {ep.name}`)" if not ep.is_remote
                else "check the URL, the network and that the server is running")
        return EndpointUnreachableError(f"{where} cannot be reached: {exc.__cause__ or exc}", hint=hint, **ctx)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        detail = _detail(exc)
        if status in (401, 403):
            key = (f"set {ep.api_key_env} to a valid key" if ep.api_key_env else
                   f"register it with a key: `workbench endpoints add {ep.name} URL --api-key-env VAR`")
            return EndpointAuthError(f"{where} refused the API key (HTTP {status}{detail})", hint=key,
                                     status_code=status, **ctx)
        if status == 404:
            return EndpointModelNotFoundError(
                f"{where} does not serve model {model!r} (HTTP 404{detail})",
                hint="pick one its /v1/models lists (EndpointClient(...).models())", status_code=status,
                model=model, **ctx)
        if status == 429:
            return EndpointRateLimitError(f"{where} is rate limiting or overloaded (HTTP 429{detail})",
                                          hint="wait and retry, or send fewer requests at once",
                                          status_code=status, **ctx)
        return EndpointResponseError(f"{where} answered HTTP {status}{detail}",
                                     hint="see the server's log; check the request's model and parameters",
                                     status_code=status, **ctx)
    return None


def _detail(exc: Any) -> str:
    body = getattr(exc, "body", None)
    msg = None
    if isinstance(body, dict):
        err = body.get("error")
        msg = body.get("detail") or body.get("message") or (err.get("message") if isinstance(err, dict) else err)
    elif isinstance(body, str):
        msg = body
    return f": {str(msg)[:200]}" if msg else ""


def _reasoning_piece(delta: Any) -> str | None:
    """The reasoning text of a streamed delta (the openai client keeps unknown fields as extras)."""
    extra = getattr(delta, "model_extra", None) or {}
    for name in REASONING_FIELDS:
        value = getattr(delta, name, None) or extra.get(name)
        if isinstance(value, str) and value:
            return value
    return None


@dataclass
class _Read:
    """What a stream delivered so far (filled in place, so a broken stream keeps what arrived)."""

    pieces: list[str]
    reasoning: list[str]
    times: list[float]  # arrival of every piece of either kind (perf_counter seconds)
    usage: Any = None
    finish: str | None = None


def _take_choice(choice: Any, got: _Read, gate: Any, emit: Callable[[str], None],
                 on_reasoning: Callable[[str], None] | None, clock: Callable[[], float]) -> bool:
    """One streamed choice into ``got``; ``True`` when its answer text reached a stop string."""
    delta = choice.delta
    thought = _reasoning_piece(delta) if delta is not None else None
    if thought:
        got.reasoning.append(thought)
        got.times.append(clock())
        if on_reasoning is not None:
            on_reasoning(thought)
    piece = delta.content if delta is not None else None
    if piece:
        emit(gate.feed(piece))
        if gate.hit is not None:
            return True
    if choice.finish_reason:
        got.finish = choice.finish_reason
    return False


def _read_stream(stream: Any, got: _Read, on_piece: Callable[[str], None] | None,
                 on_reasoning: Callable[[str], None] | None, cancel: threading.Event | None,
                 stops: tuple[str, ...], clock: Callable[[], float]) -> None:
    """Read a chat completion stream into ``got``: answer pieces, reasoning pieces, their times.

    Stop strings are applied here too (the runtime's
    :class:`~workbench.runtime.streaming.StopStringGate`): an engine that does not apply
    them per request (``transformers serve`` with continuous batching) still stops, and
    no engine's text shows one. ``got.finish`` ends ``"stop_string"`` when the client cut
    there, ``"cancelled"`` when ``cancel`` was set, ``None`` when the stream just ended.
    """
    from ..runtime.streaming import StopStringGate

    gate = StopStringGate(stops)

    def emit(piece: str) -> None:
        if piece:
            got.pieces.append(piece)
            got.times.append(clock())
            if on_piece is not None:
                on_piece(piece)

    with stream:
        for chunk in stream:
            if chunk.usage is not None:
                got.usage = chunk.usage
            for choice in chunk.choices or ():
                if _take_choice(choice, got, gate, emit, on_reasoning, clock):
                    got.finish = "stop_string"
                    return
            if cancel is not None and cancel.is_set():
                emit(gate.finish())
                got.finish = "cancelled"
                return
    emit(gate.finish())


@dataclass(frozen=True)
class RequestPlan:
    """What a request sends beyond the OpenAI fields, and what it had to leave out.

    Attributes:
        extra_body: the engine's own fields (``{"top_k": 50}``), sent through the openai
            client's ``extra_body``.
        not_sent: the controls the user set that the engine does not take (``("top_k",)``).
        notices: one sentence per control not sent or not applied, naming it and the endpoint.
    """

    extra_body: dict[str, Any]
    not_sent: tuple[str, ...]
    notices: tuple[str, ...]


def _active_extensions(params: Any) -> dict[str, Any]:
    """The non-OpenAI controls whose value changes the answer (top_k only when sampling; 0 disables it)."""
    active: dict[str, Any] = {}
    if params.temperature > 0 and params.top_k:
        active["top_k"] = params.top_k
    if params.repetition_penalty != 1.0:
        active["repetition_penalty"] = params.repetition_penalty
    if params.enable_thinking is not None:
        active["enable_thinking"] = params.enable_thinking
    return active


def request_plan(endpoint: Endpoint, params: Any) -> RequestPlan:
    """Which of ``params``' non-OpenAI controls go to ``endpoint``, by its engine kind
    (:data:`workbench.serve.engines.ENGINE_EXTENSIONS`); the others are named in ``notices``.

    An endpoint of unknown kind (added by URL without ``--engine``) gets the OpenAI fields only: sending it a
    field it does not know may be refused (``transformers serve`` answers 422) or silently
    ignored, and either way the user would not know.
    """
    kind = endpoint.request_engine
    taken = engine_extensions(kind)
    extra: dict[str, Any] = engine_neutral_fields(kind)
    not_sent: list[str] = []
    notices: list[str] = []
    for control, value in _active_extensions(params).items():
        if control in taken:
            *outer, leaf = taken[control].split(".")
            into = extra
            for key in outer:
                into = into.setdefault(key, {})
            into[leaf] = value
            continue
        not_sent.append(control)
        why = ("its engine is of unknown kind (added by URL without --engine), so only OpenAI fields are sent"
               if kind not in ENGINE_EXTENSIONS else f"{kind} serve does not take it")
        notices.append(f"{control}={value} was not sent to endpoint {endpoint.name!r}: {why}")
    flag = SHARED_SAMPLING_FLAG.get(kind)
    if flag and flag in endpoint.argv:
        # Said for greedy requests too: after a sampled first request they are sampled (engines.py).
        mode = f"temperature={params.temperature:g}, top_p={params.top_p:g}" if params.temperature > 0 else "greedy"
        notices.append(f"endpoint {endpoint.name!r} runs {kind} serve {flag}, which samples every request "
                       f"with the temperature and top_p of the first request it served, not this one's ({mode}); "
                       "the client cannot tell which those were (transformers' CBGenerateManager.init_cb; "
                       "start the engine without continuous batching for per-request sampling)")
    return RequestPlan(extra, tuple(not_sent), tuple(notices))


class EndpointClient:
    """A chat client for one endpoint (by registry name, or an :class:`Endpoint`).

    Args:
        endpoint: a registry name or an :class:`Endpoint`.
        timeout_s: per request, connect and read.
        max_retries: the openai client's retries on connection errors and 429/5xx (0: fail at once).
        clock: what times the stream (``time.perf_counter``; tests pass their own).
    """

    def __init__(self, endpoint: str | Endpoint, *, timeout_s: float = 120.0, max_retries: int = 0,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        import openai

        self._clock = clock
        if isinstance(endpoint, str):
            from .registry import EndpointRegistry

            endpoint = EndpointRegistry().get(endpoint)
        self.endpoint = endpoint
        # An engine the workbench started: its own key, and before every request the proof that
        # the socket answering is still the engine's (serve/listener.py): a prompt goes only there.
        http_client = None
        if not endpoint.is_remote and endpoint.pid:
            from .process import verify_engine

            http_client = openai.DefaultHttpxClient(event_hooks={"request": [lambda _req: verify_engine(endpoint)]})
        self._client = openai.OpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key(), timeout=timeout_s,
                                     max_retries=max_retries, http_client=http_client)
        self._model = endpoint.model

    def _raise(self, exc: BaseException) -> None:
        typed = _translate(exc, self.endpoint, self._model)
        if typed is not None:
            raise typed from None
        raise exc

    def models(self) -> list[str]:
        """The model names the server lists on ``/v1/models``.

        Raises:
            ServeError: typed as for :meth:`chat`.
        """
        import openai

        try:
            return [m.id for m in self._client.models.list().data]
        except openai.OpenAIError as exc:
            self._raise(exc)
            raise

    @property
    def model(self) -> str:
        """The model requests name: the endpoint's, else the first the server lists.

        Raises:
            EndpointModelNotFoundError: the endpoint names no model and its server lists none.
            ServeError: the model list cannot be fetched (typed as for :meth:`chat`).
        """
        if self._model is None:
            names = self.models()
            if not names:
                raise EndpointModelNotFoundError(f"endpoint {self.endpoint.name!r} lists no model",
                                                 hint="register it with a model name", endpoint=self.endpoint.name)
            self._model = names[0]
        return self._model

    def _request(self, prompt_or_messages: Any, params: Any) -> tuple[dict[str, Any], RequestPlan]:
        from ..runtime.generation import GenerationParams

        params = (params or GenerationParams()).validate()
        if isinstance(prompt_or_messages, str):
            messages = [{"role": "user", "content": prompt_or_messages}]
        else:
            from ..runtime.prompts import openai_messages

            messages = openai_messages(prompt_or_messages)
        if params.system_prompt and not any(m.get("role") == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": params.system_prompt})
        if len(params.stop) > MAX_STOP:
            from ..errors import ConfigError

            raise ConfigError(f"OpenAI-compatible servers take at most {MAX_STOP} stop strings, not "
                              f"{len(params.stop)}", hint="keep the four that matter")
        plan = request_plan(self.endpoint, params)
        req: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": params.max_new_tokens,
                               "temperature": params.temperature, "stream": True,
                               "stream_options": {"include_usage": True}}
        if params.temperature > 0:
            req["top_p"] = params.top_p
        if params.stop:
            req["stop"] = list(params.stop)
        if params.seed is not None:
            req["seed"] = params.seed
        for field_name in ENGINE_IGNORED_FIELDS.get(self.endpoint.request_engine, ()):
            req.pop(field_name, None)
        if plan.extra_body:
            req["extra_body"] = dict(plan.extra_body)
        return req, plan

    def chat(self, prompt_or_messages: str | Sequence[dict[str, str]], params: Any = None, *,
             on_piece: Callable[[str], None] | None = None, on_reasoning: Callable[[str], None] | None = None,
             cancel: threading.Event | None = None) -> ChatResult:
        """Stream one answer, calling ``on_piece`` with each answer piece as it arrives.

        Args:
            prompt_or_messages: a user prompt, or OpenAI chat messages.
            params: :class:`workbench.runtime.GenerationParams` (max_new_tokens, temperature,
                top_p, stop, seed, system_prompt; top_k, repetition_penalty, enable_thinking as the
                engine's extensions, see :func:`request_plan`).
            on_reasoning: called with each piece of a reasoning model's thinking.
            cancel: set it to stop reading; the answer so far is returned, stopped_by ``"cancelled"``.

        Raises:
            EndpointUnreachableError, EndpointAuthError, EndpointModelNotFoundError,
            EndpointRateLimitError, EndpointResponseError: the request failed.
            EndpointStreamError: the stream stopped before the server said it finished
                (``partial_text`` holds what arrived).
        """
        import httpx
        import openai

        req, plan = self._request(prompt_or_messages, params)
        stops = tuple(req.get("stop") or ())
        got = _Read([], [], [])
        clock = self._clock
        t0 = clock()
        try:
            stream = self._client.chat.completions.create(**req)
        except openai.OpenAIError as exc:
            self._raise(exc)
            raise
        try:
            _read_stream(stream, got, on_piece, on_reasoning, cancel, stops, clock)
        except (openai.OpenAIError, httpx.HTTPError) as exc:
            cut = _translate(exc, self.endpoint, self._model) if isinstance(exc, openai.APIStatusError) else None
            if cut is not None:
                raise cut from None
            raise EndpointStreamError(
                f"the answer from endpoint {self.endpoint.name!r} ({self.endpoint.base_url}) stopped mid-way "
                f"after {len(got.pieces)} pieces: {exc}", hint="retry; if it repeats, see the server's log",
                endpoint=self.endpoint.name, partial_text="".join(got.pieces)) from None
        t_end = clock()
        if got.finish is None:
            raise EndpointStreamError(
                f"the answer from endpoint {self.endpoint.name!r} ({self.endpoint.base_url}) ended after "
                f"{len(got.pieces)} pieces without a finish reason (the connection was cut)",
                hint="retry; if it repeats, see the server's log", endpoint=self.endpoint.name,
                partial_text="".join(got.pieces))
        usage = got.usage
        streamed = len(got.times)
        new = int(usage.completion_tokens) if usage is not None and usage.completion_tokens is not None else streamed
        prompt_tokens = int(usage.prompt_tokens) if usage is not None and usage.prompt_tokens is not None else None
        ttft = (got.times[0] - t0) if got.times else t_end - t0
        return ChatResult("".join(got.pieces), prompt_tokens, new, ttft, decode_rate(new, got.times, t0, t_end),
                          t_end - t0, STOPPED_BY.get(got.finish, got.finish), self.model,
                          reasoning="".join(got.reasoning), notices=plan.notices, not_sent=plan.not_sent,
                          finish_reason=got.finish, endpoint=self.endpoint.name, usage_reported=usage is not None)

    def stream(self, prompt_or_messages: str | Sequence[dict[str, str]], params: Any = None, *,
               on_piece: Callable[[str], None] | None = None) -> Stream:
        """Start one streamed answer: the runtime's :class:`~workbench.runtime.streaming.Stream`
        (iterate for answer pieces, ``pieces()`` for reasoning too; its result is a :class:`ChatResult`).

        Example:
            >>> s = client.stream("What is the capital of France?")  # doctest: +SKIP
            >>> "".join(s), s.result.tokens_per_s  # doctest: +SKIP
        """
        def produce(feed: StreamFeed) -> ChatResult:
            return self.chat(prompt_or_messages, params, on_piece=feed.content, on_reasoning=feed.reasoning,
                             cancel=feed.cancel)

        return Stream(produce, name=f"endpoint-{self.endpoint.name}", on_piece=on_piece).start()

    def batch(self, prompts: Sequence[Any], params: Any = None, *, max_concurrency: int = 8,
              return_errors: bool = False) -> list[Any]:
        """Answer several prompts as concurrent requests (the engine batches them).

        Returns:
            One :class:`ChatResult` per prompt, in order; with ``return_errors`` a failed
            request's place holds its :class:`ServeError` instead of raising.

        Raises:
            ServeError: the first failure, after every request has finished (unless ``return_errors``).
        """
        self.model  # noqa: B018 (resolve the model name once, before the threads)

        def one(p: Any) -> Any:
            try:
                return self.chat(p, params)
            except ServeError as exc:
                if return_errors:
                    return exc
                raise

        with ThreadPoolExecutor(max_workers=max(1, min(max_concurrency, len(prompts)))) as pool:
            futures = [pool.submit(one, p) for p in prompts]
            errors = [f.exception() for f in futures]
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first
        return [f.result() for f in futures]


def run_endpoint(name: str, prompt: str, *, max_new_tokens: int = 64, temperature: float = 0.0,
                 seed: int | None = None) -> ChatResult:
    """``workbench run --endpoint NAME``: one streamed answer from a registered endpoint.

    Raises:
        EndpointNotFoundError: no such endpoint; and the errors of :meth:`EndpointClient.chat`.
    """
    from ..runtime.generation import GenerationParams

    params = GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    return EndpointClient(name).chat(prompt, params)
