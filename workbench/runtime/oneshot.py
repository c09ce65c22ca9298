"""``workbench run``: load a model, generate once, unload; one report.

Example:
    >>> r = run_once("SmolLM2-135M-Instruct", "What is the capital of France?", quant="nf4")  # doctest: +SKIP
    >>> "Paris" in r.text  # doctest: +SKIP
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .._records import Record
from ..precision import Dtype, Quant
from ..store import format_bytes
from .spec import LoadProgress, LoadSpec, devices_tuple

if TYPE_CHECKING:
    from .generation import StoppedBy


@dataclass(frozen=True)
class RunReport(Record):
    """What ``workbench run`` prints (ARCHITECTURE.md section 3), plus the details behind it."""

    text: str
    prompt_tokens: int
    new_tokens: int
    ttft_s: float
    tokens_per_s: float
    load_s: float
    footprint_bytes: int
    devices: list[str]
    model: str = ""
    dtype: str = ""
    quant: str = "none"
    stopped_by: StoppedBy | Literal[""] = ""
    total_s: float = 0.0
    estimate_bytes: int | None = None
    placement: dict[str, int] = field(default_factory=dict)
    decode_efficiency: float | None = None
    bandwidth_bytes_per_s: float | None = None
    freed_bytes: int = 0
    engine: str = "transformers"
    reasoning: str = ""
    interrupted: bool = False

    @property
    def footprint_str(self) -> str:
        return format_bytes(self.footprint_bytes)


def run_once(
    name: str,
    prompt: str,
    *,
    devices: str | Sequence[str] = ("cpu",),
    dtype: Dtype = "auto",
    quant: Quant = "none",
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    seed: int | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    progress: Callable[[str], Any] | None = None,
    system_prompt: str | None = None,
    engine: str = "auto",
    n_ctx: int | None = None,
    stream_to: Callable[[Any], bool] | None = None,
    allow_unknown_cache: bool = False,
) -> RunReport:
    """Load ``name``, answer ``prompt`` once, unload (also when generation fails).

    Args:
        progress: called with one line per load phase (the CLI prints them on stderr).
        system_prompt: a system message (a chat template's own default applies without one).
        engine, n_ctx, allow_unknown_cache: as :class:`~workbench.runtime.spec.LoadSpec` (llama.cpp for GGUF
            entries by default).
        stream_to: reads the generation's :class:`~workbench.runtime.streaming.Stream` (the CLI
            prints it as it arrives) and returns whether it was interrupted (``interrupted``
            in the report; what arrived is kept).

    Raises:
        The runtime's typed errors (:class:`~workbench.errors.WorkbenchError`).
    """
    from .generation import GenerationParams, generate, stream
    from .registry import get_registry

    spec = LoadSpec(name, devices=devices_tuple(devices), dtype=dtype, quant=quant,
                    allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                    engine=engine, n_ctx=n_ctx, allow_unknown_cache=allow_unknown_cache)  # type: ignore[arg-type]
    last_phase: list[str] = []

    def on_progress(p: LoadProgress) -> None:
        # One line per phase change: a terminal, not a progress bar.
        if progress is not None and (not last_phase or last_phase[-1] != p.phase):
            last_phase.append(p.phase)
            progress(f"[{p.percent_str:>4}] {p.phase}: {p.message}")

    registry = get_registry()
    loaded = registry.load(spec, progress=on_progress)
    try:
        params = GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                                  system_prompt=system_prompt)
        interrupted = False
        if stream_to is None:
            result = generate(loaded, prompt, params)
        else:
            s = stream(loaded, prompt, params)
            interrupted = stream_to(s)
            result = s.wait()
    finally:
        unload = registry.unload(loaded.name)
    return RunReport(
        text=result.text, prompt_tokens=result.prompt_tokens, new_tokens=result.new_tokens, ttft_s=result.ttft_s,
        tokens_per_s=result.tokens_per_s, load_s=loaded.load_s, footprint_bytes=loaded.footprint_bytes,
        devices=list(loaded.devices), model=loaded.entry.name, dtype=loaded.estimate.dtype if loaded.estimate else dtype,
        # A pre-quantized checkpoint runs with its own quantization, whatever --quant said (it must be none).
        quant=loaded.entry.quantization if loaded.entry.quant_method else quant, stopped_by=result.stopped_by, total_s=result.total_s,
        estimate_bytes=loaded.estimate.weights_bytes if loaded.estimate else None, placement=dict(loaded.placement),
        decode_efficiency=result.decode_efficiency, bandwidth_bytes_per_s=result.bandwidth_bytes_per_s,
        freed_bytes=unload.freed_bytes, engine=loaded.engine, reasoning=result.reasoning, interrupted=interrupted,
    )
