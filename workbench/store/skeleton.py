"""The one bound on what asking transformers about a model may cost: skeleton builds and meta runs.

Estimates ask the installed transformers what a load materialises by building the
model on the ``meta`` device (:mod:`workbench.store.layout`), and may run it there.
That costs no tensor memory, but every module is a Python object and every layer is
Python code: a ``config.json`` declaring a million layers would build a million
modules (gigabytes, minutes) in the kernel. Everything that builds or runs a
skeleton does it inside :func:`skeleton_budget`, which:

* refuses a config whose layer counts are above
  :data:`~workbench.store.limits.SKELETON_MAX_LAYERS` before anything is built
  (configs expand per-layer lists in Python before the first module exists);
* counts the modules, parameters and buffers the building thread registers, through
  torch's global registration hooks, and abandons the build past
  :data:`~workbench.store.limits.SKELETON_MAX_MODULES` modules;
* abandons it past :data:`~workbench.store.limits.SKELETON_MAX_S` seconds of the building
  thread's CPU time (``time.thread_time``: a busy machine's waits do not count), checked at
  every registration and every module's forward call (a meta forward pass). Import the
  model's classes before entering: a first import of torch code is not the skeleton's cost.

The hooks see only the thread that entered the budget, so a real load in another
thread is never counted or interrupted. A tripped budget stays tripped: if library
code swallows the first error, the next registration raises again, and leaving the
block raises in any case.

Example:
    >>> with skeleton_budget("tiny-llama"):  # doctest: +SKIP
    ...     model = AutoModelForCausalLM.from_config(config)
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from ..errors import EstimateUnavailableError
from . import limits

_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "num_decoder_layers", "encoder_layers",
               "decoder_layers", "num_encoder_layers")
_SUB_CONFIGS = ("text_config", "vision_config", "audio_config", "decoder", "encoder", "llm_config")


def check_config_counts(config: Mapping[str, Any], what: str, *, max_layers: int = limits.SKELETON_MAX_LAYERS) -> None:
    """Refuse a config (``config.json`` as a dict) whose layer counts no skeleton should be built for.

    Raises:
        EstimateUnavailableError: a layer count above ``max_layers``, here or in a sub-config.
    """
    stack: list[tuple[str, Mapping[str, Any]]] = [("", config)]
    while stack:
        prefix, cfg = stack.pop()
        for key in _LAYER_KEYS:
            value = cfg.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > max_layers:
                raise EstimateUnavailableError(
                    f"{what}: config.json declares {prefix}{key} = {value}, more layers than the {max_layers} "
                    "the workbench builds a skeleton for", hint="the model's memory cannot be measured; check its "
                    "config.json", name=what, reason="layers")
        for sub in _SUB_CONFIGS:
            inner = cfg.get(sub)
            if isinstance(inner, Mapping) and len(prefix) < 64:
                stack.append((f"{prefix}{sub}.", inner))


class _Budget:
    def __init__(self, what: str, max_modules: int, max_s: float) -> None:
        self.what = what
        self.max_modules = max_modules
        self.max_s = max_s
        self.thread = threading.get_ident()
        self.deadline = time.thread_time() + max_s
        self.modules = 0
        self.tripped: EstimateUnavailableError | None = None

    def _trip(self, reason: str, message: str) -> None:
        if self.tripped is None:
            self.tripped = EstimateUnavailableError(
                f"{self.what}: {message}", hint="the model's memory cannot be measured before loading it",
                name=self.what, reason=reason)
        raise self.tripped

    def _check_time(self) -> None:
        if self.tripped is not None:
            raise self.tripped
        if time.thread_time() > self.deadline:
            self._trip("time", f"building its skeleton took more than {self.max_s:g} s of CPU, the workbench's bound")

    def on_module(self, module: Any, name: str, submodule: Any) -> None:
        if threading.get_ident() != self.thread:
            return None
        self.modules += 1
        if self.modules > self.max_modules:
            self._trip("modules", f"the model transformers builds for it has more than {self.max_modules} modules, "
                                  "more than the workbench builds to estimate one")
        self._check_time()
        return None

    def on_tensor(self, module: Any, name: str, tensor: Any) -> None:
        if threading.get_ident() == self.thread:
            self._check_time()
        return None

    def on_forward(self, module: Any, args: Any) -> None:
        if threading.get_ident() == self.thread:
            self._check_time()
        return None


@contextlib.contextmanager
def skeleton_budget(what: str, *, config: Mapping[str, Any] | None = None,
                    max_modules: int = limits.SKELETON_MAX_MODULES,
                    max_s: float = limits.SKELETON_MAX_S) -> Iterator[None]:
    """Build or run a skeleton inside this block, within bounded modules and time.

    Args:
        what: the model's name, for the error.
        config: its ``config.json`` as a dict, checked with :func:`check_config_counts` first.
        max_modules, max_s: the bounds (default :mod:`workbench.store.limits`).

    Raises:
        EstimateUnavailableError: a bound was reached (``reason``: ``"layers"``, ``"modules"``
            or ``"time"``); the block's work was abandoned.
    """
    if config is not None:
        check_config_counts(config, what)
    from torch.nn.modules import module as nn_module

    budget = _Budget(what, max_modules, max_s)
    handles = [
        nn_module.register_module_module_registration_hook(budget.on_module),
        nn_module.register_module_parameter_registration_hook(budget.on_tensor),
        nn_module.register_module_buffer_registration_hook(budget.on_tensor),
        nn_module.register_module_forward_pre_hook(budget.on_forward),
    ]
    try:
        yield
    except EstimateUnavailableError:
        raise
    except Exception:
        if budget.tripped is not None:  # library code wrapped our error in its own
            raise budget.tripped from None
        raise
    finally:
        for h in handles:
            h.remove()
    if budget.tripped is not None:
        raise budget.tripped
