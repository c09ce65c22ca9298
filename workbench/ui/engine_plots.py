"""A static Plotly figure of an engine's metrics over time (from :class:`workbench.serve.watch.EngineWatcher`).

Example:
    >>> from workbench.serve import EngineWatcher
    >>> w = EngineWatcher(ep).start()                  # doctest: +SKIP
    >>> engine_metrics_figure(w.series(), title=ep.name)  # doctest: +SKIP
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

#: (series key, subplot title, trace name); KV-cache usage is shown in percent.
PANELS: tuple[tuple[tuple[str, str], ...], ...] = (
    (("requests_running", "running"), ("requests_waiting", "waiting")),
    (("kv_cache_usage", "KV cache used (%)"),),
    (("generation_tokens_per_s", "generated tokens/s"),),
)
TITLES = ("Requests", "KV cache", "Generation throughput")


def engine_metrics_figure(series: dict[str, list[Any]], title: str = "Engine") -> Any:
    """Requests running/waiting, KV-cache usage and generation throughput, one subplot each."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=len(PANELS), cols=1, shared_xaxes=True, subplot_titles=TITLES, vertical_spacing=0.08)
    times = [datetime.fromtimestamp(t) for t in series.get("time_s", [])]
    for row, traces in enumerate(PANELS, 1):
        for key, name in traces:
            values = series.get(key) or [None] * len(times)
            if key == "kv_cache_usage":
                values = [None if v is None else 100 * v for v in values]
            fig.add_trace(go.Scatter(x=times, y=values, name=name, mode="lines"), row=row, col=1)
    fig.update_layout(title=title, height=520, margin=dict(l=50, r=20, t=60, b=30), showlegend=True)
    return fig
