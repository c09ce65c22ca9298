"""The workbench in Jupyter: ipywidgets + Plotly panels over the store, devices, telemetry and runtime.

``Workbench()`` composes every panel in one app; each panel also works on its
own. Displayed in a live front end they are widgets; in a report
(``nbconvert --execute``) they render as static HTML and Plotly figures (see
:mod:`workbench.ui.display`).

Importing this package is cheap: ipywidgets, plotly and the runtime (torch)
load when a panel is first built.

Example:
    >>> from workbench.ui import Workbench
    >>> wb = Workbench()      # doctest: +SKIP
    >>> wb                    # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "Workbench": "app",
    "Panel": "base",
    "StorePanel": "store_panel",
    "ServePanel": "serve_panel",
    "LoadPanel": "load_panel",
    "PromptPanel": "prompt_panel",
    "TelemetryPanel": "telemetry_panel",
    "QuantizationPanel": "quant_panel",
    "display_mode": "display",
    "is_live": "display",
    "StaticHTML": "display",
    "figure_html": "display",
    "html_table": "display",
}

if TYPE_CHECKING:  # pragma: no cover
    from .app import Workbench  # noqa: F401
    from .base import Panel  # noqa: F401
    from .display import StaticHTML, display_mode, figure_html, html_table, is_live  # noqa: F401
    from .load_panel import LoadPanel  # noqa: F401
    from .prompt_panel import PromptPanel  # noqa: F401
    from .quant_panel import QuantizationPanel  # noqa: F401
    from .serve_panel import ServePanel  # noqa: F401
    from .store_panel import StorePanel  # noqa: F401
    from .telemetry_panel import TelemetryPanel  # noqa: F401


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)


__all__ = sorted(_EXPORTS)
