"""The Telemetry panel: live plots per GPU, for the CPU/RAM, for serving engines' metrics
(vLLM's ``/metrics``) and for other hosts' GPUs (DCGM exporters), with the workbench's events marked.

Redraws are cheap on purpose: at most 4 a second, one ``batch_update()`` each
(one comm message for every trace and mark), at most :data:`MAX_POINTS` points a
trace, float32 values, and x as float32 seconds relative to the newest sample.
They run on the sampler's subscriber thread, so the kernel never blocks on a plot.
Each figure lives in a :class:`~workbench.ui.figures.FigureSlot`: built with its traces, and
sent whole again when the tab is shown, the window changes or the traces change, so a view
created late, reloaded or fed on a busy machine still shows the data.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import threading
import time
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..store import format_bytes
from .base import Panel, Throttle
from .display import esc, figure_html, html_table

if TYPE_CHECKING:
    from ..telemetry import EventLog, Sampler
    from ..telemetry.series import Series
    from ..telemetry.watch import DcgmWatcher, EngineWatcher

#: One subplot's lines: ``(series key, scale divisor, trace name)`` each.
Plot = Sequence[tuple[str, float, str]]


MAX_POINTS = 600
MAX_EVENTS = 40
REDRAW_INTERVAL_S = 0.25  # at most 4 redraws a second
GIB = float(2**30)
WINDOWS = (("1 min", 60), ("5 min", 300), ("10 min", 600), ("15 min", 900), ("1 hour", 3600))
# Subplots whose values are percentages: drawn on 0..100 (autoscaling made a 0.4-point dip of a
# 99.6-100 % CPU look like a fall to zero).
PERCENT_TITLES = frozenset({"Utilisation (%)", "CPU (%)", "KV cache used (%)"})
# Event labels: written along their event's line (rotated), each a box of explicit size (plotly clips
# text to an annotation's ``width``/``height``), laid out for the narrowest the figure is drawn
# (its box's min-width): labels that do not overlap there have more room at any wider size.
MIN_FIGURE_WIDTH_PX = 560
LABEL_LENGTH_PX = 120  # along the line: fits the shortest subplot (the host plot's, 150 px)
LABEL_THICKNESS_PX = 12  # across it: one line of 9 px text
LABEL_GAP_PX = 2
LABEL_MAX_CHARS = 22  # about LABEL_LENGTH_PX of 9 px text; longer text ends with an ellipsis

# Per GPU: (metric, subplot title, scale divisor)
GPU_PLOTS = (
    ("utilization_percent", "Utilisation (%)", 1.0),
    ("memory_used_bytes", "Memory used (GiB)", GIB),
    ("power_w", "Power (W)", 1.0),
    ("temperature_c", "Temperature (°C)", 1.0),
)
HOST_PLOTS = (
    (("cpu_percent", "CPU"),),
    (("ram_used_bytes", "RAM used"), ("process_rss_bytes", "kernel RSS")),
)
HOST_TITLES = ("CPU (%)", "RAM (GiB)")
# Per engine, one subplot each: ((series key from EngineWatcher.series, trace name, scale divisor), ...)
ENGINE_PLOTS = (
    (("requests_running", "running", 1.0), ("requests_waiting", "waiting", 1.0)),
    (("kv_cache_usage", "KV cache used", 0.01),),  # a fraction, shown in percent
    (("generation_tokens_per_s", "generated tokens/s", 1.0),),
    (("ttft_p50_s", "TTFT p50", 1e-3), ("itl_p50_s", "ITL p50", 1e-3)),  # seconds, shown in ms
)
ENGINE_TITLES = ("Requests", "KV cache used (%)", "Generation (tokens/s)", "Latency p50 (ms)")
ENGINE_PREFIX = "engine:"
DCGM_PREFIX = "dcgm:"
_EVENT_COLOURS = {
    "load_started": "#1f77b4", "load_finished": "#2ca02c", "generate_started": "#9467bd",
    "generate_finished": "#8c564b", "unload": "#ff7f0e", "error": "#d62728",
    "engine_started": "#17becf", "engine_ready": "#2ca02c", "engine_stopped": "#ff7f0e",
}


@dataclass(frozen=True)
class Trace:
    """One line of a plot: float32 ``x`` (seconds relative to ``t_end``) and float32 ``y``."""

    name: str
    x: np.ndarray
    y: np.ndarray


def _event_x(event: Any, t_end: float, x_range: tuple[float, float]) -> float:
    """An event's x: seconds before the newest sample; one after it (it happened since) is drawn at
    the axis's end, to the sampling interval's precision, instead of off the plot."""
    return min(float(np.float32(event.time_s - t_end)), x_range[1])


def window_label(seconds: float) -> str:
    """``600`` -> ``"10 min"``, ``90`` -> ``"90 s"``, ``7200`` -> ``"2 hours"``: the Window menu's words.

    Example:
        >>> window_label(600), window_label(45), window_label(3600)
        ('10 min', '45 s', '1 hour')
    """
    s = float(seconds)
    if s >= 3600 and s % 3600 == 0:
        hours = int(s // 3600)
        return f"{hours} hour" + ("s" if hours > 1 else "")
    if s >= 60 and s % 60 == 0:
        return f"{int(s // 60)} min"
    return f"{s:g} s"


def window_options(window_s: float) -> list[tuple[str, float]]:
    """The Window menu: the usual windows, plus ``window_s`` where it is not one of them, in order."""
    options = [(label, float(sec)) for label, sec in WINDOWS]
    if all(sec != float(window_s) for _, sec in options):
        options.append((window_label(window_s), float(window_s)))
    return sorted(options, key=lambda o: o[1])


def _downsample(times: np.ndarray, values: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(times)
    if n <= max_points:
        return times, values
    stride = math.ceil(n / max_points)
    # Keep the newest sample: step back from the end.
    idx = np.arange(n - 1, -1, -stride)[::-1]
    return times[idx], values[idx]


def align(series: Series, plots: Sequence[Plot], t_end: float) -> list[list[Trace]]:
    """The traces of ``plots`` from one ``(times, columns)`` series, whoever measured it (the
    sampler, an engine watcher, a DCGM watcher): x relative to ``t_end``, at most
    :data:`MAX_POINTS` points, values divided by their scale; a missing column is all NaN."""
    times, cols = series
    missing = np.full(len(times), np.nan, dtype=np.float32)
    out = []
    for plot in plots:
        traces = []
        for key, scale, name in plot:
            t, v = _downsample(times, cols.get(key, missing), MAX_POINTS)
            y = v / np.float32(scale) if scale != 1.0 else v
            traces.append(Trace(name, (t - t_end).astype(np.float32), y.astype(np.float32)))
        out.append(traces)
    return out


class TelemetryPanel(Panel):
    """Live GPU, CPU and RAM plots from the process's one sampler, with event marks.

    Args:
        sampler: default :func:`workbench.telemetry.get_sampler` (started when the
            panel is shown live, or :meth:`figure` or :meth:`static_html` first runs).
        window_s: seconds of history shown.
        event_log: default the process-wide log.
        clock: monotonic seconds for the redraw throttle (default ``time.monotonic``);
            tests pass a fake clock and call :meth:`tick` instead of sleeping.
        watchers: engines to plot (:class:`workbench.telemetry.EngineWatcher`, driven by their
            owner). Default: a watcher for each running vLLM endpoint in the registry, started
            when the panel is shown and stopped when it closes (``transformers serve`` has no
            ``/metrics``). ``[]`` plots no engine.
        dcgm_urls: DCGM exporter ``/metrics`` URLs (``"http://node-a:9400/metrics"``), or
            :class:`workbench.telemetry.DcgmWatcher` objects (driven by their owner); one figure
            each, a line per ``host/gpu N`` it reports. Default: the ``dcgm_urls`` setting.

    Example:
        >>> panel = TelemetryPanel(window_s=120)
        >>> panel.figure().data[0].name              # doctest: +SKIP
        'CPU'
        >>> panel.pause(); panel.resume()
    """

    title = "Telemetry"

    def __init__(self, sampler: Sampler | None = None, window_s: float = 300, event_log: EventLog | None = None,
                 clock: Callable[[], float] | None = None, watchers: Sequence[EngineWatcher] | None = None,
                 dcgm_urls: Sequence[str | DcgmWatcher] | None = None) -> None:
        super().__init__()
        from ..telemetry import get_event_log, get_sampler

        self.sampler = sampler if sampler is not None else get_sampler(start=False)
        self.event_log = event_log if event_log is not None else get_event_log()
        self.window_s = float(window_s)
        self.paused = False
        self.redraws = 0
        self.max_redraw_s = 0.0
        self._throttle = Throttle(REDRAW_INTERVAL_S, clock)
        self._draw_lock = threading.RLock()
        self._unsubscribers: list[Any] = []
        self._slots: dict[str, Any] = {}  # "host" or a GPU name -> FigureSlot (its FigureWidget)
        self.resends = 0  # whole-figure sends after the first build (tab shown, window changed, traces changed)
        self._engines: list[EngineWatcher] | None = None if watchers is None else list(watchers)
        self._dcgm: list[DcgmWatcher] = []
        self._owned: list[Any] = []  # watchers this panel made: it starts and stops them
        if dcgm_urls is None:
            from ..config import get_settings

            dcgm_urls = get_settings().dcgm_urls
        for item in dcgm_urls:
            if isinstance(item, str):
                from ..telemetry.watch import DcgmWatcher

                item = DcgmWatcher(item)
                self._owned.append(item)
            self._dcgm.append(item)

    # --- data ------------------------------------------------------------------------------

    def _ensure_sampled(self) -> None:
        self.sampler.start()
        if self.sampler.latest() is None:
            self.sampler.sample_now()

    def devices(self) -> list[str]:
        """GPU names with telemetry (empty without NVML: then only CPU/RAM plots)."""
        return list(self.sampler.gpu_devices)

    def engine_watchers(self) -> list[EngineWatcher]:
        """The engines plotted (found in the endpoint registry on first use unless passed in)."""
        if self._engines is None:
            from functools import partial

            from ..serve.process import verify_engine
            from ..serve.registry import EndpointRegistry
            from ..telemetry.watch import EngineWatcher

            # Each scrape first proves the port still the engine's (its key goes with the scrape).
            self._engines = [EngineWatcher(st.endpoint, verify=partial(verify_engine, st.endpoint))
                             for st in EndpointRegistry().statuses()
                             if st.state == "running" and st.endpoint.engine == "vllm"]
            self._owned.extend(self._engines)
        return self._engines

    def watched_keys(self) -> list[str]:
        """Plot-group keys of the engines (``"engine:NAME"``) and DCGM exporters (``"dcgm:URL"``)."""
        return ([ENGINE_PREFIX + w.name for w in self.engine_watchers()]
                + [DCGM_PREFIX + w.url for w in self._dcgm])

    def _start_watchers(self, live: bool) -> None:
        """Start the watchers this panel owns (``live``), or scrape each empty one once now (a report)."""
        self.engine_watchers()
        for w in self._owned:
            if live:
                w.start()
            elif not w.samples():
                w.scrape_once()

    def _watched_end(self) -> float | None:
        ends = [w.samples()[-1].time_s for w in [*self.engine_watchers(), *self._dcgm] if w.samples()]
        return max(ends, default=None)

    def traces(self, now_s: float | None = None) -> tuple[float, dict[str, list[list[Trace]]]]:
        """The data of every plot: ``(t_end, {"host": [[Trace...] per subplot], "cuda:0": ...})``.

        ``x`` is float32 seconds relative to ``t_end`` (the newest sample), so 0 is
        "now" and -60 a minute ago.
        """
        from ..telemetry.series import devices_of, series_key

        since = (now_s or time.time()) - self.window_s
        sampled = self.sampler.columns(since)
        times = sampled[0]
        t_end = float(times[-1]) if len(times) else (now_s or time.time())
        # One timeline for every group: the newest reading of the sampler or any watcher is 0.
        watched_end = self._watched_end()
        if watched_end is not None and (not len(times) or watched_end > t_end):
            t_end = watched_end
        host = [[(key, GIB if key.endswith("_bytes") else 1.0, label) for key, label in plot] for plot in HOST_PLOTS]
        out = {"host": align(sampled, host, t_end)}
        for dev in self.devices():
            out[dev] = align(sampled, [[(series_key(metric, dev), scale, dev)] for metric, _, scale in GPU_PLOTS],
                             t_end)
        engine = [[(key, scale, name) for key, name, scale in plot] for plot in ENGINE_PLOTS]
        for w in self.engine_watchers():
            out[ENGINE_PREFIX + w.name] = align(w.series(), engine, t_end)
        for w in self._dcgm:
            series = w.series()
            gpus = devices_of(series[1])
            out[DCGM_PREFIX + w.url] = align(
                series, [[(series_key(metric, d), scale, d) for d in gpus] for metric, _, scale in GPU_PLOTS], t_end)
        return t_end, out

    def events(self, t_end: float | None = None) -> list[Any]:
        """The workbench events inside the window (newest :data:`MAX_EVENTS`)."""
        t_end = t_end or time.time()
        return self.event_log.events(since_s=t_end - self.window_s)[-MAX_EVENTS:]

    # --- figures ---------------------------------------------------------------------------

    @staticmethod
    def _layout(key: str) -> tuple[int, int, tuple[str, ...]]:
        if key == "host":
            return 1, 2, HOST_TITLES
        if key.startswith(ENGINE_PREFIX):
            return 2, 2, ENGINE_TITLES
        return 2, 2, tuple(title for _, title, _ in GPU_PLOTS)

    @staticmethod
    def _title(key: str) -> str:
        if key == "host":
            return "CPU and RAM"
        if key.startswith(ENGINE_PREFIX):
            return f"Engine {key.removeprefix(ENGINE_PREFIX)}"
        if key.startswith(DCGM_PREFIX):
            return f"GPUs from DCGM exporter {key.removeprefix(DCGM_PREFIX)}"
        return f"GPU {key}"

    def _empty_figure(self, key: str) -> Any:
        from plotly.subplots import make_subplots

        rows, cols, titles = self._layout(key)
        fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.08,
                            vertical_spacing=0.2 if rows > 1 else 0.1)
        legend = key not in self.devices()
        # The legend under the plots, left: at the top right it sat on the modebar.
        fig.update_layout(height=260 * rows + (40 if legend else 0), margin=dict(l=50, r=20, t=60, b=90 if legend else 50),
                          title=dict(text=esc(self._title(key)), x=0.01),
                          showlegend=legend, template="plotly_white",
                          legend=dict(orientation="h", x=0.0, xanchor="left", y=-0.12 * (2 / rows), yanchor="top"))
        fig.update_xaxes(title_text="seconds (0 = latest sample)", range=[-self.window_s, 0])
        for i, title in enumerate(titles):
            if title in PERCENT_TITLES:
                fig.update_yaxes(range=[0, 100], row=i // cols + 1, col=i % cols + 1)
        return fig

    def _marks(self, key: str, events: list[Any], t_end: float, fig: Any,
               x_range: tuple[float, float]) -> tuple[list[dict], list[dict]]:
        rows, cols, _ = self._layout(key)
        shapes: list[dict] = []
        for e in events:
            x = _event_x(e, t_end, x_range)
            colour = _EVENT_COLOURS.get(e.kind, "#7f7f7f")
            for i in range(1, rows * cols + 1):
                suffix = "" if i == 1 else str(i)
                shapes.append(dict(type="line", xref=f"x{suffix}", yref=f"y{suffix} domain", x0=x, x1=x, y0=0, y1=1,
                                   line=dict(color=colour, width=1, dash="dot")))
        return shapes, self._labels(events, t_end, fig, x_range)

    @staticmethod
    def _labels(events: list[Any], t_end: float, fig: Any, x_range: tuple[float, float]) -> list[dict]:
        """One label per group of events whose labels would overlap, in the first subplot.

        Each label is written down its event's line from the top of the subplot (above it, the labels
        sat on the subplot titles), on the line's right, or its left where the subplot ends first.
        Positions are worked out in pixels at :data:`MIN_FIGURE_WIDTH_PX`, from the figure's own
        margins, the first x axis's domain and ``x_range``; an event whose label box would touch the
        previous label joins that label ("load started +2"); every message shows on hover.
        """
        lo, hi = x_range
        margin = fig.layout.margin
        plot_px = MIN_FIGURE_WIDTH_PX - (margin.l or 0) - (margin.r or 0)
        d0, d1 = fig.layout.xaxis.domain or (0.0, 1.0)
        left_px, right_px = d0 * plot_px, d1 * plot_px
        span = (hi - lo) or 1.0
        groups: list[tuple[float, str, list[Any]]] = []  # (box's left edge in px, xanchor, events)
        for e in events:
            x = _event_x(e, t_end, x_range)
            if not lo <= x <= hi:
                continue  # off the axis: plotly does not draw it
            px = left_px + (x - lo) / span * (right_px - left_px)
            anchor = "left" if px + LABEL_THICKNESS_PX <= right_px else "right"
            box_left = px if anchor == "left" else px - LABEL_THICKNESS_PX
            if groups and box_left < groups[-1][0] + LABEL_THICKNESS_PX + LABEL_GAP_PX:
                groups[-1][2].append(e)
            else:
                groups.append((box_left, anchor, [e]))
        labels = []
        for _, anchor, group in groups:
            first = group[0]
            kinds = list(dict.fromkeys(e.kind.replace("_", " ") for e in group))
            text = kinds[0] if len(group) == 1 else f"{kinds[0]} +{len(group) - 1}"
            if len(text) > LABEL_MAX_CHARS:
                text = text[:LABEL_MAX_CHARS - 1] + "…"
            labels.append(dict(x=_event_x(first, t_end, x_range), xref="x", yref="y domain", y=1,
                               yanchor="top", yshift=-LABEL_GAP_PX, xanchor=anchor, showarrow=False,
                               text=esc(text), textangle=-90, width=LABEL_LENGTH_PX, height=LABEL_THICKNESS_PX,
                               borderpad=0, borderwidth=0, align="left",
                               font=dict(size=9, color=_EVENT_COLOURS.get(first.kind, "#7f7f7f")),
                               hovertext=esc("; ".join(f"{e.kind}: {e.message}" for e in group))))
        return labels

    def _fill(self, fig: Any, key: str, plots: list[list[Trace]], events: list[Any], t_end: float) -> None:
        """Put data and marks into ``fig``; adds traces on first use, else updates them in place."""
        import plotly.graph_objects as go

        rows, cols, _ = self._layout(key)
        flat = [(i, t) for i, plot in enumerate(plots) for t in plot]
        if [d.name for d in fig.data] != [t.name for _, t in flat]:
            # A DCGM exporter can report another GPU: lay the traces out afresh.
            fig.data = ()
            for i, trace in flat:
                fig.add_trace(go.Scatter(x=trace.x, y=trace.y, name=trace.name, mode="lines",
                                         line=dict(width=1.5), hovertemplate="%{y:.3g}<extra>%{fullData.name}</extra>"),
                              row=i // cols + 1, col=i % cols + 1)
        else:
            for data, (_, trace) in zip(fig.data, flat):
                data.x, data.y = trace.x, trace.y
        # Show the window, or less while the history is shorter than it (a fresh kernel, a report).
        oldest = min((float(t.x[0]) for _, t in flat if len(t.x) > 1), default=-self.window_s)
        x_range = (max(-self.window_s, oldest), 0.0)
        shapes, annotations = self._marks(key, events, t_end, fig, x_range)
        # Keep the subplot titles (they are annotations too) ahead of the event labels.
        titles = [a for a in fig.layout.annotations if getattr(a, "hovertext", None) is None]
        fig.layout.shapes = shapes
        fig.layout.annotations = [*titles, *annotations]
        fig.update_xaxes(range=list(x_range))

    def figure(self, key: str = "host") -> Any:
        """A static ``go.Figure`` of one plot group (``"host"`` or a GPU name), for reports."""
        self._ensure_sampled()
        t_end, data = self.traces()
        return self._complete_figure(key, data[key], self.events(t_end), t_end)

    def _complete_figure(self, key: str, plots: list[list[Trace]], events: list[Any], t_end: float) -> Any:
        fig = self._empty_figure(key)
        self._fill(fig, key, plots, events, t_end)
        return fig

    @staticmethod
    def _same_traces(fig: Any, plots: list[list[Trace]]) -> bool:
        return [d.name for d in fig.data] == [t.name for plot in plots for t in plot]

    # --- live ------------------------------------------------------------------------------

    def redraw(self, force: bool = False) -> bool:
        """Redraw the live figures (one ``batch_update`` each); skipped when paused or too soon.

        Returns:
            Whether it drew.
        """
        if not self._slots or (self.paused and not force):
            return False
        if not force and not self._throttle.ready():
            return False
        return self._draw(whole=False)

    def _draw(self, whole: bool) -> bool:
        """Update every figure in place, or (``whole``, or where the traces changed) send it whole again."""
        with self._draw_lock:
            if not self._slots:
                return False
            t0 = time.perf_counter()
            t_end, data = self.traces()
            events = self.events(t_end)
            for key, slot in list(self._slots.items()):
                if key not in data:
                    continue
                if whole or not self._same_traces(slot.figure, data[key]):
                    # A DCGM exporter reported another GPU, the window changed, the tab is shown.
                    slot.show(self._complete_figure(key, data[key], events, t_end))
                    self.resends += 1
                else:
                    with slot.figure.batch_update():
                        self._fill(slot.figure, key, data[key], events, t_end)
            self._status.value = self.status_html()
            self.redraws += 1
            self.max_redraw_s = max(self.max_redraw_s, time.perf_counter() - t0)
        return True

    def pause(self) -> None:
        """Freeze the plots (sampling goes on, so nothing is lost)."""
        self.paused = True
        if self._root is not None and not self._pause.value:
            self._pause.value = True

    def resume(self) -> None:
        """Unfreeze the plots and redraw now."""
        self.paused = False
        if self._root is not None and self._pause.value:
            self._pause.value = False
        self.redraw(force=True)

    def set_window(self, seconds: float) -> None:
        """Show the last ``seconds`` of history (the figures are sent whole, with the new window's data)."""
        self.window_s = float(seconds)
        if self._root is not None and self._window.value != self.window_s:
            self._window.options = window_options(self.window_s)
            self._window.value = self.window_s
        self._draw(whole=True)

    def on_show(self) -> None:
        """The tab or cell came into view: send every figure whole (a view made while hidden, a lost
        update, a reload all show the current data after it)."""
        self._draw(whole=True)

    def export_csv(self, path: str | os.PathLike[str] | None = None) -> str:
        """Write the history and events as CSV (see :func:`workbench.telemetry.to_csv`); returns the path."""
        from ..telemetry import to_csv

        path = path or f"telemetry-{time.strftime('%Y%m%d-%H%M%S')}.csv"
        to_csv(self.sampler, path, log=self.event_log)
        return os.fspath(path)

    def status_html(self) -> str:
        """The latest readings in one line per device."""
        s = self.sampler.latest()
        if s is None:
            return "<em>no sample yet</em>"
        lines = [f"<b>CPU</b> {esc(s.cpu_str)} &middot; <b>RAM</b> {esc(s.ram_used_str)} / {esc(s.ram_total_str)}"
                 f" &middot; <b>kernel RSS</b> {esc(s.process_rss_str)}"]
        for g in s.gpus:
            lines.append(f"<b>{esc(g.device)}</b> {esc(g.utilization_str)} &middot; {esc(g.memory_used_str)} / "
                         f"{esc(g.memory_total_str)} &middot; {esc(g.power_str)} &middot; {esc(g.temperature_str)}")
        lines += self._watched_status()
        for notice in self.sampler.notices:
            lines.append(f"<span style='color:#666'>{esc(notice)}</span>")
        return "<div style='font-size:13px;line-height:1.6'>" + "<br>".join(lines) + "</div>"

    def _watched_status(self) -> list[str]:
        lines = []
        for w in self.engine_watchers():
            m = w.samples()[-1] if w.samples() else None
            if m is not None:
                kv = "n/a" if m.kv_cache_usage is None else f"{100 * m.kv_cache_usage:.0f}%"
                lines.append(f"<b>{esc(w.name)}</b> {m.requests_running or 0:g} running &middot; "
                             f"{m.requests_waiting or 0:g} waiting &middot; KV cache {esc(kv)}")
        for w in [*self.engine_watchers(), *self._dcgm]:
            if w.last_error is not None:
                lines.append(f"<span style='color:#666'>{esc(w.name)}: {esc(str(w.last_error))}</span>")
        return lines

    def tick(self, _item: Any = None) -> bool:
        """What each new sample or event does: redraw, unless paused or the last redraw is
        under :data:`REDRAW_INTERVAL_S` old. Runs on the subscriber threads; returns whether it drew."""
        return self.redraw()

    def _on_sample(self, sample: Any) -> None:
        self.tick(sample)

    def _on_event(self, event: Any) -> None:
        self.tick(event)

    def _build(self) -> Any:
        import ipywidgets as widgets

        self._ensure_sampled()
        self._status = widgets.HTML()
        self._pause = widgets.ToggleButton(value=self.paused, description="Pause", icon="pause",
                                           tooltip="freeze the plots; sampling goes on",
                                           layout=widgets.Layout(width="110px"))
        self._window = widgets.Dropdown(options=window_options(self.window_s), value=self.window_s,
                                        description="Window", layout=widgets.Layout(width="200px"))
        export = widgets.Button(description="Export CSV", icon="file", layout=widgets.Layout(width="120px"))

        def on_pause(change: dict[str, Any]) -> None:
            self._pause.description = "Resume" if change["new"] else "Pause"
            self._pause.icon = "play" if change["new"] else "pause"
            if change["new"]:
                self.pause()
            else:
                self.resume()

        self._pause.observe(self.guarded(on_pause), names="value")
        self._window.observe(self.guarded(lambda ch: ch["new"] != self.window_s and self.set_window(ch["new"])),
                             names="value")
        export.on_click(self.guarded(lambda _: self.show_message(f"Wrote {self.export_csv()}", "ok")))
        self._export_button = export

        self._start_watchers(live=True)
        slots = self._build_slots()
        # Publish the figures (and subscribe) only once their traces exist, so a redraw on the
        # sampler's thread never races the first fill.
        self._slots = slots
        self._unsubscribers = [self.sampler.subscribe(self._on_sample), self.event_log.subscribe(self._on_event)]
        children = [widgets.HBox([self._pause, self._window, export], layout=widgets.Layout(flex_flow="row wrap")),
                    self._status]
        # GPUs first: they are what people come for; the host plot last.
        children += [slots[k].box for k in [*self.devices(), *self.watched_keys(), "host"]]
        return widgets.VBox(children, layout=widgets.Layout(width="100%", min_width="0"))

    def _control_widgets(self) -> dict[str, Any]:
        """``pause`` (a toggle), ``window`` (seconds shown) and ``export`` (CSV)."""
        return {"pause": self._pause, "window": self._window, "export": self._export_button}

    def _output_widgets(self) -> dict[str, Any]:
        """``status`` (the line above the plots)."""
        return {"status": self._status}

    @property
    def figures(self) -> Mapping[str, Any]:
        """The live ``FigureWidget`` of each key (``"host"``, device names, watched engines), built on
        first access; read-only. A figure sent whole is a new widget: read this again after
        :meth:`on_show`, :meth:`set_window` or a change in the traces."""
        _ = self.widget
        return types.MappingProxyType({key: slot.figure for key, slot in self._slots.items()})

    def _build_slots(self) -> dict[str, Any]:
        from .figures import FigureSlot

        with self._draw_lock:
            self._status.value = self.status_html()
            t_end, data = self.traces()
            events = self.events(t_end)
            return {key: FigureSlot(self._complete_figure(key, data.get(key, []), events, t_end), lock=self._draw_lock,
                                    min_width_px=MIN_FIGURE_WIDTH_PX)
                    for key in ["host", *self.devices(), *self.watched_keys()]}

    def close(self) -> None:
        """Unsubscribe from the sampler and the event log, and close the widgets."""
        for unsubscribe in self._unsubscribers:
            unsubscribe()
        self._unsubscribers = []
        with self._draw_lock:
            slots, self._slots = self._slots, {}
        for slot in slots.values():
            slot.close()
        for w in self._owned:
            w.stop()
        super().close()

    # --- static ----------------------------------------------------------------------------

    def static_html(self, plots: bool = True) -> str:
        """Figures of the window (plotly.js inline once per page), the latest readings and the events."""
        self._ensure_sampled()
        self._start_watchers(live=False)
        t_end = time.time()
        parts = [self.status_html()]
        if plots:
            for key in [*self.devices(), *self.watched_keys(), "host"]:
                parts.append(figure_html(self.figure(key)))
        events = self.events(t_end)
        if events:
            start = events[0].time_s
            rows = [[_dt.datetime.fromtimestamp(e.time_s).strftime("%H:%M:%S"), f"+{e.time_s - start:.1f} s",
                     e.kind, e.model, e.message] for e in events]
            parts.append(html_table(["Time", "Since first", "Event", "Model", "Message"], rows,
                                    caption=f"Workbench events (last {self.window_s:.0f} s)"))
        parts.append(f"<p style='color:#666;font-size:12px'>{self.sampler.rows} samples held, every "
                     f"{self.sampler.interval_s:g} s; buffers {esc(format_bytes(self.sampler.buffer_nbytes))}.</p>")
        return "".join(parts)
