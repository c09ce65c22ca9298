"""The Quantization panel: pick variants, run the study with progress, see the table and plots.

A thin view over :func:`workbench.quant.compare`; the figures are built from the
study's raw numbers by :func:`study_figures`, which reports use too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from traitlets import Bool, Int, List, Unicode, link

from ..errors import ConfigError
from ..precision import LABELS
from ..quant.study import DEFAULT_VARIANTS
from ..store import ModelStore, format_bytes
from .base import Panel, Throttle, toggle
from .display import banner_html, esc, figure_html, html_table
from .figures import FigureSlot

if TYPE_CHECKING:
    from ..runtime import Registry

def format_seconds(seconds: float) -> str:
    """``42`` -> ``"42 s"``, ``150`` -> ``"2 min 30 s"``.

    Example:
        >>> format_seconds(42.4), format_seconds(150)
        ('42 s', '2 min 30 s')
    """
    s = max(0, round(seconds))
    return f"{s} s" if s < 60 else f"{s // 60} min {s % 60} s"


#: bitsandbytes precisions, then the GGUF variants on llama.cpp (workbench.quant.study: ``gguf`` is the
#: store's GGUF files of the same model, ``llamacpp:*`` llama.cpp's own quantizer from an F16 GGUF).
VARIANT_CHOICES = (*LABELS, "gguf", "llamacpp:F16", "llamacpp:Q8_0", "llamacpp:Q4_K_M")
DEFAULT_CHOICE = tuple(v.label for v in DEFAULT_VARIANTS)

EXPLANATION = (
    "Each variant is loaded, measured and unloaded in turn; the first is the baseline that quality is "
    "compared with. <b>Perplexity</b> is measured on a held-out public-domain text (lower is better), "
    "<b>KL</b> is the mean divergence of next-token distributions from the baseline's (0 = identical), "
    "<b>match</b> is how often greedy continuations pick the baseline's tokens. "
    "Speed depends on the backend: on GPUs, bitsandbytes' int8 (LLM.int8) at batch 1 is known to be "
    "slower than 16-bit, and 4-bit trades some speed for memory; on the CPU, bitsandbytes' kernels are "
    "less tuned than PyTorch's 16-bit matmuls, so quantized variants are usually slower there. "
    "Memory savings carry over to GPUs; speed ratios measured on the CPU do not. "
    "<b>gguf</b> adds the store's GGUF files of the same model (by name), run on llama.cpp at their own "
    "quantization; <b>llamacpp:Q8_0</b> and <b>Q4_K_M</b> are made by llama.cpp's own quantizer from an F16 "
    "GGUF (<b>llamacpp:F16</b>, written from the safetensors into a temporary folder when the store has none). "
    "Their perplexity and KL come from llama.cpp's logits on the same tokens as the baseline's."
)


def study_rows(study: Any) -> list[list[Any]]:
    """Display rows of a study's table (strings, escaped later by ``html_table``)."""
    rows = []
    for d in study.table():
        if d["error"]:
            rows.append([d["variant"], "error: " + d["error"], None, None, None, None, None, None, None])
            continue
        rows.append([
            d["variant"], format_bytes(d["footprint_bytes"]),
            f"{d['memory_ratio']:.0%}" if d.get("memory_ratio") is not None else None,
            f"{d['estimate_error']:+.1%}" if d["estimate_error"] is not None else None,
            f"{d['ttft_s']:.3f}", f"{d['tokens_per_s']:.1f}",
            f"{d['perplexity']:.2f}" + (f" ({d['perplexity_change']:+.1%})" if d.get("perplexity_change") is not None else ""),
            f"{d['kl_divergence']:.4f}" if d["kl_divergence"] is not None else None,
            f"{d['token_match_rate']:.0%}" if d["token_match_rate"] is not None else None,
        ])
    return rows


NO_STUDY = "No study yet: choose precisions and Run study."

STUDY_HEADERS = ["Variant", "Memory", "vs baseline", "Estimate error", "TTFT s", "Tokens/s", "Perplexity", "KL",
                 "Match"]


def study_figures(study: Any) -> tuple[Any, Any]:
    """Two Plotly figures: memory vs quality (perplexity), and speed vs memory.

    Example:
        >>> quality, speed = study_figures(study)  # doctest: +SKIP
    """
    import plotly.graph_objects as go

    ok = [r for r in study.rows if r.ok]
    labels = [r.variant.label for r in ok]
    mem_mib = [r.footprint_bytes / 2**20 for r in ok]
    quality = go.Figure(go.Scatter(x=mem_mib, y=[r.perplexity for r in ok], mode="markers+text", text=labels,
                                   textposition="top center", marker={"size": 11}))
    quality.update_layout(title="Memory vs quality", xaxis_title="footprint (MiB)",
                          yaxis_title="perplexity (lower is better)", height=320, margin={"t": 40, "b": 40})
    speed = go.Figure(go.Bar(x=labels, y=[r.tokens_per_s for r in ok], text=[f"{m:.0f} MiB" for m in mem_mib],
                             textposition="outside"))
    speed.update_layout(title=f"Decode speed on {study.device} (bar labels: memory)", yaxis_title="tokens/s",
                        height=320, margin={"t": 40, "b": 40})
    return quality, speed


class QuantizationPanel(Panel):
    """Run and show a quantization study.

    The model, device, variants, evaluation tokens and ``allow_unknown_cache`` (load each variant
    although the store cannot measure the model's cache) are the panel's traits, each linked to
    its widget once the widgets exist (``panel.variants = ["bfloat16", "nf4"]`` ticks the boxes).

    Args:
        store: where models are listed from; default ``ModelStore()``.
        registry: the loaded-model registry (variants are loaded into it one at a time).
        clock: seconds, for the time-left estimate and the status throttle; default ``time.monotonic``
            (injectable so a test sets the study's pace instead of sleeping).

    Example:
        >>> panel = QuantizationPanel()                                        # doctest: +SKIP
        >>> panel.run("SmolLM2-135M-Instruct", ["bfloat16", "nf4"]).recommendation().reason  # doctest: +SKIP
    """

    title = "Quantization"

    # The state, once: each trait is linked to its widget when the widgets are built.
    models = List(Unicode(), help="the store's usable models, as last listed")
    model = Unicode(None, allow_none=True, help="the model to study")
    device = Unicode("cpu", help="where each variant is loaded")
    variants = List(Unicode(), help="precision labels, the first the baseline")
    eval_tokens = Int(512, help="held-out tokens the perplexity is measured on")
    allow_unknown_cache = Bool(False, help="study a model even when the store cannot measure its cache "
                                           "(each variant is then loaded without that check)")

    def __init__(self, store: ModelStore | None = None, registry: Registry | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        super().__init__()
        self._clock = clock or time.monotonic
        self.store = store if store is not None else ModelStore()
        self._registry = registry
        self._links: dict[str, Any] = {}
        self.models = [e.name for e in self.store.list() if e.ok and not e.shadowed]
        self.model = self.models[0] if self.models else None
        self.variants = list(DEFAULT_CHOICE)
        self.study: Any = None
        self.progress: tuple[str, float] = ("idle", 0.0)
        self._throttle = Throttle(0.25, clock=self._clock)
        self._started_s: float | None = None

    def refresh_models(self) -> list[str]:
        """Re-list the store's usable models."""
        names = [e.name for e in self.store.list() if e.ok and not e.shadowed]
        model = self.model if self.model in names else (names[0] if names else None)
        self.models = names
        self._select("model", "_model_w", names, model)
        return self.models

    # --- actions ---------------------------------------------------------------------------

    def run(self, model: str | None = None, variants: Sequence[str] | None = None, device: str | None = None,
            *, eval_tokens: int | None = None, new_tokens: int = 24, wait: bool = True, **kwargs: Any) -> Any:
        """Run the study on the panel's worker thread; returns the ``QuantStudy`` (or a Future).

        Extra keyword arguments go to :func:`workbench.quant.compare` (``prompts``, ``text``...).

        Raises:
            ConfigError: no model or no variants; an unknown variant label (``wait=True``).
        """
        from ..quant import compare

        self.model = model or self.model
        self.variants = list(variants or self.variants)
        self.device = device or self.device
        self.eval_tokens = eval_tokens or self.eval_tokens
        if not self.model:
            raise ConfigError("no model to study", hint="seed or import a model into the store first")
        if not self.variants:
            raise ConfigError("no variants selected", hint="tick at least a baseline such as bfloat16")
        cancel = self._new_cancel()
        self.clear_message()

        def job() -> Any:
            self._started_s = self._clock()
            if hasattr(self, "_table_w"):
                self._table_w.value = (f"<i>Study running: {len(self.variants)} variant(s) of {esc(self.model)} on "
                                       f"{esc(self.device)}, each loaded, measured and unloaded in turn.</i>")
            self._set_progress("starting", 0.0, force=True)
            study = compare(self.model, self.variants, self.device, max_eval_tokens=self.eval_tokens,
                            new_tokens=new_tokens, progress=self._set_progress, cancel=cancel,
                            registry=self._registry, **{"allow_unknown_cache": self.allow_unknown_cache, **kwargs})
            self.study = study
            self._set_progress("cancelled" if study.cancelled else "done", 1.0, force=True)
            failed = [r.variant.label for r in study.rows if not r.ok]
            if study.cancelled:
                self.show_message("Study cancelled; every variant was unloaded.", "warning")
            elif failed:
                self.show_message(f"{', '.join(failed)} could not run (see the table); the other rows completed.",
                                  "warning")
            else:
                self.show_message("Recommendation: " + study.recommendation().reason, "ok")
            self._render_results()
            return study

        return self._finish(self.submit(job), wait)

    # --- widgets ---------------------------------------------------------------------------

    def time_left_s(self, fraction: float | None = None) -> float | None:
        """Seconds the running study still needs, from its pace so far (``None`` before 5 % is done).

        Example:
            >>> panel.time_left_s(0.25)  # 30 s spent on a quarter  # doctest: +SKIP
            90.0
        """
        fraction = self.progress[1] if fraction is None else fraction
        if self._started_s is None or not 0.05 <= fraction < 1.0:
            return None
        elapsed = self._clock() - self._started_s
        return elapsed * (1.0 - fraction) / fraction

    def _set_progress(self, message: str, fraction: float, force: bool = False) -> None:
        self.progress = (message, fraction)
        if self._root is None or not (force or self._throttle.ready()):
            return
        self._bar.value = max(0.0, min(1.0, fraction))
        left = self.time_left_s(fraction)
        suffix = "" if left is None else f" &middot; about {format_seconds(left)} left"
        self._status.value = f"{esc(message)} ({100 * fraction:.0f}%){suffix}" if 0 < fraction < 1 else esc(message)
        running = message not in ("done", "cancelled", "idle")
        self._run_button.disabled = running
        self._cancel_button.disabled = not running

    def _build(self) -> Any:
        import ipywidgets as widgets
        import plotly.graph_objects as go

        from ..devices import list_devices

        devices = [d.name for d in list_devices()]
        if self.device not in devices:
            self.device = devices[0]
        self._model_w = widgets.Dropdown(options=self.models, value=self.model, description="Model",
                                         layout=widgets.Layout(width="360px"))
        self._device_w = widgets.Dropdown(options=devices, value=self.device, description="Device", layout=widgets.Layout(width="200px"))
        self._boxes = {label: widgets.Checkbox(value=label in self.variants, description=label, indent=False,
                                               layout=widgets.Layout(width="100px" if ":" not in label else "150px"))
                       for label in VARIANT_CHOICES}
        self._tokens_w = widgets.BoundedIntText(value=self.eval_tokens, min=32, max=8192, step=64,
                                                description="eval tokens", layout=widgets.Layout(width="200px"))
        self._unknown_w = widgets.Checkbox(value=self.allow_unknown_cache, indent=False,
                                           description="study it even if its cache size is unknown",
                                           layout=widgets.Layout(width="auto"))
        self._run_button = widgets.Button(description="Run study", button_style="primary", icon="play",
                                          layout=widgets.Layout(width="120px"))
        self._cancel_button = widgets.Button(description="Cancel", icon="stop", disabled=True,
                                             layout=widgets.Layout(width="110px"))
        self._bar = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, layout=widgets.Layout(width="300px"))
        self._status = widgets.HTML()
        self._table_w = widgets.HTML()
        # Slots, not FigureWidgets filled later: each result is sent as a whole new figure (see ui/figures.py).
        self._quality = FigureSlot(go.Figure(layout={"height": 320, "title": "Memory vs quality"}), height=320)
        self._speed = FigureSlot(go.Figure(layout={"height": 320, "title": "Decode speed"}), height=320)
        # The traits are the state; each widget shows one and sets it (see the class doc).
        self._links = {name: link((self, name), (w, "value")) for name, w in (
            ("model", self._model_w), ("device", self._device_w), ("eval_tokens", self._tokens_w),
            ("allow_unknown_cache", self._unknown_w))}
        for label, box in self._boxes.items():
            self._links[f"variant:{label}"] = link((self, "variants"), (box, "value"), transform=(
                lambda variants, v=label: v in variants,
                lambda on, v=label: toggle(VARIANT_CHOICES, self.variants, v, on)))
        self._run_button.on_click(self.guarded(lambda _: self.run(wait=False)))
        self._cancel_button.on_click(self.guarded(lambda _: self.cancel()))
        # Side by side where there is room, one under the other where not (no plot cut at the right);
        # hidden until a study has a row to draw (two empty canvases read as "no data", not "not yet").
        self._plots_w = widgets.Box([self._quality.box, self._speed.box],
                                    layout=widgets.Layout(display="none", grid_template_columns="repeat(auto-fit, minmax(380px, 1fr))",
                                                          width="100%", grid_gap="8px"))
        self._render_results()
        return widgets.VBox([
            widgets.HTML(f"<div style='font-size:13px;max-width:900px'>{EXPLANATION}</div>"),
            widgets.HBox([self._model_w, self._device_w, self._tokens_w, self._unknown_w]),
            widgets.HBox([widgets.HTML("<b>Variants</b>", layout=widgets.Layout(width="70px")),
                          *self._boxes.values()]),
            widgets.HBox([self._run_button, self._cancel_button, self._bar, self._status]),
            self._table_w,
            self._plots_w,
        ], layout=widgets.Layout(width="100%", min_width="0"))

    def _control_widgets(self) -> dict[str, Any]:
        """``model``, ``device``, ``variants`` (checkboxes by variant label), ``eval_tokens``,
        ``allow_unknown_cache`` (study a model whose cache the store cannot measure), ``run``, ``cancel``."""
        return {"model": self._model_w, "device": self._device_w, "variants": self._boxes,
                "eval_tokens": self._tokens_w, "allow_unknown_cache": self._unknown_w, "run": self._run_button,
                "cancel": self._cancel_button}

    def _output_widgets(self) -> dict[str, Any]:
        """``progress`` (a bar, 0..1), ``status``, ``table`` (the study's results, or what to do before
        one), ``plots`` (the box of both figures: ``layout.display`` ``"none"`` until a study has a row
        to draw) and the ``quality`` and ``speed`` figures."""
        return {"progress": self._bar, "status": self._status, "table": self._table_w, "plots": self._plots_w,
                "quality": self._quality.figure, "speed": self._speed.figure}

    def _render_results(self) -> None:
        if not hasattr(self, "_table_w"):  # widgets not built: the static twin renders on demand
            return
        if self.study is None:
            self._table_w.value = f"<i>{NO_STUDY}</i>"
            return
        self._table_w.value = html_table(STUDY_HEADERS, study_rows(self.study),
                                         caption=f"{self.study.model} on {self.study.device}, "
                                                 f"{self.study.eval_tokens} evaluation tokens")
        if not any(r.ok for r in self.study.rows):
            return  # every row failed: the table says why; the plots keep the last study that drew
        quality, speed = study_figures(self.study)
        self._quality.show(quality)
        self._speed.show(speed)
        self._plots_w.layout.display = "grid"

    def on_show(self) -> None:
        """The tab is shown: send both figures whole again."""
        if hasattr(self, "_quality"):
            self._quality.resend()
            self._speed.resend()

    # --- static ----------------------------------------------------------------------------

    def static_html(self, plots: bool = True) -> str:
        """The explanation, the table, the recommendation and both plots."""
        parts = [f"<p style='font-size:13px;max-width:900px'>{EXPLANATION}</p>"]
        if self.study is None:
            parts.append("<p><i>No study has run in this kernel.</i></p>")
            return "".join(parts)
        parts.append(html_table(STUDY_HEADERS, study_rows(self.study),
                                caption=f"{self.study.model} on {self.study.device}, "
                                        f"{self.study.eval_tokens} evaluation tokens ({self.study.eval_source})"))
        rec = self.study.recommendation()
        parts.append(banner_html("Recommendation: " + rec.reason, "ok"))
        if plots and any(r.ok for r in self.study.rows):
            quality, speed = study_figures(self.study)
            parts.append(figure_html(quality, height=320) + figure_html(speed, height=320))
        return "".join(parts)
