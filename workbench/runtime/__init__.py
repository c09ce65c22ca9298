"""The runtime: load models onto chosen devices, quantize, generate, unload.

Importing this package is cheap (no torch, transformers or bitsandbytes): they load
inside the functions that need them. Names resolve lazily on first use.

Example:
    >>> from workbench.runtime import GenerationParams, LoadSpec, generate, get_registry
    >>> reg = get_registry()
    >>> m = reg.load(LoadSpec("SmolLM2-135M-Instruct", quant="nf4"))  # doctest: +SKIP
    >>> generate(m, "What is the capital of France?", GenerationParams(temperature=0)).text  # doctest: +SKIP
    'The capital of France is Paris.'
    >>> reg.unload(m.name).freed_bytes > 0  # doctest: +SKIP
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "LoadSpec": "spec",
    "LoadProgress": "spec",
    "LoadPhase": "spec",
    "tqdm_progress": "spec",
    "FitCheck": "fit",
    "DeviceBudget": "fit",
    "DeviceOffer": "fit",
    "check_fit": "fit",
    "fit_table": "fit",
    "placement_plan": "fit",
    "LoadedModel": "registry",
    "Registry": "registry",
    "UnloadPlan": "registry",
    "UnloadReport": "registry",
    "get_registry": "registry",
    "GenerationParams": "generation",
    "GenerationResult": "generation",
    "StoppedBy": "generation",
    "Prompt": "prompts",
    "Stream": "streaming",
    "StreamFeed": "streaming",
    "Piece": "streaming",
    "RunResult": "metrics",
    "generate": "generation",
    "generate_batch": "generation",
    "stream": "generation",
    "render_prompt": "prompts",
    "measure_bandwidth": "bandwidth",
    "RunReport": "oneshot",
    "run_once": "oneshot",
}

if TYPE_CHECKING:  # pragma: no cover
    from .bandwidth import measure_bandwidth  # noqa: F401
    from .fit import DeviceBudget, DeviceOffer, FitCheck, check_fit, fit_table, placement_plan  # noqa: F401
    from .generation import (  # noqa: F401
        GenerationParams,
        GenerationResult,
        StoppedBy,
        generate,
        generate_batch,
        stream,
    )
    from .metrics import RunResult  # noqa: F401
    from .oneshot import RunReport, run_once  # noqa: F401
    from .prompts import Prompt, render_prompt  # noqa: F401
    from .registry import LoadedModel, Registry, UnloadPlan, UnloadReport, get_registry  # noqa: F401
    from .spec import LoadPhase, LoadProgress, LoadSpec, tqdm_progress  # noqa: F401
    from .streaming import Piece, Stream, StreamFeed  # noqa: F401


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)


__all__ = sorted(_EXPORTS)
