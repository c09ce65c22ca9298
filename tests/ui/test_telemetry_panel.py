"""The Telemetry panel: bounded float32 data, throttled batched redraws, events as marks, pause/resume."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from fakes.clock import FakeClock
from workbench.telemetry import GpuSample, HostSample, Sampler
from workbench.ui import TelemetryPanel
from workbench.ui.figures import synced_state
from workbench.ui.telemetry_panel import MAX_EVENTS, MAX_POINTS, REDRAW_INTERVAL_S, align


class FakeHost:
    """A scriptable psutil stand-in: instant samples."""

    name = "fake-host"
    notice = None

    def __init__(self) -> None:
        self.n = 0

    def sample(self) -> HostSample:
        self.n += 1
        return HostSample(cpu_percent=float(self.n % 100), ram_used_bytes=2**30 + self.n, ram_total_bytes=2**34,
                          process_rss_bytes=2**29)


class FakeGpu:
    name = "fake-gpu"
    notice = None

    def sample(self) -> tuple[GpuSample, ...]:
        return (GpuSample("cuda:0", uuid="GPU-fake", utilization_percent=50.0, memory_used_bytes=3 * 2**30,
                          memory_total_bytes=80 * 2**30, power_w=250.0, power_limit_w=700.0, temperature_c=60.0),)


def test_traces_are_bounded_float32_and_relative(event_log) -> None:
    s = Sampler(interval_s=1, history_s=10_000, sources=[FakeHost()])
    for _ in range(2000):
        s.sample_now()
    panel = TelemetryPanel(sampler=s, window_s=3600, event_log=event_log)
    t_end, data = panel.traces()
    for plot in data["host"]:
        for trace in plot:
            assert trace.x.dtype == np.float32
            assert trace.y.dtype == np.float32
            assert len(trace.x) <= MAX_POINTS
            assert trace.x[-1] == 0.0
            assert trace.x[0] < 0
    s.close()



class HandSampler(Sampler):
    """A sampler ticked by hand: no thread, and subscribers called in the caller's thread.

    The real sampler's threaded delivery is tested in tests/telemetry; here it would
    only make the redraw count depend on thread scheduling.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.callbacks: list = []

    def start(self) -> HandSampler:
        return self

    def subscribe(self, callback):
        self.callbacks.append(callback)
        return lambda: self.callbacks.remove(callback) if callback in self.callbacks else None

    def sample_now(self):
        sample = super().sample_now()
        for callback in list(self.callbacks):
            callback(sample)
        return sample


def wait_until(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_live_redraws_are_throttled_and_batched(event_log) -> None:
    clock = FakeClock()
    s = HandSampler(interval_s=0.05, history_s=60, sources=[FakeHost()])
    panel = TelemetryPanel(sampler=s, window_s=60, event_log=event_log, clock=clock)
    _ = panel.widget
    fig = panel.figures["host"]
    messages = []
    for name in ("_send_update_msg", "_send_relayout_msg", "_send_restyle_msg"):
        original = getattr(fig, name)

        def counting(*args, _original=original, _name=name, **kwargs):
            messages.append(_name)
            return _original(*args, **kwargs)

        setattr(fig, name, counting)
    # 1.6 s of 50 ms samples, at most one redraw per 250 ms: at 0, 0.25, ... 1.5 s.
    assert REDRAW_INTERVAL_S == 0.25
    drawn = []
    for i in range(32):
        clock.now = i / 20
        before = panel.redraws
        s.sample_now()  # the panel's subscription ticks it
        drawn.append(panel.redraws - before)
    assert [i for i, d in enumerate(drawn) if d] == [0, 5, 10, 15, 20, 25, 30]
    assert max(drawn) == 1
    # One batch_update per redraw: one message to the front end carrying every trace and mark.
    assert messages == ["_send_update_msg"] * 7
    assert len(fig.data[0].y) > 5
    assert fig.data[0].y.dtype == np.float32
    panel.close()


def test_samples_and_events_reach_the_panel_through_real_subscriptions(event_log) -> None:
    """The real sampler's and event log's delivery threads: waited on, not slept for."""
    clock = FakeClock()
    s = Sampler(interval_s=60, history_s=600, sources=[FakeHost()])
    panel = TelemetryPanel(sampler=s, window_s=60, event_log=event_log, clock=clock)
    _ = panel.widget  # starts the sampler: one sample now, the next in a minute
    for step in range(1, 4):
        before = panel.redraws
        clock.now = step  # past the throttle: the delivered sample must redraw
        s.sample_now()
        wait_until(lambda before=before: panel.redraws > before)
    clock.now = 10
    before = panel.redraws
    event_log.post("load_finished", "loaded tiny", model="tiny")
    wait_until(lambda: panel.redraws > before)
    panel.close()
    s.close()


def test_events_are_marked_and_escaped(sampler, event_log) -> None:
    panel = TelemetryPanel(sampler=sampler, window_s=60, event_log=event_log)
    _ = panel.widget
    event_log.post("load_finished", "loaded <tiny>", model="tiny")
    assert panel.redraw(force=True)
    fig = panel.figures["host"]
    assert len(fig.layout.shapes) == 2  # one line per subplot
    labels = [a for a in fig.layout.annotations if a.hovertext]
    assert labels[0].text == "load finished"
    assert "&lt;tiny&gt;" in labels[0].hovertext
    static = panel.static_html(plots=False)
    assert "load_finished" in static
    assert "loaded &lt;tiny&gt;" in static
    panel.close()


def test_pause_and_resume(event_log) -> None:
    clock = FakeClock()
    s = HandSampler(interval_s=1, history_s=60, sources=[FakeHost()])
    panel = TelemetryPanel(sampler=s, window_s=60, event_log=event_log, clock=clock)
    _ = panel.widget
    panel.controls.pause.value = True
    assert panel.paused
    assert panel.controls.pause.description == "Resume"
    frozen = panel.redraws
    for step in range(1, 6):
        clock.now = step
        s.sample_now()  # ticks the panel: nothing drawn while paused
    assert panel.redraws == frozen
    assert panel.tick() is False
    panel.controls.pause.value = False
    assert not panel.paused
    assert panel.redraws == frozen + 1  # resuming redraws at once
    panel.close()
    s.close()


def test_a_gpu_gets_its_own_figure(event_log) -> None:
    s = Sampler(interval_s=0.05, history_s=60, sources=[FakeGpu(), FakeHost()])
    panel = TelemetryPanel(sampler=s, window_s=60, event_log=event_log)
    _ = panel.widget
    assert panel.devices() == ["cuda:0"]
    fig = panel.figures["cuda:0"]
    assert len(fig.data) == 4
    assert float(fig.data[2].y[-1]) == pytest.approx(250.0)
    assert "cuda:0" in panel.status_html()
    assert "250 / 700 W" in panel.status_html()
    panel.close()
    s.close()


def test_static_twin_has_a_plotly_figure_and_export(sampler, event_log, tmp_path) -> None:
    panel = TelemetryPanel(sampler=sampler, window_s=60, event_log=event_log)
    event_log.post("unload", "unloaded tiny", model="tiny")
    html = panel.static().html
    assert "Plotly.newPlot" in html
    assert "unloaded tiny" in html
    assert not panel.built
    path = panel.export_csv(tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text().startswith("time_s,type,cpu_percent")
    assert path.endswith("t.csv")


def _points(widget_data: list[dict]) -> list[int]:
    """Points per trace in a FigureWidget's synced state: what a new view (or a reloaded page) draws."""
    return [len(d.get("y", ())) for d in widget_data]


def test_every_figure_is_sent_with_its_data_and_again_whole_when_shown(event_log) -> None:
    clock = FakeClock()
    s = HandSampler(interval_s=1, history_s=600, sources=[FakeHost()])
    for _ in range(5):
        s.sample_now()
    panel = TelemetryPanel(sampler=s, window_s=600, event_log=event_log, clock=clock)
    _ = panel.widget
    fig = panel.figures["host"]
    # Constructed complete: the synced state itself has 3 traces with their points (a view made
    # later, or after a reload, draws them), not an empty figure filled by later diff messages.
    assert _points(synced_state(fig)[0]) == [len(d.y) for d in fig.data]
    assert len(fig.data) == 3
    assert min(_points(synced_state(fig)[0])) >= 5
    for _ in range(3):
        s.sample_now()
    clock.now = 1
    panel.tick()
    assert panel.figures["host"] is fig  # a tick restyles in place
    panel.on_show()  # the tab is shown: the whole figure again, with the newest data in its first message
    shown = panel.figures["host"]
    assert shown is not fig
    assert panel.resends == 1
    assert _points(synced_state(shown)[0]) == [len(d.y) for d in fig.data]
    assert min(_points(synced_state(shown)[0])) >= 8
    # A Window change sends it whole too, with the new range.
    panel.controls.window.value = 60.0
    assert panel.window_s == 60
    assert panel.resends == 2
    assert synced_state(panel.figures["host"])[1]["xaxis"]["range"][0] >= -60
    panel.close()
    s.close()


def test_window_menu_shows_the_panels_window(sampler, event_log) -> None:
    from workbench.ui.telemetry_panel import window_label, window_options

    panel = TelemetryPanel(sampler=sampler, window_s=600, event_log=event_log)
    menu = panel.controls.window
    assert menu.value == 600
    assert menu.label == "10 min"
    assert window_label(7200) == "2 hours"
    assert window_label(90) == "90 s"
    odd = dict(window_options(120))
    assert odd["2 min"] == 120
    assert list(odd.values()) == sorted(odd.values())
    panel.close()


def test_percentages_on_0_100_legend_below_and_close_events_share_a_label(sampler, event_log) -> None:
    panel = TelemetryPanel(sampler=sampler, window_s=300, event_log=event_log)
    event_log.post("load_started", "loading tiny", model="tiny")
    event_log.post("load_finished", "loaded tiny", model="tiny")  # same moment: one label for both
    fig = panel.figure("host")
    assert tuple(fig.layout.yaxis.range) == (0, 100)  # CPU (%)
    assert fig.layout.yaxis2.range is None  # RAM (GiB) autoscales
    assert fig.layout.legend.y < 0
    assert fig.layout.legend.yanchor == "top"  # under the plots, off the modebar
    labels = [a for a in fig.layout.annotations if a.hovertext]
    assert len(labels) == 1
    assert labels[0].text == "load started +1"
    assert "loading tiny" in labels[0].hovertext
    assert "loaded tiny" in labels[0].hovertext
    panel.close()


def _boxes_px(fig, width_px: float) -> tuple[list[tuple], list[tuple], tuple]:
    """Plotly's geometry for ``fig`` drawn ``width_px`` wide: ``(label boxes, subplot title boxes, first
    subplot)`` as ``(left, top, right, bottom)`` pixels in the plot area (y down), from the layout's own
    fields: margins, axis domains and range, each annotation's x/y, refs, anchors, shift, angle, and its
    explicit ``width``/``height`` (plotly clips text to them) plus ``borderpad`` and ``borderwidth``."""
    lay = fig.layout
    plot_w = width_px - lay.margin.l - lay.margin.r
    plot_h = lay.height - lay.margin.t - lay.margin.b
    (xd0, xd1), (yd0, yd1), (lo, hi) = lay.xaxis.domain, lay.yaxis.domain, lay.xaxis.range
    subplot = (xd0 * plot_w, (1 - yd1) * plot_h, xd1 * plot_w, (1 - yd0) * plot_h)
    labels, titles = [], []
    for a in lay.annotations:
        if not a.hovertext:
            # A subplot title: paper coordinates, anchored at its bottom edge. Its text's width is not in the
            # layout: take the whole plot's width and a line of its font (conservative), all above y.
            assert (a.xref, a.yref, a.yanchor) == ("paper", "paper", "bottom")
            bottom = (1 - a.y) * plot_h - (a.yshift or 0)
            titles.append((0.0, bottom - 1.3 * (a.font.size or 16), plot_w, bottom))
            continue
        assert (a.xref, a.yref, a.textangle) == ("x", "y domain", -90), a
        pad = 2 * ((a.borderpad or 0) + (a.borderwidth or 0))
        across, along = a.height + pad, a.width + pad  # rotated a quarter turn: width runs down the line
        px = (xd0 + (a.x - lo) / (hi - lo) * (xd1 - xd0)) * plot_w + (a.xshift or 0)
        left = {"left": px, "right": px - across, "center": px - across / 2}[a.xanchor]
        y_px = (1 - (yd0 + a.y * (yd1 - yd0))) * plot_h - (a.yshift or 0)
        top = {"top": y_px, "bottom": y_px - along, "middle": y_px - along / 2}[a.yanchor]
        labels.append((left, top, left + across, top + along))
    return labels, titles, subplot


def _overlap(a: tuple, b: tuple) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_a_burst_of_event_labels_never_overlaps_each_other_or_a_subplot_title(event_log) -> None:
    """A burst (25 events a second apart, ending now), a steady run (every 10 s) and an event at each end:
    at the narrowest the figure is drawn and wider, no two label boxes overlap, none touches a subplot
    title, each lies inside the first subplot, and every event is in some label's hover text."""
    from workbench.telemetry.events import Event
    from workbench.ui.telemetry_panel import MIN_FIGURE_WIDTH_PX

    s = HandSampler(interval_s=1, history_s=600, sources=[FakeHost()])
    s.sample_now()  # one sample: the x axis shows the whole window, [-300, 0]
    panel = TelemetryPanel(sampler=s, window_s=300, event_log=event_log)
    t_end, _ = panel.traces()
    offsets = [-299.0, *(-290.0 + 10 * i for i in range(14)), *(-24.0 + i for i in range(25))]
    assert len(offsets) == MAX_EVENTS  # all drawn (the newest MAX_EVENTS are)
    kinds = ["load_started", "load_finished", "generate_started", "generate_finished", "engine_ready"]
    for i, dx in enumerate(offsets):
        event_log.append(Event(t_end + dx, kinds[i % len(kinds)], f"event {i}", "tiny", {}))
    try:
        fig = panel.figure("host")
        labelled = [a for a in fig.layout.annotations if a.hovertext]
        assert sum(len(a.hovertext.split("; ")) for a in labelled) == len(offsets)
        assert 8 <= len(labelled) < len(offsets)  # the steady run keeps labels; the burst shares them
        for width_px in (MIN_FIGURE_WIDTH_PX, 900, 1600):
            labels, titles, subplot = _boxes_px(fig, width_px)
            clashes = [(i, j) for i in range(len(labels)) for j in range(i + 1, len(labels))
                       if _overlap(labels[i], labels[j])]
            assert clashes == [], (width_px, [(labelled[i].text, labelled[j].text) for i, j in clashes])
            assert [b for b in labels for t in titles if _overlap(b, t)] == [], width_px
            assert [b for b in labels if b[0] < subplot[0] or b[2] > subplot[2] + 1e-6] == [], (width_px, subplot)
            assert [b for b in labels if b[1] < subplot[1] or b[3] > subplot[3]] == [], (width_px, subplot)
    finally:
        panel.close()
        s.close()


def test_the_panel_installs_no_logging_filter_and_shows_notices_from_the_sampler(event_log) -> None:
    """Notices are data: the status line shows them; the process's logging is left as it was."""

    class NoGpu:
        name = "no-gpu"
        notice = "NVIDIA driver not found: showing CPU and RAM only"

        def sample(self) -> tuple[GpuSample, ...]:
            return ()

    loggers = [logging.getLogger(n) for n in ("", "workbench", "workbench.telemetry", "workbench.telemetry.sampler")]
    before = [list(lg.filters) for lg in loggers]
    s = Sampler(interval_s=1, history_s=60, sources=[FakeHost(), NoGpu()])
    s.sample_now()
    panel = TelemetryPanel(sampler=s, window_s=60, event_log=event_log)
    assert "NVIDIA driver not found" in panel.status_html()
    assert [list(lg.filters) for lg in loggers] == before


def test_align_takes_one_series_shape_whoever_measured_it() -> None:
    """The sampler's columns and a watcher's series are both ``(times, columns)``: one function aligns them."""
    times = np.array([100.0, 101.0, 102.0])
    cols = {"a": np.array([1.0, 2.0, np.nan], dtype=np.float32), "b": np.array([2.0, 4.0, 6.0], dtype=np.float32)}
    [[a, b], [gone]] = align((times, cols), [[("a", 1.0, "A"), ("b", 2.0, "B")], [("missing", 1.0, "M")]], t_end=103.0)
    assert (a.name, a.x.tolist(), a.y.tolist()[:2]) == ("A", [-3.0, -2.0, -1.0], [1.0, 2.0])
    assert np.isnan(a.y[2])
    assert (b.x.dtype, b.y.dtype, b.y.tolist()) == (np.float32, np.float32, [1.0, 2.0, 3.0])
    assert (gone.name, len(gone.x), bool(np.isnan(gone.y).all())) == ("M", 3, True)
