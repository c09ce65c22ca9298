"""What every panel shares: lazy widgets, the error banner, worker threads, live/static display.

A panel keeps its state once, in its traits (``traitlets``; a panel is a ``HasTraits``), and
builds its ipywidgets only when something asks for :attr:`Panel.widget` (a live display, or a
test). Each input widget is then linked to its trait (``traitlets.link``): setting the trait
moves the widget and the widget moves the trait, so there is no copy to keep in step by hand.
A report therefore never creates a widget: no saved widget state, no "Loading widget..."
box, no CDN script; it shows :meth:`Panel.static_html` instead.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from traitlets import HasTraits

from ..errors import WorkbenchError
from . import history
from .closing import close_tree
from .display import StaticHTML, banner_html, mimebundle, section_html
from .style import style_widget

logger = logging.getLogger(__name__)

T = TypeVar("T")


def error_message(exc: BaseException) -> str:
    """One line for the banner: a ``WorkbenchError``'s own message, else the type and text.

    Example:
        >>> error_message(ValueError("bad"))
        'Unexpected error (ValueError): bad'
    """
    if isinstance(exc, WorkbenchError):
        return str(exc)
    return f"Unexpected error ({type(exc).__name__}): {exc}"


class Throttle:
    """Lets a call through at most once per ``interval_s``; the caller decides what to skip.

    Example:
        >>> t = Throttle(10.0)
        >>> t.ready(), t.ready()
        (True, False)
    """

    def __init__(self, interval_s: float, clock: Callable[[], float] | None = None) -> None:
        self.interval_s = interval_s
        # Injectable so tests drive time by hand instead of sleeping.
        self.clock = clock or time.monotonic
        self._last = float("-inf")
        self._lock = threading.Lock()

    def ready(self, now: float | None = None) -> bool:
        now = self.clock() if now is None else now
        with self._lock:
            if now - self._last >= self.interval_s:
                self._last = now
                return True
            return False


class WidgetSet:
    """A read-only namespace of a panel's widgets, named by what they control or show.

    Attribute access (``controls.model``) and item access (``controls["model"]``) both work;
    a group of per-device or per-parameter widgets is a read-only mapping
    (``controls.budgets["cpu"]``). The widgets themselves stay live: setting
    ``controls.filter.value`` acts as typing in the box.

    Example:
        >>> ws = WidgetSet(model="w")
        >>> ws.model, list(ws)
        ('w', ['model'])
    """

    def __init__(self, **widgets: Any) -> None:
        items = {k: types.MappingProxyType(dict(v)) if isinstance(v, Mapping) else v for k, v in widgets.items()}
        object.__setattr__(self, "_items", items)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._items[name]
        except KeyError:
            raise AttributeError(f"no widget named {name!r}; have: {', '.join(self._items)}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a panel's widget set is read-only; set a widget's .value instead")

    def __getitem__(self, name: str) -> Any:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"WidgetSet({', '.join(self._items)})"


_KEEP = object()


def set_options(widget: Any, options: Sequence[Any], value_link: Any, value: Any = _KEEP) -> None:
    """Give a selection widget (a ``Dropdown``) new ``options`` without the change reaching its trait.

    ipywidgets selects the first option when the options change (``_Selection._propagate_options``);
    through ``value_link`` (the widget's ``traitlets.link`` to the panel's trait) that would move the
    trait there and back again, running its observers twice. The link is cut meanwhile (and the
    trait set to ``value`` when given); linking it again sets the widget from the trait, whose
    value must be one of ``options`` (or ``None``).
    """
    value_link.unlink()
    try:
        widget.options = tuple(options)
        if value is not _KEEP:
            owner, name = value_link.source
            setattr(owner, name, value)
    finally:
        value_link.link()


def toggle(items: Sequence[str], chosen: Sequence[str], item: str, on: bool) -> list[str]:
    """``chosen`` with ``item`` ticked (``on``) or not, in the order of ``items``: what one checkbox of a
    group linked to a list trait gives back.

    Example:
        >>> toggle(["cpu", "cuda:0", "cuda:1"], ["cuda:1"], "cpu", True)
        ['cpu', 'cuda:1']
    """
    return [x for x in items if (x == item and on) or (x != item and x in chosen)]


class Panel(HasTraits):
    """Base of the workbench panels.

    Subclasses implement :meth:`_build` (the widgets, below the banner) and
    :meth:`static_html` (the twin for reports). Displaying a panel picks one of
    the two with :func:`~workbench.ui.display.display_mode`; in live mode the
    mimebundle carries the static twin as ``text/html`` too, without plots, so a
    saved notebook still says something where widgets cannot render.

    To drive a panel from code, use its methods, or its widgets through :attr:`controls`
    (inputs) and :attr:`outputs` (what it shows); the underscore attributes are the
    implementation and may change.

    Example:
        >>> from workbench.ui import StorePanel
        >>> panel = StorePanel()            # no widgets yet
        >>> panel.static()                  # doctest: +SKIP
    """

    title = "Panel"

    def __init__(self) -> None:
        super().__init__()
        # From the first panel on, an unload (from a panel or from runtime code in the same
        # kernel) also clears IPython's output history, which the runtime does not know.
        history.register()
        self._root: Any = None
        self._banner: Any = None
        self._banner_state: tuple[str, str] | None = None  # (message, kind), kept for the static twin
        self._executor: ThreadPoolExecutor | None = None
        self._future: Future | None = None
        self._build_lock = threading.RLock()
        self._cancel: threading.Event | None = None

    # --- widgets ---------------------------------------------------------------------------

    @property
    def built(self) -> bool:
        """Whether the widgets exist (they are built on first use of :attr:`widget`)."""
        return self._root is not None

    @property
    def widget(self) -> Any:
        """The panel's root widget, built on first access."""
        with self._build_lock:
            if self._root is None:
                import ipywidgets as widgets

                self._banner = widgets.HTML(layout=widgets.Layout(width="100%"))
                body = self._build()
                self._root = widgets.VBox([style_widget(), self._banner, body], layout=widgets.Layout(width="100%"))
                self._root.add_class("workbench-panel")
                self._paint_banner()
        return self._root

    def _build(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _select(self, trait: str, widget_attr: str, options: Sequence[Any], value: Any) -> None:
        """Offer ``options`` for the selection ``trait`` and choose ``value``: through its dropdown
        (the attribute ``widget_attr``) once the panel is built (:func:`set_options`, the trait moved
        once), else on the trait alone. The panel keeps its ``traitlets.link`` objects in
        ``self._links`` by trait."""
        links = getattr(self, "_links", None)
        if links:
            set_options(getattr(self, widget_attr), options, links[trait], value=value)
        else:
            setattr(self, trait, value)

    @property
    def controls(self) -> WidgetSet:
        """The panel's input widgets (boxes, dropdowns, buttons), built on first access.

        Drive the panel as a user would: ``panel.controls.model.value = "tiny"``,
        ``panel.controls.load.click()``. ``list(panel.controls)`` names them.
        """
        _ = self.widget
        return WidgetSet(**self._control_widgets())

    @property
    def outputs(self) -> WidgetSet:
        """The panel's display widgets (HTML views, progress bars, the banner), built on first access.

        ``panel.outputs.banner.value`` is the banner's HTML as shown; ``list(panel.outputs)`` names the rest.
        """
        _ = self.widget
        return WidgetSet(banner=self._banner, **self._output_widgets())

    def _control_widgets(self) -> dict[str, Any]:
        return {}

    def _output_widgets(self) -> dict[str, Any]:
        return {}

    def on_show(self) -> None:
        """Called when the app shows this panel's tab; panels with figures send them whole again
        (a view created while hidden, or that missed an update, then shows the current data)."""

    # --- the banner ------------------------------------------------------------------------

    def show_message(self, message: str, kind: str = "info") -> None:
        """Show one escaped message above the panel (``kind``: error, warning, info, ok)."""
        self._banner_state = (message, kind)
        self._paint_banner()

    def show_error(self, exc: BaseException) -> None:
        """Show an error in the banner; unexpected ones are also logged with their traceback."""
        if not isinstance(exc, WorkbenchError):
            logger.warning("%s: unexpected error", type(self).__name__, exc_info=exc)
        self.show_message(error_message(exc), "error")

    def clear_message(self) -> None:
        """Hide the banner."""
        self._banner_state = None
        self._paint_banner()

    @property
    def message(self) -> tuple[str, str] | None:
        """The banner's ``(text, kind)``, or ``None`` (tests read this)."""
        return self._banner_state

    def _paint_banner(self) -> None:
        if self._banner is None:
            return
        state = self._banner_state
        self._banner.value = banner_html(*state) if state else ""

    def guarded(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap a widget callback so any error lands in the banner instead of the log as a traceback.

        Example:
            >>> button.on_click(panel.guarded(lambda _: panel.refresh()))  # doctest: +SKIP
        """

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # a panel must stay usable whatever a callback raises
                self.show_error(exc)
                return None

        return wrapper

    # --- background work -------------------------------------------------------------------

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future:
        """Run ``fn`` on this panel's worker thread (one job at a time, in order).

        Errors are shown in the banner and also set on the returned future.

        Example:
            >>> panel.submit(time.sleep, 0.1).result()  # doctest: +SKIP
        """
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"workbench-{self.title.lower()}")

        def job() -> T:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                self.show_error(exc)
                raise

        future = self._executor.submit(job)
        self._future = future
        return future

    @property
    def busy(self) -> bool:
        """Whether a background job is queued or running."""
        return self._future is not None and not self._future.done()

    def wait(self, timeout_s: float | None = 300.0) -> Any:
        """Wait for the latest background job and return its result (re-raising its error).

        Example:
            >>> panel.load_model("SmolLM2-135M-Instruct", wait=False)  # doctest: +SKIP
            >>> panel.wait().footprint_bytes  # doctest: +SKIP
        """
        future = self._future
        return None if future is None else future.result(timeout=timeout_s)

    @staticmethod
    def _finish(future: Future, wait: bool) -> Any:
        return future.result() if wait else future

    def cancel(self) -> None:
        """Ask the panel's running job (a load, a study) to stop at its next check; it rolls back what it loaded."""
        if self._cancel is not None:
            self._cancel.set()

    def _new_cancel(self) -> threading.Event:
        """A fresh cancel event for the job about to start; :meth:`cancel` sets it."""
        self._cancel = threading.Event()
        return self._cancel

    def close(self) -> None:
        """Stop background work and close the widgets."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        if self._root is not None:
            # The whole tree: a box left open with a closed child breaks every reload (ui/closing.py).
            close_tree(self._root)
            self._root = None
            self._banner = None

    # --- display ---------------------------------------------------------------------------

    def static_html(self, plots: bool = True) -> str:  # pragma: no cover - abstract
        """The twin for reports: HTML tables and text, and Plotly figures when ``plots``."""
        raise NotImplementedError

    def _static_with_banner(self, plots: bool = True) -> str:
        banner = banner_html(*self._banner_state) if self._banner_state else ""
        return section_html(self.title, banner + self.static_html(plots=plots))

    def static(self) -> StaticHTML:
        """The static twin as a displayable object (what a report shows).

        Example:
            >>> display(panel.static())  # doctest: +SKIP
        """
        return StaticHTML(self._static_with_banner(plots=True), text=f"<{type(self).__name__} (static)>")

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return mimebundle(lambda: self.widget, lambda: self._static_with_banner(plots=False), self.static,
                          include, exclude, title=self.title)
