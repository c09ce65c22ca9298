"""``Workbench()``: every panel in one app, sharing one store, one sampler and one registry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import UnknownChoiceError
from ..store import ModelStore
from .base import Panel
from .closing import close_tree
from .display import StaticHTML, esc, mimebundle, section_html
from .load_panel import LoadPanel
from .prompt_panel import PromptPanel
from .quant_panel import QuantizationPanel
from .serve_panel import ServePanel
from .store_panel import StorePanel
from .telemetry_panel import TelemetryPanel

if TYPE_CHECKING:
    from ..runtime import Registry
    from ..telemetry import Sampler


class Workbench:
    """The workbench as one app: Store, Load, Prompt, Telemetry, Quantization and Serve tabs.

    Panels talk through the app: a refreshed store re-lists models in Load, and a
    finished load selects the model in Prompt (the Load tab stays on show with the
    placement and footprint, and offers the next step). Showing a tab sends its
    figures whole again (:meth:`Panel.on_show`). More panels plug in with :meth:`add_panel`.

    Args:
        store: the model store; default ``ModelStore()`` (``WORKBENCH_STORE``).
        registry: loaded models; default the kernel's :func:`workbench.runtime.get_registry`.
        sampler: telemetry; default :func:`workbench.telemetry.get_sampler`.
        tab: the tab shown first (a title); default Load, or Prompt when a model is loaded.

    Example:
        >>> from workbench import Workbench
        >>> wb = Workbench()                                       # doctest: +SKIP
        >>> wb                                                     # doctest: +SKIP
        >>> wb.load.load_model("SmolLM2-135M-Instruct")            # doctest: +SKIP
        >>> wb.prompt.send("What is the capital of France?").text  # doctest: +SKIP
        'The capital of France is Paris.'
    """

    def __init__(self, store: ModelStore | None = None, registry: Registry | None = None, sampler: Sampler | None = None,
                 tab: str | None = None) -> None:
        self.model_store = store if store is not None else ModelStore()
        self.store = StorePanel(self.model_store)
        self.load = LoadPanel(self.model_store, registry)
        self.prompt = PromptPanel(registry)
        self.telemetry = TelemetryPanel(sampler)
        self.quantization = QuantizationPanel(self.model_store, registry)
        self.serve = ServePanel(self.model_store)
        self.panels: dict[str, Panel] = {}
        for panel in (self.store, self.load, self.prompt, self.telemetry, self.quantization, self.serve):
            self.panels[panel.title] = panel
        self._tab_widget: Any = None
        self._root: Any = None
        self._first_tab = tab
        self.store.on_change(self._store_changed)
        self.load.on_change(self._loaded_changed)
        self.load.on_next("Next: chat with it in Prompt", lambda: self.select_tab("Prompt"))

    @property
    def registry(self) -> Registry:
        """The loaded-model registry every panel shares."""
        return self.load.registry

    @property
    def sampler(self) -> Sampler:
        """The telemetry sampler every panel shares."""
        return self.telemetry.sampler

    def add_panel(self, panel: Panel, title: str | None = None) -> Panel:
        """Add a panel as a new tab.

        Example:
            >>> wb.add_panel(StorePanel(ModelStore(["/other/models"])), title="Other store")  # doctest: +SKIP
        """
        title = title or panel.title
        self.panels[title] = panel
        if self._tab_widget is not None:
            self._tab_widget.children = [*self._tab_widget.children, panel.widget]
            self._tab_widget.set_title(len(self._tab_widget.children) - 1, title)
        return panel

    # --- links between panels ---------------------------------------------------------------

    def _store_changed(self) -> None:
        self.load.refresh_models()
        self.quantization.refresh_models()

    def _loaded_changed(self) -> None:
        # No jump to Prompt: the Load tab shows where the model went and what it costs, and its
        # next-step button (LoadPanel.on_next) brings the user here when they are ready.
        self.prompt.refresh_models()

    def _tab_shown(self, change: dict[str, Any]) -> None:
        index = change["new"]
        panels = list(self.panels.values())
        if isinstance(index, int) and 0 <= index < len(panels):
            panels[index].guarded(lambda: panels[index].on_show())()

    def select_tab(self, title: str) -> None:
        """Show one tab by its title (``"Store"``, ``"Load"``, ``"Prompt"``, ``"Telemetry"``).

        Raises:
            UnknownChoiceError: no tab of that title (a ``KeyError``).
        """
        titles = list(self.panels)
        if title not in titles:
            raise UnknownChoiceError(f"no tab {title!r}", hint=f"tabs: {', '.join(titles)}", choices=titles)
        if self._tab_widget is not None:
            self._tab_widget.selected_index = titles.index(title)
        self._first_tab = title

    @property
    def selected_tab(self) -> str | None:
        """The title of the tab on show (``None`` before the app is displayed live)."""
        if self._tab_widget is None:
            return self._first_tab
        return list(self.panels)[self._tab_widget.selected_index]

    # --- widgets and display ----------------------------------------------------------------

    @property
    def widget(self) -> Any:
        """The app's root widget (a header and one tab per panel), built on first access."""
        if self._root is None:
            import ipywidgets as widgets

            titles = list(self.panels)
            self._tab_widget = widgets.Tab(children=[p.widget for p in self.panels.values()],
                                           titles=titles, layout=widgets.Layout(width="100%"))
            first = self._first_tab or ("Prompt" if self.load.loaded() else "Load")
            self._tab_widget.selected_index = titles.index(first) if first in titles else 0
            self.prompt.refresh_models()
            self._tab_widget.observe(self._tab_shown, names="selected_index")
            header = widgets.HTML(self._header_html())
            self._root = widgets.VBox([header, self._tab_widget], layout=widgets.Layout(width="100%"))
            self._root.add_class("workbench-app")
        return self._root

    def _header_html(self) -> str:
        ok = sum(1 for e in self.store.entries if e.ok)
        devices = ", ".join(d.name for d in self.load.device_records)
        return (f"<div style='font-size:14px;margin:2px 0 6px 0'><b>llm-workbench</b> &middot; {ok} model(s) "
                f"ready in the store &middot; devices: {esc(devices)}</div>")

    def static_html(self, plots: bool = True) -> str:
        """Every panel's static twin, one section each."""
        parts = [self._header_html()]
        for panel in self.panels.values():
            parts.append(panel._static_with_banner(plots=plots))
        return section_html("Workbench", "".join(parts), level=2)

    def static(self) -> StaticHTML:
        """The whole app as static HTML (what a report shows)."""
        return StaticHTML(self.static_html(plots=True), text="<Workbench (static)>")

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return mimebundle(lambda: self.widget, lambda: self.static_html(plots=False), self.static, include, exclude,
                          title="Workbench")

    def close(self) -> None:
        """Close every panel (unsubscribes from telemetry; loaded models stay in the registry)."""
        for panel in self.panels.values():
            panel.close()
        if self._root is not None:
            close_tree(self._root)  # the header and the Tab too, not only the root box (ui/closing.py)
            self._root = None
            self._tab_widget = None
