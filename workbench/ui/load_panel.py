"""The Load panel: pick a model, devices, precision and budgets; load; see placement; unload.

The estimate is checked against the selection as it changes, before anything is
loaded; the load runs on the panel's worker thread with a progress bar and can
be cancelled; afterwards the panel shows where every byte went and, on unload,
how much came back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from traitlets import Bool, Dict, Float, List, Unicode, link, validate

from ..errors import LoadSpecError, WorkbenchError
from ..precision import COMPUTE_DTYPES, DTYPES, FOUR_BIT, QUANTS
from ..store import ModelStore, format_bytes
from .base import Panel, Throttle, set_options, toggle
from .display import banner_html, esc, html_table
from .fit_view import fit_table_html

if TYPE_CHECKING:
    from ..runtime import FitCheck, LoadedModel, LoadSpec, Registry, UnloadReport
    from ..store import ModelEntry

GIB = 2**30
DEVICE_REFRESH_S = 2.0


def _registry() -> Registry:
    from ..runtime import get_registry

    return get_registry()


def loaded_table_html(loaded: Sequence[LoadedModel]) -> str:
    """Loaded models: engine, devices, precision, bytes per device, footprint and load time."""
    if not loaded:
        return "<p><em>No model loaded.</em></p>"
    rows = []
    for m in loaded:
        spec = m.spec
        precision = m.precision if getattr(m, "engine", "transformers") == "llamacpp" else spec.precision
        placement = ", ".join(f"{dev}: {format_bytes(b)}" for dev, b in (m.placement or {}).items())
        engine = "llama.cpp" if getattr(m, "engine", "transformers") == "llamacpp" else "transformers"
        rows.append([m.name, m.entry.name if m.entry else spec.model, engine, ", ".join(m.devices), precision,
                     placement, format_bytes(m.footprint_bytes), f"{m.load_s:.1f} s" if m.load_s is not None else None])
    return html_table(["Name", "Model", "Engine", "Devices", "Precision", "Placement", "Footprint", "Load time"], rows)


#: Shown where NVML cannot list a GPU's processes: unknown, not "nobody holds memory".
UNKNOWN_PROCESSES = "unknown (NVML cannot list them)"


def device_holders(name: str) -> tuple[list[str], list[str] | None]:
    """``(leases, processes)`` on a GPU, one line each: who has reserved it, and who holds memory now.

    ``processes`` is ``None`` when NVML cannot list them (unknown, not empty).
    """
    if name == "cpu":
        return [], []
    from ..devices import gpu_processes
    from ..devices.leases import get_lease_book

    try:
        leases = get_lease_book().share(name).holders()
    except (WorkbenchError, OSError):
        leases = []
    try:
        found = gpu_processes(name)
    except WorkbenchError:
        found = None
    if found is None:
        return leases, None
    procs = [f"{p.user or '?'} pid {p.pid} {(p.command or '')[:40]} ({format_bytes(p.used_memory_bytes)})"
             for p in found]
    return leases, procs


def unload_message(report: UnloadReport) -> str:
    """What an unload gave back, in one line (shown in the banner)."""
    text = f"Unloaded {report.name}: freed {format_bytes(report.freed_bytes)}"
    before, after = getattr(report, "rss_before_bytes", None), getattr(report, "rss_after_bytes", None)
    if before and after:
        text += f" (kernel RSS {format_bytes(before)} \u2192 {format_bytes(after)})"
    return text + "."


#: The traits that make up the selection: a change of any re-renders the fit check.
SELECTION = ("model", "devices", "dtype", "quant", "double_quant", "compute_dtype", "budgets_gib")


class LoadPanel(Panel):
    """Load models onto devices and unload them.

    The selection lives in the panel's traits (:data:`SELECTION`), each linked to its widget
    once the widgets exist: ``panel.dtype = "float32"`` moves the dtype dropdown, and choosing
    in the dropdown sets ``panel.dtype``. The store is read when the models are listed
    (:meth:`refresh_models`); a change of the selection checks the listed entry, reading the
    store no more.

    Args:
        store: where models are listed; default ``ModelStore()``.
        registry: the kernel's loaded models; default :func:`workbench.runtime.get_registry`.

    Example:
        >>> panel = LoadPanel()
        >>> panel.check().message                                   # doctest: +SKIP
        'bfloat16 needs about 280.1 MiB ...: fits'
        >>> loaded = panel.load_model("SmolLM2-135M-Instruct")      # doctest: +SKIP
        >>> panel.unload(loaded.name).freed_bytes > 0               # doctest: +SKIP
        True
    """

    title = "Load"

    models = List(Unicode(), help="the loadable (ok) store entries, as last listed")
    model = Unicode(None, allow_none=True, help="the selected store entry")
    devices = List(Unicode(), help="the devices to load onto, in the device list's order")
    dtype = Unicode("auto", help="one of workbench.precision.DTYPES")
    quant = Unicode("none", help="one of workbench.precision.QUANTS (only none for a pre-quantized model)")
    double_quant = Bool(False, help="4-bit only: quantize the quantization constants too")
    compute_dtype = Unicode("bfloat16", help="4-bit only: the dtype of the matmuls")
    allow_unknown_cache = Bool(False, help="load even when the store cannot measure the model's cache "
                                           "(the fit check then leaves room for it to you)")
    budgets_gib = Dict(value_trait=Float(), help="per-device caps in GiB (absent or 0: no cap)")

    def __init__(self, store: ModelStore | None = None, registry: Registry | None = None) -> None:
        super().__init__()
        self.store = store if store is not None else ModelStore()
        self._registry = registry
        self._entries: dict[str, ModelEntry] = {}  # by name, as the last listing found them
        self._links: dict[str, Any] = {}
        from ..devices import list_devices

        self.device_records = list_devices()
        gpus = [d.name for d in self.device_records if d.kind != "cpu"]
        self.devices = gpus[:1] or ["cpu"]
        self.observe(self._on_model, names="model")
        self.observe(self.guarded(self._render_check), names=list(SELECTION))
        self.progress: tuple[str, float, str] = ("idle", 0.0, "")
        self.last_unload: UnloadReport | None = None
        self._listeners: list[Callable[[], None]] = []
        self._next_step: tuple[str, Callable[[], None]] | None = None
        self._progress_throttle = Throttle(0.1)
        self._device_throttle = Throttle(DEVICE_REFRESH_S)
        self._unsubscribe: Callable[[], None] | None = None
        self._idle_seen_s = time.time()
        self.refresh_models()

    @property
    def registry(self) -> Registry:
        """The kernel's registry of loaded models (imports the runtime on first use)."""
        if self._registry is None:
            self._registry = _registry()
        return self._registry

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after every load and unload (the Prompt panel lists loaded models)."""
        self._listeners.append(callback)

    def on_next(self, label: str, callback: Callable[[], None]) -> None:
        """Offer a next step after a load: a button ``label`` beside the loaded-models table that calls
        ``callback()`` (the app's "Next: Prompt" opens its Prompt tab). The Load tab stays on show, so
        the placement and footprint of the load are seen first."""
        self._next_step = (label, callback)
        self._render_loaded()

    def _notify(self) -> None:
        for cb in list(self._listeners):
            cb()

    # --- selection -------------------------------------------------------------------------

    def refresh_models(self) -> list[str]:
        """Re-list the loadable (``ok``) store entries: the one read of the store the selection uses."""
        listed = self.store.list()
        self._entries = {e.name: e for e in listed if not e.shadowed}
        names = [e.name for e in listed if e.ok]
        model = self.model if self.model in names else (names[0] if names else None)
        self.models = names
        self._select("model", "_model_w", names, model)
        self._render_check()
        return self.models

    def _entry(self, name: str) -> ModelEntry:
        """The store entry ``name`` as the last listing found it; one not listed then is read from the store.

        Raises:
            ModelNotFoundError, UnsafeNameError: see :meth:`workbench.store.ModelStore.get`.
        """
        entry = self._entries.get(name)
        return entry if entry is not None else self.store.get(name)

    def refresh_devices(self) -> None:
        """Re-read free memory (and, for GPUs, who holds it) of every device."""
        from ..devices import list_devices

        self.device_records = list_devices()
        if self._root is not None:
            for d in self.device_records:
                label = self._device_labels.get(d.name)
                if label is not None:
                    label.value = self.device_html(d)
            self._render_check()

    def budgets_bytes(self) -> dict[str, int]:
        """Per-device caps from the budget fields (0 or empty means no cap)."""
        return {dev: int(gib * GIB) for dev, gib in self.budgets_gib.items() if gib and gib > 0 and dev in self.devices}

    def check(self) -> FitCheck:
        """The runtime's own pre-load check of the current selection (a ``FitCheck``).

        The same rule the runtime applies when Load is pressed (free memory now,
        budgets, the load peak, room for 1,000 tokens of KV cache), so the panel's
        verdict and the runtime's refusal always agree.

        Raises:
            LoadSpecError: no model, or a selection the runtime would reject outright.
        """
        from ..runtime.fit import check_fit

        spec = self.spec()
        return check_fit(self._entry(spec.model_name), spec)

    def suggestion(self, check: FitCheck | None = None) -> str:
        """What to change when the selection does not fit (a smaller precision, another device).

        ``check``: the selection's :meth:`check` already made, whose device readings the
        alternatives are tried against (default: the devices are read afresh).
        """
        from ..runtime.fit import suggest

        spec = self.spec()
        return suggest(self._entry(spec.model_name), spec,
                       other_devices=[d.name for d in self.device_records], check=check)

    def saved_quantization(self) -> str | None:
        """The selected model's own quantization when it is a pre-quantized checkpoint, else ``None``."""
        if not self.model:
            return None
        try:
            entry = self._entry(self.model)
        except WorkbenchError:
            return None
        return (entry.quantization or entry.quant_method) if entry.quant_method else None

    def quant_choices(self) -> tuple[str, ...]:
        """The quantizations the selected model can load with: only ``"none"`` for a pre-quantized one
        (it keeps its own; the runtime refuses a second quantization)."""
        return ("none",) if self.saved_quantization() else tuple(QUANTS)

    def spec(self, name: str | None = None) -> LoadSpec:
        """The :class:`workbench.runtime.LoadSpec` the Load button would use.

        Raises:
            LoadSpecError: no model selected, or a selection :meth:`LoadSpec.validate` refuses.
        """
        from ..runtime import LoadSpec

        if not self.model:
            raise LoadSpecError("no model selected", hint="import or seed a model first (see the Store tab)")
        budgets = self.budgets_bytes()
        four_bit = self.quant in FOUR_BIT
        return LoadSpec(
            model=self.model, devices=tuple(self.devices), dtype=self.dtype, quant=self.quant,
            double_quant=self.double_quant if four_bit else False,
            compute_dtype=self.compute_dtype if four_bit else None,
            max_memory=budgets or None, name=name or None, allow_unknown_cache=self.allow_unknown_cache,
        ).validate()

    # --- actions ---------------------------------------------------------------------------

    def load_model(self, model: str | None = None, *, devices: Sequence[str] | None = None, dtype: str | None = None,
                   quant: str | None = None, double_quant: bool | None = None, compute_dtype: str | None = None,
                   budgets_gib: dict[str, float] | None = None, name: str | None = None, wait: bool = True) -> Any:
        """Load a model with the given selection (arguments left out keep the panel's current choice).

        Runs on the panel's worker thread; the progress bar follows it and Cancel
        stops it (the runtime rolls back).

        Returns:
            The ``LoadedModel`` (``wait=True``) or a ``Future`` of it.

        Example:
            >>> panel.load_model("SmolLM2-135M-Instruct", devices=["cpu"], dtype="bfloat16")  # doctest: +SKIP
        """
        self.select(model=model, devices=devices, dtype=dtype, quant=quant, double_quant=double_quant,
                    compute_dtype=compute_dtype, budgets_gib=budgets_gib)
        spec = self.spec(name)
        cancel = self._new_cancel()
        self.clear_message()

        def job() -> Any:
            self._set_progress("starting", 0.0, f"loading {spec.model} on {', '.join(spec.devices)}", force=True)
            try:
                loaded = self.registry.load(spec, progress=self._on_progress, cancel=cancel)
            except WorkbenchError:
                self._set_progress("failed", 0.0, "load failed", force=True)
                raise
            self._set_progress("done", 1.0, f"loaded {loaded.name} in {loaded.load_s:.1f} s", force=True)
            self.show_message(f"Loaded {loaded.name}: {format_bytes(loaded.footprint_bytes)} on "
                              f"{', '.join(loaded.devices)}.", "ok")
            self._after_change()
            return loaded

        return self._finish(self.submit(job), wait)

    def unload(self, name: str | None = None) -> UnloadReport:
        """Unload a model (default: the newest) and show the memory given back.

        Returns:
            The runtime's ``UnloadReport``.

        Raises:
            LoadSpecError: nothing is loaded.
            ModelNotLoadedError: no loaded model named ``name``.
        """
        loaded = self.loaded()
        if name is None:
            if not loaded:
                raise LoadSpecError("no model is loaded", hint="load one first")
            name = loaded[-1].name
        report = self.registry.unload(name)
        self.last_unload = report
        self.show_message(unload_message(report), "ok")
        self._after_change()
        return report

    def loaded(self) -> list[Any]:
        """The models loaded in this kernel."""
        return list(self.registry.list())

    def select(self, *, model: str | None = None, devices: Sequence[str] | None = None, dtype: str | None = None,
               quant: str | None = None, double_quant: bool | None = None, compute_dtype: str | None = None,
               budgets_gib: dict[str, float] | None = None) -> Any:
        """Change the selection (as the widgets do) and return the new fit check (see :meth:`check`).

        Raises:
            ModelNotFoundError: no store entry named ``model``.
            LoadSpecError: a device this session does not have.
        """
        if model is not None:
            if model not in self.models:
                self.refresh_models()
            self._entry(model)  # raises ModelNotFoundError with a hint
            self.model = model
        if devices is not None:
            known = {d.name for d in self.device_records}
            unknown = [d for d in devices if d not in known]
            if unknown:
                raise LoadSpecError(f"no device {unknown[0]!r} in this session",
                                    hint=f"available: {', '.join(sorted(known))}")
            self.devices = list(devices)
        if dtype is not None:
            self.dtype = dtype
        if quant is not None:
            self.quant = quant
        if double_quant is not None:
            self.double_quant = double_quant
        if compute_dtype is not None:
            self.compute_dtype = compute_dtype
        if budgets_gib is not None:
            self.budgets_gib = dict(budgets_gib)
        return self.check()

    @validate("quant")
    def _one_quantization(self, proposal: Any) -> str:
        """A pre-quantized model loads with its own quantization only (the runtime refuses a second)."""
        saved = self.saved_quantization()
        if saved and proposal["value"] != "none":
            raise LoadSpecError(f"{self.model} is saved quantized ({saved}): it loads with its own quantization",
                                hint="leave quant at none, or pick a model that is not pre-quantized")
        return proposal["value"]

    def _on_model(self, _change: Any = None) -> None:
        """A pre-quantized model keeps its own quantization: the quant choices become ``none`` only."""
        if self.saved_quantization():
            self.quant, self.double_quant = "none", False
        if self._links:
            set_options(self._quant_w, self.quant_choices(), self._links["quant"])

    # --- progress ------------------------------------------------------------------------------

    def _on_progress(self, p: Any) -> None:
        self._set_progress(getattr(p, "phase", ""), float(getattr(p, "fraction", 0.0) or 0.0),
                           getattr(p, "message", "") or "")

    def _set_progress(self, phase: str, fraction: float, message: str, force: bool = False) -> None:
        self.progress = (phase, fraction, message)
        if self._root is None or not (force or self._progress_throttle.ready()):
            return
        self._bar.value = max(0.0, min(1.0, fraction))
        self._bar.bar_style = {"done": "success", "failed": "danger"}.get(phase, "info")
        self._progress_label.value = esc(message or phase)
        loading = phase not in ("done", "failed", "idle")
        self._load_button.disabled = loading
        self._cancel_button.disabled = not loading

    def _after_change(self) -> None:
        self.refresh_devices()
        self._render_loaded()
        self._notify()

    # --- widgets ---------------------------------------------------------------------------

    @staticmethod
    def device_html(d: Any) -> str:
        """One device's label as the panel shows it: name, free of total memory, and for a GPU its
        leases and the processes holding it (from :func:`device_holders`)."""
        text = (f"<b>{esc(d.name)}</b> {esc(d.label)} &middot; {esc(format_bytes(d.memory_free_bytes))} free of "
                f"{esc(format_bytes(d.memory_total_bytes))}")
        if d.kind != "cpu":
            leases, procs = device_holders(d.name)
            if leases:
                text += f"<br><span style='color:#666;font-size:12px'>leases: {esc('; '.join(leases[:4]))}</span>"
            if procs is None:
                text += f"<br><span style='color:#666;font-size:12px'>processes: {UNKNOWN_PROCESSES}</span>"
            elif procs:
                text += f"<br><span style='color:#666;font-size:12px'>held by: {esc('; '.join(procs[:4]))}</span>"
        return text

    def _build(self) -> Any:
        import ipywidgets as widgets

        wide = widgets.Layout(width="360px")
        self._model_w = widgets.Dropdown(options=self.models, value=self.model, description="Model", layout=wide)
        self._device_boxes: dict[str, Any] = {}
        self._device_labels: dict[str, Any] = {}
        self._budget_fields: dict[str, Any] = {}
        rows = []
        for d in self.device_records:
            box = widgets.Checkbox(value=d.name in self.devices, description=d.name, indent=False,
                                   layout=widgets.Layout(width="90px"))
            label = widgets.HTML(self.device_html(d), layout=widgets.Layout(width="460px"))
            budget = widgets.BoundedFloatText(value=float(self.budgets_gib.get(d.name, 0.0)), min=0.0, max=1e6,
                                              step=0.5, description="budget GiB",
                                              tooltip="cap for this device (max_memory); 0 = no cap",
                                              layout=widgets.Layout(width="190px"))
            self._device_boxes[d.name], self._device_labels[d.name], self._budget_fields[d.name] = box, label, budget
            rows.append(widgets.HBox([box, label, budget]))
        self._dtype_w = widgets.Dropdown(options=DTYPES, value=self.dtype, description="dtype",
                                         layout=widgets.Layout(width="220px"))
        self._quant_w = widgets.Dropdown(options=self.quant_choices(), value=self.quant, description="quant",
                                         layout=widgets.Layout(width="220px"))
        self._dq_w = widgets.Checkbox(value=self.double_quant, description="double quant (4-bit)", indent=False,
                                      layout=widgets.Layout(width="170px"))
        self._compute_w = widgets.Dropdown(options=COMPUTE_DTYPES, value=self.compute_dtype, description="compute",
                                           layout=widgets.Layout(width="220px"))
        self._unknown_w = widgets.Checkbox(value=self.allow_unknown_cache, indent=False,
                                           description="load even if its cache size is unknown",
                                           layout=widgets.Layout(width="auto"))
        self._check_w = widgets.HTML()
        self._load_button = widgets.Button(description="Load", button_style="primary", icon="play",
                                           layout=widgets.Layout(width="110px"))
        self._cancel_button = widgets.Button(description="Cancel", icon="stop", disabled=True,
                                             layout=widgets.Layout(width="110px"))
        self._bar = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, layout=widgets.Layout(width="300px"))
        self._progress_label = widgets.HTML()
        self._loaded_w = widgets.HTML()
        self._unload_pick = widgets.Dropdown(description="Loaded", layout=widgets.Layout(width="300px"))
        self._unload_button = widgets.Button(description="Unload", icon="eject", layout=widgets.Layout(width="110px"))
        self._next_button = widgets.Button(description="Next", icon="arrow-right", button_style="success",
                                           layout=widgets.Layout(width="auto", display="none"))
        self._next_button.on_click(self.guarded(lambda _: self._next_step and self._next_step[1]()))

        # The traits are the selection; each widget shows one and sets it (see the class doc).
        self._links = {name: link((self, name), (w, "value")) for name, w in (
            ("model", self._model_w), ("dtype", self._dtype_w), ("quant", self._quant_w),
            ("double_quant", self._dq_w), ("compute_dtype", self._compute_w),
            ("allow_unknown_cache", self._unknown_w))}
        names = [d.name for d in self.device_records]
        for name, box in self._device_boxes.items():
            self._links[f"device:{name}"] = link((self, "devices"), (box, "value"), transform=(
                lambda devices, n=name: n in devices, lambda on, n=name: toggle(names, self.devices, n, on)))
        for name, field in self._budget_fields.items():
            self._links[f"budget:{name}"] = link((self, "budgets_gib"), (field, "value"), transform=(
                lambda budgets, n=name: float(budgets.get(n, 0.0)),
                lambda gib, n=name: {**{k: v for k, v in self.budgets_gib.items() if k != n}, **({n: gib} if gib else {})}))
        self._load_button.on_click(self.guarded(lambda _: self.load_model(wait=False)))
        self._cancel_button.on_click(self.guarded(lambda _: self.cancel()))
        self._unload_button.on_click(self.guarded(lambda _: self.unload(self._unload_pick.value)))

        # Live free memory: piggy-back on the telemetry sampler's ticks, every few seconds at most.
        from ..telemetry import get_sampler

        self._unsubscribe = get_sampler().subscribe(self._on_tick)
        self._render_check()
        self._render_loaded()
        return widgets.VBox([
            self._model_w,
            widgets.HTML("<b>Devices</b> (free memory updates live)"),
            *rows,
            widgets.HBox([self._dtype_w, self._quant_w, self._dq_w, self._compute_w]),
            self._check_w,
            self._unknown_w,
            widgets.HBox([self._load_button, self._cancel_button, self._bar, self._progress_label]),
            self._loaded_w,
            widgets.HBox([self._unload_pick, self._unload_button, self._next_button],
                         layout=widgets.Layout(flex_flow="row wrap")),
        ], layout=widgets.Layout(width="100%", min_width="0"))

    def _control_widgets(self) -> dict[str, Any]:
        """``model``, ``devices`` and ``budgets`` (GiB; 0 = no cap), both keyed by device name, ``dtype``,
        ``quant``, ``double_quant``, ``compute_dtype``, ``allow_unknown_cache`` (load although the
        cache cannot be measured), the ``load``/``cancel`` buttons, and
        ``unload_pick`` with its ``unload`` button."""
        return {"model": self._model_w, "devices": self._device_boxes, "budgets": self._budget_fields,
                "dtype": self._dtype_w, "quant": self._quant_w, "double_quant": self._dq_w,
                "compute_dtype": self._compute_w, "allow_unknown_cache": self._unknown_w, "load": self._load_button, "cancel": self._cancel_button,
                "unload_pick": self._unload_pick, "unload": self._unload_button, "next": self._next_button}

    def _output_widgets(self) -> dict[str, Any]:
        """``check`` (the fit check), ``device_labels`` (by device name), ``progress`` (a bar, 0..1),
        ``progress_label`` and ``loaded`` (the loaded-models table)."""
        return {"check": self._check_w, "device_labels": self._device_labels, "progress": self._bar,
                "progress_label": self._progress_label, "loaded": self._loaded_w}

    def check_idle_unloads(self) -> list[Any]:
        """Show a banner for models the idle watcher unloaded since the last look; returns them."""
        from ..runtime.idle import idle_notices

        new = idle_notices(self.registry, since_s=self._idle_seen_s)
        if new:
            self._idle_seen_s = max(u.time_s for u in new)
            self.show_message("; ".join(u.message for u in new), "warning")
            if self._root is not None:
                self._render_loaded()
                self._notify()
        return new

    def _on_tick(self, _sample: Any) -> None:
        try:
            self.check_idle_unloads()
        except WorkbenchError as exc:
            self.show_error(exc)
        if self._device_throttle.ready() and not self.busy:
            try:
                self.refresh_devices()
            except WorkbenchError as exc:
                self.show_error(exc)

    def _render_check(self, _change: Any = None) -> None:
        if not hasattr(self, "_check_w"):
            return
        four_bit = self.quant in FOUR_BIT
        saved = self.saved_quantization()
        self._quant_w.description = f"quant ({saved})" if saved else "quant"
        self._quant_w.disabled = bool(saved)
        self._dq_w.disabled = not four_bit
        self._compute_w.disabled = not four_bit
        self._check_w.value = self.check_html()

    def check_html(self) -> str:
        """The fit check as a coloured line (green fits, yellow does not, with a suggestion; blue unknown)
        over the table of what it needs on each device, part by part: the Store tab's table, same rule."""
        try:
            check = self.check()
            table = fit_table_html([check])
            if check.fits is False:
                return banner_html(f"{check.message}. {self.suggestion(check).capitalize()}.", "warning") + table
        except WorkbenchError as exc:
            return banner_html(str(exc), "error")
        return banner_html(check.message, "ok" if check.fits else "info") + table

    def _render_loaded(self) -> None:
        if not hasattr(self, "_loaded_w"):
            return
        loaded = self.loaded()
        self._loaded_w.value = loaded_table_html(loaded)
        names = [m.name for m in loaded]
        self._unload_pick.options = names
        self._unload_pick.value = names[-1] if names else None
        self._unload_button.disabled = not names
        if self._next_step is not None:
            self._next_button.description = self._next_step[0]
        self._next_button.layout.display = "" if names and self._next_step is not None else "none"

    def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        super().close()

    # --- static ----------------------------------------------------------------------------

    def static_html(self, plots: bool = True) -> str:
        """Devices with free memory, the current selection's estimate check, and the loaded models."""
        rows = []
        for d in self.device_records:
            leases, procs = device_holders(d.name)
            rows.append([d.name, d.label, format_bytes(d.memory_free_bytes), format_bytes(d.memory_total_bytes),
                         "; ".join(leases) or "-", UNKNOWN_PROCESSES if procs is None else "; ".join(procs) or "-"])
        parts = [html_table(["Device", "Label", "Free", "Total", "Leases", "Held by"], rows, caption="Devices"),
                 self.check_html()]
        parts.append(loaded_table_html(self.loaded()))
        return "".join(parts)
