"""The Prompt panel: chat with a loaded model, streamed; batches of prompts; per-run metrics.

Streaming never waits on the front end: the worker thread appends each piece to
a buffer and repaints the transcript at most :data:`FLUSH_PER_S` times a second,
so a fast model is not slowed by widget messages.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from traitlets import Bool, Float, Int, TraitError, Tuple, Unicode, link

from ..errors import ConfigError, GenerationError, ModelNotLoadedError, WorkbenchError
from ..store import format_bytes
from .base import Panel, Throttle, error_message
from .display import esc, html_table, pre_html

if TYPE_CHECKING:
    from ..runtime import Registry
    from ..runtime.metrics import RunResult

FLUSH_PER_S = 10
#: Choices naming an OpenAI-compatible endpoint (workbench.serve) instead of a loaded model.
ENDPOINT_PREFIX = "endpoint:"
DEFAULTS = dict(max_new_tokens=128, temperature=0.7, top_p=0.95, top_k=50, repetition_penalty=1.0)
#: Every sampling setting :meth:`PromptPanel.set_params` takes, by GenerationParams' names; each is a
#: trait of the panel of the same name, but ``stop`` (the strings), which is ``stop_at`` (``stop()`` stops).
SAMPLING = (*DEFAULTS, "seed", "stop", "enable_thinking")


def _trait(setting: str) -> str:
    return "stop_at" if setting == "stop" else setting


def _pct(x: float | None) -> str | None:
    return None if x is None else f"{100 * x:.0f}%"


def metrics_rows(results: Sequence[RunResult]) -> list[list[Any]]:
    """Rows for the metrics table, one per run (local or endpoint: the one result record)."""
    rows = []
    for i, r in enumerate(results, 1):
        bw = r.bandwidth_bytes_per_s
        rows.append([
            # One unit per kind: both times in seconds (28643 ms beside 44.81 s read as different scales).
            i, r.prompt_tokens, r.new_tokens, f"{r.ttft_s:.3f} s", f"{r.tokens_per_s:.1f}",
            f"{r.total_s:.3f} s", _pct(r.decode_efficiency), f"{format_bytes(bw)}/s" if bw else None, r.stopped_by,
        ])
    return rows


METRIC_HEADERS = ["Run", "Prompt tokens", "New tokens", "TTFT", "Tokens/s", "Total", "Decode efficiency",
                  "Device bandwidth", "Stopped by"]


def metrics_table_html(results: Sequence[Any]) -> str:
    """Per-run metrics: time to first token, decode speed, and decode efficiency against bandwidth.

    Decode efficiency is the share of the device's memory bandwidth the decode
    loop used (each new token reads every weight once), so 100% is the ceiling.
    """
    if not results:
        return ""
    return html_table(METRIC_HEADERS, metrics_rows(results), caption="Metrics")


def reasoning_html(reasoning: str, *, open_: bool = False) -> str:
    """A reasoning model's thinking, folded (a ``<details>`` above the answer), escaped."""
    if not reasoning:
        return ""
    return (f"<details class='workbench-reasoning'{' open' if open_ else ''} style='color:#666;font-size:12px'>"
            f"<summary>Reasoning</summary><div style='white-space:pre-wrap'>{esc(reasoning)}</div></details>")


def transcript_html(system_prompt: str | None, history: Sequence[dict[str, str]], pending: str | None = None,
                    reasoning: dict[int, str] | None = None, pending_reasoning: str = "", *,
                    has_model: bool = True) -> str:
    """The chat as HTML: every message escaped, the answer being streamed last.

    ``reasoning`` maps a history index to the thinking shown folded above that answer;
    ``pending_reasoning`` is the thinking of the answer being streamed (shown open while
    no answer text has arrived yet).
    """
    parts = []
    reasoning = reasoning or {}
    if system_prompt:
        parts.append(f"<div style='color:#666;font-size:12px'><b>system:</b> {esc(system_prompt)}</div>")
    for i, m in enumerate(history):
        parts.append(reasoning_html(reasoning.get(i, "")) + _bubble(m["role"], _content_text(m["content"])))
    if pending is not None:
        parts.append(reasoning_html(pending_reasoning, open_=not pending) + _bubble("assistant", pending + "\u258c"))
    if not parts and not has_model:
        parts.append("<div style='color:#888'><em>No model to talk to yet: load one in the Load tab (or start an "
                     "engine in the Serve tab), then type a prompt below and press Send.</em></div>")
    elif not parts:
        parts.append("<div style='color:#888'><em>No messages yet: type a prompt below and press Send.</em></div>")
    return "<div class='workbench-transcript'>" + "".join(parts) + "</div>"


def _content_text(content: Any) -> str:
    """A message's text, with ``[image]`` where an image part is (content parts, runtime/prompts.py)."""
    if isinstance(content, str):
        return content
    return "".join("[image] " if isinstance(p, dict) and p.get("type") in ("image", "image_url")
                   else str(p.get("text", "")) if isinstance(p, dict) else "" for p in content)


def _bubble(role: str, content: str) -> str:
    bg = "#eef5ff" if role == "user" else "#f6f8fa"
    return (f"<div style='background:{bg};border-radius:6px;padding:4px 8px;margin:4px 0'>"
            f"<div style='font-size:11px;color:#666'>{esc(role)}</div>"
            f"<div class='workbench-message workbench-{esc(role)}' style='white-space:pre-wrap'>{esc(content)}</div>"
            f"</div>")


@dataclass(frozen=True)
class BatchRow:
    """One prompt of a batch and where it stands.

    ``state``: ``"waiting"`` (not started), ``"running"``, ``"done"`` (``result`` holds the
    ``GenerationResult``; a row Stop cut short has ``result.stopped_by == "cancelled"``),
    ``"stopped"`` (Stop came before it started: never run) or ``"failed"`` (``error`` says why).
    """

    prompt: str
    state: str = "waiting"
    result: Any = None
    error: str | None = None


def batch_count_text(rows: Sequence[BatchRow]) -> str:
    """``"3 of 8 done"``, with how many Stop left unrun or that failed.

    Example:
        >>> batch_count_text([BatchRow("a", "done"), BatchRow("b", "running"), BatchRow("c")])
        '1 of 3 done'
        >>> batch_count_text([BatchRow("a", "done"), BatchRow("b", "stopped")])
        '1 of 2 done, 1 stopped'
    """
    done = sum(r.state == "done" for r in rows)
    text = f"{done} of {len(rows)} done"
    for state in ("stopped", "failed"):
        n = sum(r.state == state for r in rows)
        if n:
            text += f", {n} {state}"
    return text


def batch_table_html(rows: Sequence[BatchRow]) -> str:
    """Batch outputs: prompt, answer (or the row's state) and its numbers, under a count of rows done."""
    if not rows:
        return ""
    body = []
    for row in rows:
        r = row.result
        if r is None:
            state = f"failed: {row.error}" if row.state == "failed" else row.state
            body.append([row.prompt, state, None, None, None])
        else:
            body.append([row.prompt, r.text, r.new_tokens, f"{r.tokens_per_s:.1f}" if r.tokens_per_s else None,
                         r.stopped_by])
    return html_table(["Prompt", "Output", "New tokens", "Tokens/s", "Stopped by"], body,
                      caption=f"Batch: {batch_count_text(rows)}")


def _endpoint_choices() -> list[str]:
    """``endpoint:NAME`` for each running or remote endpoint (engines that exited are left out)."""
    try:
        from ..serve import EndpointRegistry

        return [ENDPOINT_PREFIX + s.endpoint.name for s in EndpointRegistry().statuses() if s.state != "exited"]
    except WorkbenchError:  # an unreadable registry must not break the panel
        return []


def _is_endpoint(target: Any) -> bool:
    from ..serve import EndpointClient

    return isinstance(target, EndpointClient)


class PromptPanel(Panel):
    """Chat with a loaded model, with streaming, sampling controls, Stop, Clear and batches.

    The model, the system prompt and each sampling setting (:data:`SAMPLING`) are the panel's
    traits, each linked to its widget once the widgets exist (``panel.temperature = 0.2``
    moves the slider; the slider sets ``panel.temperature``).

    Args:
        registry: the kernel's loaded models; default :func:`workbench.runtime.get_registry`.

    Example:
        >>> panel = PromptPanel()
        >>> result = panel.send("What is the capital of France?")   # doctest: +SKIP
        >>> "Paris" in result.text                                   # doctest: +SKIP
        True
    """

    title = "Prompt"

    # The state, once: each trait is linked to its widget when the widgets are built.
    model = Unicode(None, allow_none=True, help="a loaded model's name, or endpoint:NAME")
    system_prompt = Unicode("", help="empty: the chat template's own, if any")
    max_new_tokens = Int(DEFAULTS["max_new_tokens"], help="a whole number of tokens, at least 1")
    temperature = Float(DEFAULTS["temperature"], help="0 means greedy")
    top_p = Float(DEFAULTS["top_p"], help="a probability, 0 to 1")
    top_k = Int(DEFAULTS["top_k"], help="a whole number; 0 disables top-k")
    repetition_penalty = Float(DEFAULTS["repetition_penalty"], help="1 means none")
    seed = Int(None, allow_none=True, help="a whole number, or None for a random seed")
    stop_at = Tuple(help="a list of strings that end the answer")
    enable_thinking = Bool(None, allow_none=True, help="True, False, or None for the chat template's default")

    def __init__(self, registry: Registry | None = None) -> None:
        super().__init__()
        self._registry = registry
        self._links: dict[str, Any] = {}
        self.observe(self.guarded(lambda _change: self._show_thinking_switch()), names="model")
        self.history: list[dict[str, str]] = []
        self.results: list[Any] = []
        self.batch_rows: list[BatchRow] = []
        self._batch_stop: threading.Event | None = None
        self.pending: str | None = None
        self.pending_reasoning = ""
        self.reasoning: dict[int, str] = {}  # history index -> that answer's reasoning
        self.flushes = 0
        self._stream: Any = None
        self._flush_throttle = Throttle(1.0 / FLUSH_PER_S)
        self._listeners: list[Callable[[Any], None]] = []

    @property
    def registry(self) -> Any:
        if self._registry is None:
            from ..runtime import get_registry

            self._registry = get_registry()
        return self._registry

    def on_result(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback(result)`` after each finished generation."""
        self._listeners.append(callback)

    # --- state -----------------------------------------------------------------------------

    @property
    def params(self) -> dict[str, Any]:
        """The sampling settings by name (a copy: change them with :meth:`set_params` or the traits)."""
        return {name: getattr(self, _trait(name)) for name in SAMPLING}

    def refresh_models(self) -> list[str]:
        """Re-list loaded models; keeps the choice if it is still loaded, else picks the newest."""
        local = [m.name for m in self.registry.list()]
        names = local + _endpoint_choices()
        model = self.model if self.model in names else (local[-1] if local else (names[0] if names else None))
        self._select("model", "_model_w", names, model)
        if self._links:
            self._send_button.disabled = self.model is None
            self._draw_transcript()  # the empty transcript says whether there is a model to talk to
        self._show_thinking_switch()
        return names

    def generation_params(self) -> Any:
        """The :class:`workbench.runtime.GenerationParams` the Send button would use."""
        from ..runtime import GenerationParams

        known = {f.name for f in fields(GenerationParams)}
        kwargs = {k: getattr(self, _trait(k)) for k in SAMPLING if k in known}
        kwargs["stop"] = tuple(kwargs.get("stop") or ())
        if "system_prompt" in known:
            kwargs["system_prompt"] = self.system_prompt or None
        return GenerationParams(**kwargs)

    def set_params(self, **params: Any) -> None:
        """Change sampling settings: ``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``,
        ``repetition_penalty``, ``seed`` (``None`` for random), ``stop`` (a list of strings),
        ``enable_thinking`` (``None``: the chat template's default; see :meth:`takes_thinking_switch`).

        Raises:
            ConfigError: a name that is not one of these settings, or a value of the wrong kind.
        """
        unknown = set(params) - set(SAMPLING)
        if unknown:
            raise ConfigError(f"unknown sampling setting(s): {', '.join(sorted(unknown))}",
                              hint=f"use {', '.join(sorted(SAMPLING))}")
        for name, value in params.items():
            try:
                setattr(self, _trait(name), value)  # the links move the widgets
            except TraitError:
                raise ConfigError(f"{name}={value!r} is not a valid sampling setting",
                                  hint=f"{name}: {self.traits()[_trait(name)].help}") from None

    def takes_thinking_switch(self) -> bool:
        """Whether the chosen model's chat template takes ``enable_thinking`` (the switch is shown then)."""
        if self.model is None or self.model.startswith(ENDPOINT_PREFIX):
            return False
        from ..runtime.prompts import takes_enable_thinking

        try:
            return takes_enable_thinking(self.registry.get(self.model).tokenizer)
        except WorkbenchError:
            return False

    def _loaded(self) -> Any:
        if self.model is None:
            self.refresh_models()
        if self.model is None:
            raise ModelNotLoadedError("no model is loaded", hint="load one in the Load tab first")
        if self.model.startswith(ENDPOINT_PREFIX):
            from ..serve import EndpointClient

            return EndpointClient(self.model[len(ENDPOINT_PREFIX):])
        return self.registry.get(self.model)

    # --- actions ---------------------------------------------------------------------------

    def send(self, text: str, *, images: Sequence[Any] = (), wait: bool = True) -> Any:
        """Send a user message; the answer streams into the transcript.

        ``images`` (file bytes or ``PIL.Image`` objects, e.g. from the upload beside the
        message) go before the text as ``{"type": "image"}`` content parts, for
        vision-language models (:mod:`workbench.runtime.prompts`).

        Returns:
            The runtime's ``GenerationResult`` (``wait=True``) or a ``Future`` of it.

        Raises:
            GenerationError: the text is empty, or generation failed (``wait=True``).
            ModelNotLoadedError: no model is loaded.
        """
        text = text.strip()
        if not text:
            raise GenerationError("the prompt is empty", hint="type something to send")
        loaded = self._loaded()
        params = self.generation_params()
        content: Any = text if not images else [*({"type": "image", "image": i} for i in images),
                                                 {"type": "text", "text": text}]
        messages = [*self.history, {"role": "user", "content": content}]
        self.clear_message()

        def job() -> Any:
            from ..runtime import stream

            self.history.append({"role": "user", "content": content})
            self.pending, self.pending_reasoning = "", ""
            self._set_busy(True)
            self._render_transcript()
            try:
                s = loaded.stream(messages, params) if _is_endpoint(loaded) else stream(loaded, messages, params)
                self._stream = s
                for piece in s.pieces():
                    if piece.kind == "reasoning":
                        self.pending_reasoning += piece.text
                    else:
                        self.pending += piece.text
                    if self._flush_throttle.ready():
                        self._render_transcript()
                result = s.wait()
            except Exception:
                # The user's message stays; the half answer is dropped with the error shown.
                self.pending, self.pending_reasoning = None, ""
                self._render_transcript()
                raise
            finally:
                self._stream = None
                self._set_busy(False)
            self.pending, self.pending_reasoning = None, ""
            if result.reasoning:
                self.reasoning[len(self.history)] = result.reasoning
            self.history.append({"role": "assistant", "content": result.text})
            self.results.append(result)
            self._render_all()
            if result.notices:
                self.show_message(" ".join(result.notices), "warning")
            for cb in list(self._listeners):
                cb(result)
            return result

        return self._finish(self.submit(job), wait)

    def stop(self) -> None:
        """Stop the answer being generated (what was generated so far is kept), and the batch running."""
        if self._batch_stop is not None:
            self._batch_stop.set()
        s = self._stream
        if s is not None:
            s.stop()

    def clear(self) -> None:
        """Forget the conversation (metrics and batch results stay)."""
        self.history = []
        self.reasoning = {}
        self.pending = None
        self._render_transcript()

    def run_batch(self, prompts: Sequence[str], *, wait: bool = True) -> Any:
        """Answer several independent prompts (no chat history) into a table, one prompt at a time.

        Each row fills in as its answer finishes, under a count (``"3 of 8 done"``); :meth:`stop`
        (the Stop button) ends the answer being generated (kept, ``stopped_by == "cancelled"``) and
        marks the rows not yet started ``"stopped"``. One at a time, not one padded batch, so that
        each answer is shown when it is ready and is the one a single Send would give.

        Returns:
            The ``GenerationResult`` of each row that ran, in order (``wait=True``), or a ``Future`` of it;
            :attr:`batch_rows` holds every row with its state.

        Raises:
            GenerationError: no prompts, or generation failed (``wait=True``; the rows after the failed
                one are marked stopped).
            ModelNotLoadedError: no model is loaded.
        """
        prompts = [p.strip() for p in prompts if p and p.strip()]
        if not prompts:
            raise GenerationError("no prompts in the batch", hint="write one prompt per line")
        loaded = self._loaded()
        params = self.generation_params()
        stop = threading.Event()

        def job() -> list[Any]:
            from ..runtime import stream

            self._batch_stop = stop
            self.batch_rows = [BatchRow(p) for p in prompts]
            self._set_busy(True)
            self._render_batch()
            results: list[Any] = []
            try:
                for i, prompt in enumerate(prompts):
                    if stop.is_set():
                        break
                    self.batch_rows[i] = replace(self.batch_rows[i], state="running")
                    self._render_batch()
                    try:
                        s = loaded.stream(prompt, params) if _is_endpoint(loaded) else stream(loaded, prompt, params)
                        self._stream = s
                        if stop.is_set():  # Stop came between the check above and the stream's start
                            s.stop()
                        result = s.wait()
                    except Exception as exc:
                        self.batch_rows[i] = replace(self.batch_rows[i], state="failed", error=error_message(exc))
                        raise
                    finally:
                        self._stream = None
                    self.batch_rows[i] = replace(self.batch_rows[i], state="done", result=result)
                    results.append(result)
                    self._render_batch()
            finally:
                self.batch_rows = [replace(r, state="stopped") if r.state == "waiting" else r
                                   for r in self.batch_rows]
                self._batch_stop = None
                self._set_busy(False)
                self._render_all()
            return results

        return self._finish(self.submit(job), wait)

    # --- widgets ---------------------------------------------------------------------------

    def _build(self) -> Any:
        import ipywidgets as widgets

        self._model_w = widgets.Dropdown(description="Model", layout=widgets.Layout(width="360px"))
        refresh = widgets.Button(description="Refresh", icon="refresh", layout=widgets.Layout(width="100px"))
        self._thinking_w = widgets.Dropdown(options=[("template default", None), ("on", True), ("off", False)],
                                            value=self.enable_thinking, description="thinking",
                                            layout=widgets.Layout(width="240px", display="none"))
        self._system_w = widgets.Textarea(value=self.system_prompt, placeholder="optional system prompt",
                                          description="System", layout=widgets.Layout(width="100%", height="48px"))
        p = self.params
        self._param_w = {
            "max_new_tokens": widgets.IntSlider(value=p["max_new_tokens"], min=1, max=2048, description="max tokens"),
            "temperature": widgets.FloatSlider(value=p["temperature"], min=0.0, max=2.0, step=0.05,
                                               description="temperature"),
            "top_p": widgets.FloatSlider(value=p["top_p"], min=0.0, max=1.0, step=0.01, description="top p"),
            "top_k": widgets.IntSlider(value=p["top_k"], min=0, max=200, description="top k"),
            "repetition_penalty": widgets.FloatSlider(value=p["repetition_penalty"], min=1.0, max=2.0, step=0.05,
                                                      description="repetition"),
        }
        self._seed_w = widgets.Text(value="" if p["seed"] is None else str(p["seed"]), placeholder="random",
                                    description="seed", layout=widgets.Layout(width="220px"))
        self._stop_w = widgets.Text(value=", ".join(p["stop"]), placeholder="e.g. ###, User:", description="stop at",
                                    layout=widgets.Layout(width="320px"))
        for w in self._param_w.values():
            # Set on the slider's own style: assigning a new one orphans the old SliderStyle widget.
            w.style.description_width = "100px"
        sampling = widgets.VBox([widgets.HBox(list(self._param_w.values())[:3]),
                                 widgets.HBox([*list(self._param_w.values())[3:], self._seed_w]), self._stop_w])
        self._transcript = widgets.HTML(layout=widgets.Layout(width="100%", max_height="420px", overflow="auto"))
        self._transcript.add_class("workbench-transcript-box")
        self._input = widgets.Textarea(placeholder="Ask something, then press Send",
                                       layout=widgets.Layout(width="100%", height="64px"))
        self._input.add_class("workbench-prompt-input")
        # Images for vision-language models, sent with the message (bounded and checked by the runtime).
        self._upload = widgets.FileUpload(accept="image/*", multiple=True, description="Image",
                                          layout=widgets.Layout(width="120px"))
        self._send_button = widgets.Button(description="Send", button_style="primary", icon="paper-plane",
                                           layout=widgets.Layout(width="100px"))
        self._stop_button = widgets.Button(description="Stop", icon="stop", disabled=True,
                                           layout=widgets.Layout(width="100px"))
        clear = widgets.Button(description="Clear", icon="trash", layout=widgets.Layout(width="100px"))
        self._metrics_w = widgets.HTML()
        self._batch_input = widgets.Textarea(placeholder="one prompt per line",
                                             layout=widgets.Layout(width="100%", height="90px"))
        self._batch_button = widgets.Button(description="Run batch", icon="list", layout=widgets.Layout(width="120px"))
        self._batch_stop_button = widgets.Button(description="Stop", icon="stop", disabled=True,
                                                 layout=widgets.Layout(width="100px"))
        self._batch_w = widgets.HTML()

        # The traits are the state; each widget shows one and sets it (see the class doc).
        self._links = {name: link((self, name), (w, "value")) for name, w in (
            ("model", self._model_w), ("system_prompt", self._system_w), ("enable_thinking", self._thinking_w),
            *self._param_w.items())}
        self._links["seed"] = link((self, "seed"), (self._seed_w, "value"),
                                   transform=(lambda seed: "" if seed is None else str(seed), self._parse_seed))
        self._links["stop_at"] = link((self, "stop_at"), (self._stop_w, "value"), transform=(
            ", ".join, lambda text: tuple(s.strip() for s in text.split(",") if s.strip())))
        refresh.on_click(self.guarded(lambda _: self.refresh_models()))
        self._send_button.on_click(self.guarded(self._on_send))
        self._stop_button.on_click(self.guarded(lambda _: self.stop()))
        self._batch_stop_button.on_click(self.guarded(lambda _: self.stop()))
        clear.on_click(self.guarded(lambda _: self.clear()))
        self._refresh_button, self._clear_button = refresh, clear
        self._batch_button.on_click(self.guarded(
            lambda _: self.run_batch(self._batch_input.value.splitlines(), wait=False)))

        extras = widgets.Accordion(children=[sampling, widgets.VBox([
            self._batch_input, widgets.HBox([self._batch_button, self._batch_stop_button]), self._batch_w])])
        extras.set_title(0, "Sampling")
        extras.set_title(1, "Batch: many prompts into a table")
        self._render_all()
        self.refresh_models()
        return widgets.VBox([
            widgets.HBox([self._model_w, refresh, self._thinking_w]),
            self._system_w,
            self._transcript,
            self._input,
            widgets.HBox([self._send_button, self._stop_button, clear, self._upload]),
            self._metrics_w,
            extras,
        ])

    def _control_widgets(self) -> dict[str, Any]:
        """``model``, ``refresh``, ``thinking`` (shown for templates that take ``enable_thinking``),
        ``system_prompt``, ``params`` (by generation parameter name), ``seed``, ``stop_at``, ``input`` with the
        ``send``/``stop``/``clear`` buttons and the ``image`` upload, ``batch_input``, ``run_batch`` and
        ``stop_batch`` (the same as ``stop``, beside the batch)."""
        return {"model": self._model_w, "refresh": self._refresh_button, "thinking": self._thinking_w,
                "system_prompt": self._system_w,
                "params": self._param_w, "seed": self._seed_w, "stop_at": self._stop_w, "input": self._input,
                "image": self._upload,
                "send": self._send_button, "stop": self._stop_button, "clear": self._clear_button,
                "batch_input": self._batch_input, "run_batch": self._batch_button,
                "stop_batch": self._batch_stop_button}

    def _output_widgets(self) -> dict[str, Any]:
        """``transcript``, ``metrics`` (the last results' table) and ``batch`` (the batch results' table)."""
        return {"transcript": self._transcript, "metrics": self._metrics_w, "batch": self._batch_w}

    def _show_thinking_switch(self) -> None:
        if hasattr(self, "_thinking_w"):
            self._thinking_w.layout.display = None if self.takes_thinking_switch() else "none"

    def _on_send(self, _button: Any) -> None:
        text = self._input.value
        images = [bytes(f["content"]) for f in self._upload.value]
        self.send(text, images=images, wait=False)
        self._input.value = ""
        self._upload.value = ()

    def _parse_seed(self, text: str) -> int | None:
        """The seed box's text as a seed; one that is not a whole number is shown as an error and
        leaves the seed as it was."""
        text = text.strip()
        if text and not text.lstrip("-").isdigit():
            self.show_error(GenerationError(f"seed {text!r} is not a whole number",
                                            hint="leave it empty for a random seed"))
            return self.seed
        return int(text) if text else None

    def _set_busy(self, busy: bool) -> None:
        if self._root is None:
            return
        self._send_button.disabled = busy or self.model is None
        self._batch_button.disabled = busy
        self._stop_button.disabled = not busy
        self._batch_stop_button.disabled = not busy

    def _render_transcript(self) -> None:
        if not hasattr(self, "_transcript"):
            return
        self.flushes += 1
        self._draw_transcript()

    def _draw_transcript(self) -> None:
        if not hasattr(self, "_transcript"):
            return
        self._transcript.value = transcript_html(self.system_prompt, self.history, self.pending, self.reasoning,
                                                 self.pending_reasoning, has_model=self.model is not None)

    def _render_all(self) -> None:
        if not hasattr(self, "_metrics_w"):
            return
        self._render_transcript()
        self._metrics_w.value = metrics_table_html(self.results[-10:])
        self._render_batch()

    def _render_batch(self) -> None:
        if hasattr(self, "_batch_w"):
            self._batch_w.value = batch_table_html(self.batch_rows)

    # --- static ----------------------------------------------------------------------------

    def static_html(self, plots: bool = True) -> str:
        """The conversation, the metrics of every run and the last batch."""
        parts = [f"<p>Model: <b>{esc(self.model or 'none loaded')}</b></p>"]
        if self.system_prompt:
            parts.append(f"<p><b>System prompt:</b></p>{pre_html(self.system_prompt)}")
        for i, m in enumerate(self.history):
            parts.append(f"<p style='margin:4px 0 0 0'><b>{esc(m['role'])}:</b></p>{reasoning_html(self.reasoning.get(i, ''))}"
                         f"{pre_html(m['content'])}")
        parts.append(metrics_table_html(self.results))
        parts.append(batch_table_html(self.batch_rows))
        return "".join(parts)
