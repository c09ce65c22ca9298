"""The Store panel: what models there are, what each needs, and why a broken one is broken."""

from __future__ import annotations

import os
from typing import Any

from ..errors import WorkbenchError
from ..store import ModelEntry, ModelStore, estimate_table, format_bytes
from ..store.listing import check_sort_key, filter_entries, sort_entries
from .base import Panel
from .display import esc, html_table
from .fit_view import fit_summary, fit_table_html

COLUMNS = (
    ("name", "Name"), ("model_type", "Type"), ("params", "Params"), ("size_bytes", "Size"),
    ("dtype", "Dtype"), ("context_length", "Context"), ("quantization", "Quantization"), ("status", "Status"),
)
_STATUS_COLOURS = {"ok": "#145a32", "broken": "#a61b1b", "unsafe": "#8a5a00", "unsupported": "#555555"}


def _status_html(entry: ModelEntry) -> str:
    colour = _STATUS_COLOURS.get(entry.status, "#333")
    return f'<span style="color:{colour};font-weight:600">{esc(entry.status)}</span>'


def _row(entry: ModelEntry) -> list[Any]:
    return [
        entry.name, entry.model_type, entry.params_str if entry.params else None, entry.size_str, entry.dtype,
        f"{entry.context_length:,}" if entry.context_length else None, entry.quantization, _status_html(entry),
    ]


def entries_table_html(entries: list[ModelEntry]) -> str:
    """The store listing as an HTML table (every value from a model folder escaped).

    Example:
        >>> entries_table_html([])
        '<p><em>The store is empty...'
    """
    if not entries:
        return ("<p><em>The store is empty: run <code>workbench store seed</code> or import a GGUF file "
                "or model folder.</em></p>")
    # Which root each entry comes from, and whether a user's own entry shadows a shared one (issue 11).
    rows = [[*_row(e), f"{e.root} ({'writable' if e.writable else 'read-only'})"
             + (f", shadowed by {e.shadowed_by}" if e.shadowed else "")] for e in entries]
    return html_table([*(title for _, title in COLUMNS), "Root"], rows, raw_columns=[7])


def entry_details_html(entry: ModelEntry, devices: list[Any] | None = None) -> str:
    """One entry in detail: metadata, the problem if any, estimates per precision, fit per device.

    The fits are :func:`workbench.runtime.fit.fit_table`'s: for each device alone and each
    precision, the very check a load would get (reserves and other users' leases included), so
    this tab never says a model fits that the Load tab refuses.

    Args:
        entry: the store entry.
        devices: ``Device`` records (or device names) to check fits on; default ``list_devices()``.

    Example:
        >>> "Estimate" in entry_details_html(store.get("SmolLM2-135M-Instruct"))  # doctest: +SKIP
        True
    """
    parts = [f"<h4 style='margin:6px 0'>{esc(entry.name)}</h4>"]
    if entry.problem:
        parts.append(f"<p style='color:{_STATUS_COLOURS.get(entry.status, '#333')}'><b>{esc(entry.status)}:</b> "
                     f"{esc(entry.problem)}</p>")
    meta = [
        ("Path", str(entry.path)), ("Store root", f"{entry.root} ({'writable' if entry.writable else 'read-only'})"),
        ("Format", entry.format), ("Status", entry.status), ("Type", entry.model_type),
        ("Architectures", ", ".join(entry.architectures) or None), ("Loads with", entry.auto_class),
        ("Tokens per image", entry.image_tokens or ("varies with the image's size"
                                                    if entry.auto_class == "AutoModelForImageTextToText" else None)),
        ("Parameters", f"{entry.params:,}" if entry.params else None), ("Dtype on disk", entry.dtype),
        ("Size on disk", entry.size_str), ("Context length", entry.context_length),
        ("Layers / hidden / heads / KV heads", " / ".join(str(v) if v is not None else "?" for v in (
            entry.num_layers, entry.hidden_size, entry.num_attention_heads, entry.num_kv_heads))),
        ("Quantization", entry.quantization), ("Chat template", (f"yes ({entry.chat_template_source})" if entry.chat_template_source else "yes")
                          if entry.has_chat_template else "no"),
        ("Tokenizer", "yes" if entry.has_tokenizer else "no"),
        ("License", entry.license),
    ]
    parts.append(html_table(["Field", "Value"], meta))
    if entry.params:
        try:
            table = estimate_table(entry)
        except WorkbenchError as exc:
            parts.append(f"<p>No estimate: {esc(exc)}</p>")
        else:
            rows = [[label, format_bytes(est.weights_bytes), format_bytes(est.quant_state_bytes),
                     format_bytes(est.total_bytes), format_bytes(est.kv_cache_bytes_per_1k_tokens),
                     format_bytes(est.cache_state_bytes)]
                    for label, est in table.items()]
            parts.append(html_table(["Precision", "Weights", "Quant state", "Total", "KV cache / 1k tokens",
                                     "Cache state / sequence"], rows, caption="Estimate (before loading)"))
            problem = next(iter(table.values())).cache_problem if table else None
            if problem:
                parts.append(f"<p>KV cache: {esc(problem)}</p>")
            if entry.ok:  # a load of anything else is refused before any fit is checked
                parts.append(_fits_html(entry, devices))
    return "".join(parts)


def _fits_html(entry: ModelEntry, devices: list[Any] | None) -> str:
    from ..runtime.fit import CONTEXT_TOKENS, fit_table

    if devices is None:
        from ..devices import list_devices

        devices = list_devices()
    names = [d if isinstance(d, str) else d.name for d in devices]
    try:
        checks = fit_table(entry, names)
    except WorkbenchError as exc:
        return f"<p>No fit check: {esc(exc)}</p>"
    return ("<p style='margin:2px 0'><b>Fits now</b> (free memory less reserves and other users' leases, "
            f"{CONTEXT_TOKENS:,} tokens of context; the check the Load tab applies):</p><ul>"
            + "".join(f"<li>{esc(s)}</li>" for s in fit_summary(checks)) + "</ul>"
            + fit_table_html(checks, caption="What each load needs, part by part"))


class StorePanel(Panel):
    """Browse the model store: a sortable, filterable table and the details of one entry.

    Args:
        store: the store to show; default ``ModelStore()`` (``WORKBENCH_STORE``).

    Example:
        >>> panel = StorePanel()
        >>> panel.set_filter("smol")                          # doctest: +SKIP
        >>> [e.name for e in panel.visible]                   # doctest: +SKIP
        ['SmolLM2-135M-Instruct']
        >>> panel                                             # doctest: +SKIP
    """

    title = "Store"

    def __init__(self, store: ModelStore | None = None) -> None:
        super().__init__()
        self.store = store if store is not None else ModelStore()
        self.entries: list[ModelEntry] = []
        self.filter_text = ""
        self.sort_key = "name"
        self.descending = False
        self.selected: str | None = None
        self._listeners: list[Any] = []
        self._rendering = False
        self.refresh()

    # --- state -----------------------------------------------------------------------------

    @property
    def visible(self) -> list[ModelEntry]:
        """The entries after the filter, in the chosen order."""
        return sort_entries(filter_entries(self.entries, self.filter_text), self.sort_key, self.descending)

    def on_change(self, callback: Any) -> None:
        """Call ``callback()`` after every refresh (the Load panel lists the same models)."""
        self._listeners.append(callback)

    def refresh(self) -> list[ModelEntry]:
        """Rescan the store roots; broken and unsafe entries are listed with their reason."""
        self.entries = self.store.list()
        names = [e.name for e in self.entries]
        if self.selected not in names:
            ok = [e.name for e in self.entries if e.ok]
            self.selected = ok[0] if ok else (names[0] if names else None)
        self._render()
        for cb in list(self._listeners):
            cb()
        return self.entries

    def set_filter(self, text: str) -> None:
        """Show only entries matching every word of ``text`` (name, type, dtype, format, status)."""
        self.filter_text = text
        if self._root is not None and self._filter.value != text:
            self._filter.value = text  # its observer re-renders
            return
        self._render()

    def sort(self, key: str, descending: bool = False) -> None:
        """Order the table by a column key (``name``, ``params``, ``size_bytes``, ``status``...).

        Raises:
            ConfigError: an unknown key.
        """
        check_sort_key(key)
        self.sort_key, self.descending = key, descending
        if self._root is not None:
            self._sort.value, self._desc.value = key, descending
        self._render()

    def select(self, name: str) -> ModelEntry:
        """Show ``name`` in the details view.

        Raises:
            ModelNotFoundError: no such entry.
        """
        entry = self.store.get(name)
        self.selected = entry.name
        self._render()
        return entry

    def details_html(self, name: str | None = None) -> str:
        """The details view's HTML for ``name`` (default: the selected entry)."""
        name = name or self.selected
        if not name:
            return ""
        entry = next((e for e in self.entries if e.name == name), None) or self.store.get(name)
        return entry_details_html(entry)

    def import_model(self, path: str | os.PathLike[str], name: str | None = None, *, wait: bool = True) -> Any:
        """Import a GGUF file (kept at its own quantization, run by llama.cpp) or a model folder into the user store.

        Runs on the panel's worker thread (copying a large file takes seconds); the
        table refreshes when it is done. ``workbench store import FILE.gguf --convert``
        converts a GGUF to safetensors for transformers instead.

        Returns:
            The new ``ModelEntry`` (``wait=True``) or a ``Future`` of it.
        """
        from ..store.importer import import_path

        def job() -> ModelEntry:
            self.show_message(f"Importing {path}...", "info")
            entry = import_path(path, self.store, name=name or None)
            self.selected = entry.name
            self.refresh()
            self.show_message(f"Imported {entry.name} ({entry.size_str}).", "ok")
            return entry

        return self._finish(self.submit(job), wait)

    # --- widgets ---------------------------------------------------------------------------

    def _build(self) -> Any:
        import ipywidgets as widgets

        self._filter = widgets.Text(value=self.filter_text, placeholder="filter: name, type, dtype, status...",
                                    description="Filter", layout=widgets.Layout(width="320px"))
        self._sort = widgets.Dropdown(options=[(title, key) for key, title in COLUMNS], value=self.sort_key,
                                      description="Sort by", layout=widgets.Layout(width="220px"))
        self._desc = widgets.ToggleButton(value=self.descending, description="descending", icon="sort-amount-desc",
                                          layout=widgets.Layout(width="120px"))
        refresh = widgets.Button(description="Refresh", icon="refresh", layout=widgets.Layout(width="100px"))
        self._table = widgets.HTML(layout=widgets.Layout(width="100%", overflow="auto"))
        self._pick = widgets.Dropdown(description="Details", layout=widgets.Layout(width="420px"))
        self._details = widgets.HTML(layout=widgets.Layout(width="100%"))
        self._import_path = widgets.Text(placeholder="/path/to/model.gguf or a model folder", description="Import",
                                         layout=widgets.Layout(width="420px"))
        self._import_name = widgets.Text(placeholder="name (optional)", layout=widgets.Layout(width="200px"))
        import_button = widgets.Button(description="Import", icon="download", layout=widgets.Layout(width="100px"))

        self._filter.observe(self.guarded(lambda ch: self.set_filter(ch["new"])), names="value")
        self._sort.observe(self.guarded(lambda ch: self.sort(ch["new"], self._desc.value)), names="value")
        self._desc.observe(self.guarded(lambda ch: self.sort(self._sort.value, ch["new"])), names="value")
        self._pick.observe(self.guarded(self._on_pick), names="value")
        refresh.on_click(self.guarded(lambda _: self.refresh()))
        import_button.on_click(self.guarded(lambda _: self.import_model(
            self._import_path.value.strip(), self._import_name.value.strip() or None, wait=False)))
        self._refresh_button, self._import_button = refresh, import_button

        self._render()
        return widgets.VBox([
            widgets.HBox([self._filter, self._sort, self._desc, refresh]),
            self._table,
            self._pick,
            self._details,
            widgets.HBox([self._import_path, self._import_name, import_button]),
        ])

    def _control_widgets(self) -> dict[str, Any]:
        """``filter``, ``sort``, ``descending``, ``pick`` (the details dropdown), ``refresh``,
        ``import_path``, ``import_name``, ``import_model``."""
        return {"filter": self._filter, "sort": self._sort, "descending": self._desc, "pick": self._pick,
                "refresh": self._refresh_button, "import_path": self._import_path,
                "import_name": self._import_name, "import_model": self._import_button}

    def _output_widgets(self) -> dict[str, Any]:
        """``table`` (the visible entries) and ``details`` (the picked entry)."""
        return {"table": self._table, "details": self._details}

    def _on_pick(self, change: dict[str, Any]) -> None:
        if self._rendering:
            return
        if change["new"] and change["new"] != self.selected:
            self.select(change["new"])

    def _render(self) -> None:
        if not hasattr(self, "_table"):
            return
        visible = self.visible
        self._table.value = entries_table_html(visible)
        names = [e.name for e in visible]
        if self.selected and self.selected not in names and any(e.name == self.selected for e in self.entries):
            names.append(self.selected)  # keep the details of a filtered-out selection
        # Changing a Dropdown's options moves its value; ignore those echoes.
        self._rendering = True
        try:
            if list(self._pick.options) != names:
                self._pick.options = names
            self._pick.value = self.selected if self.selected in names else None
        finally:
            self._rendering = False
        self._details.value = self.details_html() if self.selected else ""

    def static_html(self, plots: bool = True) -> str:
        """The listing (every entry) and the selected entry's details."""
        body = entries_table_html(self.visible)
        if self.selected:
            body += self.details_html()
        return body
