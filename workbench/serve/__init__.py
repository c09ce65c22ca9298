"""Serving: store models through real engines (vLLM, ``transformers serve``), and any OpenAI-compatible endpoint.

The workbench does not serve or batch itself: it checks a model as a load would,
starts an engine as a subprocess on 127.0.0.1, waits until it answers, records
it in the endpoint registry, and stops it (its process group) when asked or when
the kernel that started it exits. Prompting goes through the official ``openai``
client. Importing this package is cheap; names resolve on first use.

Example:
    >>> from workbench.serve import EndpointClient, serve, stop
    >>> ep = serve("SmolLM2-135M-Instruct", engine="transformers")  # doctest: +SKIP
    >>> EndpointClient(ep).chat("What is the capital of France?").text  # doctest: +SKIP
    'The capital of France is Paris.'
    >>> stop(ep.name).was_running  # doctest: +SKIP
    True
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "Endpoint": "endpoint",
    "EndpointEngine": "endpoint",
    "Engine": "engines",
    "EngineChoice": "engines",
    "EndpointRegistry": "registry",
    "EndpointStatus": "registry",
    "ServePlan": "launch",
    "StopReport": "launch",
    "plan_serve": "launch",
    "serve": "launch",
    "start": "launch",
    "stop": "launch",
    "ChatResult": "client",
    "EndpointClient": "client",
    "run_endpoint": "client",
    "VllmArgs": "engines",
    "derive_vllm_args": "vllm_memory",
}

# Moved to workbench.telemetry with the engine and DCGM watchers (f18fa1d); kept here, deprecated,
# for code written against the releases that exported them from workbench.serve.
_MOVED = {name: "workbench.telemetry" for name in (
    "VllmMetrics", "DcgmGpu", "parse_vllm", "parse_dcgm", "scrape", "EngineWatcher", "DcgmWatcher", "MetricsWatcher")}

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS, deprecated=_MOVED)
__all__ = sorted(_EXPORTS)
