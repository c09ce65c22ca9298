"""The Serve tab: start an engine for a store model, see its status, log tail and URL, stop it.

A thin view over :mod:`workbench.serve`: starting runs on the panel's worker thread
(an engine takes seconds to minutes to answer), errors land in the banner, and the
panel stays usable. Engines started here belong to the kernel: they stop when it
exits, unless started with ``detach``.

Example:
    >>> from workbench.ui.serve_panel import ServePanel
    >>> panel = ServePanel()                                                     # doctest: +SKIP
    >>> panel.start_engine("SmolLM2-135M-Instruct", engine="transformers").base_url  # doctest: +SKIP
    'http://127.0.0.1:41873/v1'
"""

from __future__ import annotations

from typing import Any

from ..serve.engines import ENGINES, SERVE_QUANTS
from ..store import ModelStore
from .base import Panel
from .display import esc

LOG_TAIL_LINES = 20


def endpoints_table_html(statuses: list[Any]) -> str:
    """An HTML table of endpoints (name, engine, state, URL, PID, devices, model); text escaped."""
    if not statuses:
        return "<p>No endpoints: start one here, or add one with <code>workbench endpoints add NAME URL</code>.</p>"
    head = "".join(f"<th>{h}</th>" for h in ("name", "engine", "state", "base URL", "PID", "devices", "model"))
    rows = []
    for s in statuses:
        ep = s.endpoint
        state = s.state + (" (orphaned)" if s.orphaned else "")
        cells = (ep.name, ep.engine, state, ep.base_url, ep.pid or "-", ", ".join(ep.devices) or "-",
                 ep.model or "-")
        rows.append("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in cells) + "</tr>")
    return (f"<div class='workbench-table-scroll' style='max-width:100%;overflow-x:auto'><table class='workbench-table'>"
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")


class ServePanel(Panel):
    """Pick a model, engine and devices; start, watch and stop OpenAI-compatible engines.

    Args:
        store: the model store offered (default ``ModelStore()``).
        registry: the endpoint registry (default :class:`workbench.serve.EndpointRegistry`).
    """

    title = "Serve"

    def __init__(self, store: ModelStore | None = None, registry: Any = None) -> None:
        super().__init__()
        self.model_store = store if store is not None else ModelStore()
        self._registry = registry
        self._w: dict[str, Any] = {}

    @property
    def registry(self) -> Any:
        if self._registry is None:
            from ..serve import EndpointRegistry

            self._registry = EndpointRegistry()
        return self._registry

    # --- actions (usable without widgets) ---------------------------------------------------

    def statuses(self) -> list[Any]:
        """Every endpoint with its state now."""
        return self.registry.statuses()

    def start_engine(self, model: str, *, engine: str = "auto", devices: str = "cpu", quant: str = "none",
                     detach: bool = False, wait: bool = True, **kwargs: Any) -> Any:
        """Serve ``model`` (see :func:`workbench.serve.serve`); returns the endpoint, or a future when not ``wait``.

        Raises:
            The errors of :func:`workbench.serve.serve` (also shown in the banner).
        """
        from ..serve import plan_serve, start

        dev = [d.strip() for d in str(devices).split(",") if d.strip()]

        def job() -> Any:
            self.show_message(f"starting {engine} for {model} on {', '.join(dev)}...", "info")
            plan = plan_serve(model, engine=engine, devices=dev, quant=quant, **kwargs)
            ep = start(plan, detach=detach, registry=self.registry)
            self.show_message(f"{ep.name}: {ep.engine} serving on {ep.base_url} (ready in {ep.ready_s:.1f} s)", "ok")
            self.refresh()
            return ep

        return self._finish(self.submit(job), wait)

    def stop_endpoint(self, name: str) -> Any:
        """Stop ``name``'s engine (or forget a remote endpoint); returns the :class:`~workbench.serve.StopReport`."""
        from ..serve import stop

        report = stop(name, registry=self.registry)
        self.show_message(f"stopped {name}" if report.was_running else f"removed {name}", "ok")
        self.refresh()
        return report

    def log_tail(self, name: str, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of an engine's log (``""`` for remote endpoints)."""
        from ..serve.process import log_tail

        ep = self.registry.get(name)
        return "\n".join(log_tail(ep.log_path).splitlines()[-lines:])

    def refresh(self) -> None:
        """Re-read the registry (and the store's model list) into the widgets."""
        if not self._w:
            return
        statuses = self.statuses()
        self._w["table"].value = endpoints_table_html(statuses)
        names = [s.endpoint.name for s in statuses]
        picked = self._w["endpoint"].value
        self._w["endpoint"].options = names
        if names:
            self._w["endpoint"].value = picked if picked in names else names[0]
            self._show_log()

    def _show_log(self) -> None:
        name = self._w["endpoint"].value
        self._w["log"].value = f"<pre>{esc(self.log_tail(name))}</pre>" if name else ""

    # --- widgets -----------------------------------------------------------------------------

    def _build(self) -> Any:
        import ipywidgets as widgets

        models = [e.name for e in self.model_store.list() if e.ok]
        w = self._w
        w["model"] = widgets.Dropdown(options=models, description="Model")
        w["engine"] = widgets.Dropdown(options=ENGINES, value="auto", description="Engine")
        w["devices"] = widgets.Text(value="cpu", description="Devices", placeholder="cpu or cuda:0,cuda:1")
        w["quant"] = widgets.Dropdown(options=SERVE_QUANTS, value="none", description="Quant")
        # indent=False and an auto width: ipywidgets' default Checkbox is 300 px wide with an 80 px indent
        # before the box, which cut this label to "keep running after the ker...".
        w["detach"] = widgets.Checkbox(value=False, description="keep running after the kernel exits", indent=False,
                                       layout=widgets.Layout(width="auto"))
        start = widgets.Button(description="Start", button_style="primary", icon="play")
        stop = widgets.Button(description="Stop", icon="stop")
        refresh = widgets.Button(description="Refresh", icon="refresh")
        w["start"], w["stop"], w["refresh"] = start, stop, refresh
        w["endpoint"] = widgets.Dropdown(options=[], description="Endpoint")
        w["table"] = widgets.HTML()
        w["log"] = widgets.HTML()
        start.on_click(self.guarded(lambda _: self.start_engine(
            w["model"].value, engine=w["engine"].value, devices=w["devices"].value, quant=w["quant"].value,
            detach=w["detach"].value, wait=False)))
        stop.on_click(self.guarded(lambda _: w["endpoint"].value and self.stop_endpoint(w["endpoint"].value)))
        refresh.on_click(self.guarded(lambda _: self.refresh()))
        w["endpoint"].observe(self.guarded(lambda _: self._show_log()), names="value")
        box = widgets.VBox([
            widgets.HBox([w["model"], w["engine"]]), widgets.HBox([w["devices"], w["quant"]]), w["detach"],
            widgets.HBox([start, refresh]), w["table"], widgets.HBox([w["endpoint"], stop]),
            widgets.HTML("<b>Log tail</b>"), w["log"],
        ])
        self.refresh()
        return box

    def _control_widgets(self) -> dict[str, Any]:
        """``model``, ``engine``, ``devices``, ``quant``, ``detach``, ``start``, ``refresh``, ``endpoint``
        (the endpoint picked for its log and for ``stop``) and ``stop``."""
        return {k: self._w[k] for k in ("model", "engine", "devices", "quant", "detach", "start", "refresh",
                                        "endpoint", "stop")}

    def _output_widgets(self) -> dict[str, Any]:
        """``table`` (the endpoints) and ``log`` (the picked endpoint's log tail)."""
        return {"table": self._w["table"], "log": self._w["log"]}

    def static_html(self, plots: bool = True) -> str:
        return endpoints_table_html(self.statuses())
