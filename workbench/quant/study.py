"""Compare quantization variants of one model on one device: memory, speed, quality.

Each variant is loaded, measured and unloaded in turn, so only one copy of the
model is ever held and the memory between variants is checked to come back. The
first variant is the baseline that quality is compared against (bfloat16 by
default): perplexity on a held-out text, mean KL divergence of next-token
distributions, and how often greedy continuations pick the same tokens.

GGUF variants run on llama.cpp beside the bitsandbytes ones (:mod:`.gguf_variants`):
``gguf:NAME`` a store GGUF entry, ``gguf`` every store GGUF of the same model (by name:
:func:`~workbench.quant.gguf_variants.same_model`), ``llamacpp:Q8_0`` / ``llamacpp:Q4_K_M``
written by llama.cpp's own quantizer from an F16/BF16/F32 GGUF (``gguf_source``, else the
store's unquantized GGUF of the model, else one written from its safetensors by
:mod:`.gguf_write`), ``llamacpp:F16`` that source itself. Files the study writes go to a
temporary folder (``work_dir``, default under the system's temporary directory) removed
when it ends. Their quality comes from llama.cpp's logits on the baseline tokenizer's ids.

Example:
    >>> from workbench.quant import compare
    >>> study = compare("SmolLM2-135M-Instruct", device="cpu")  # doctest: +SKIP
    >>> study.recommendation().reason  # doctest: +SKIP
    'nf4: 41% of the memory, perplexity +3.1%, 0.9x speed on cpu'
"""

from __future__ import annotations

import gc
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._records import Record
from ..errors import ConfigError, LoadCancelledError, WorkbenchError
from ..precision import LABELS, ComputeDtype, Dtype, Precision, Quant
from ..store.entry import format_bytes

if TYPE_CHECKING:
    from ..runtime.registry import LoadedModel, Registry

DEFAULT_PROMPTS = (
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "List three colours.",
)


@dataclass(frozen=True)
class Variant:
    """One precision to try: a dtype and a bitsandbytes quantization (``none|int8|nf4|fp4``)."""

    label: str
    dtype: Dtype = "bfloat16"
    quant: Quant = "none"
    double_quant: bool = False
    compute_dtype: ComputeDtype | None = None
    gguf_entry: str | None = None  # a store GGUF entry, run on llama.cpp as stored
    llamacpp_type: str | None = None  # a llama.cpp file type the study quantizes to (or F16: the source)

    @property
    def engine(self) -> str:
        return "llamacpp" if self.gguf_entry or self.llamacpp_type else "transformers"

    @classmethod
    def parse(cls, text: str) -> Variant:
        """``"bfloat16"``, ``"float32"``, ``"int8"``, ``"nf4"``, ``"nf4+dq"``, ``"fp4"``, ``"fp4+dq"``;
        ``"gguf:NAME"`` (a store GGUF entry), ``"llamacpp:Q8_0"``, ``"llamacpp:Q4_K_M"``, ``"llamacpp:F16"``.

        Raises:
            ConfigError: an unknown label, or +dq on a precision that is not 4-bit.
        """
        from .gguf_variants import QUANTIZE_TYPES

        if text.startswith("gguf:") and text[5:]:
            return cls(text, gguf_entry=text[5:])
        if text.startswith("llamacpp:"):
            kind = text[9:]
            if kind not in (*QUANTIZE_TYPES, "F16"):
                raise ConfigError(f"variant {text!r} is not known",
                                  hint=f"llama.cpp variants: {', '.join('llamacpp:' + t for t in (*QUANTIZE_TYPES, 'F16'))}")
            return cls(text, llamacpp_type=kind)
        p = Precision.parse(text)
        if p.dtype == "auto":  # a study compares fixed precisions; "auto" would differ per model
            raise ConfigError(f"variant {text!r} is not known", hint=f"use one of {', '.join(LABELS)}")
        return cls(p.label, dtype=p.dtype, quant=p.quant, double_quant=p.double_quant)


DEFAULT_VARIANTS = tuple(Variant.parse(v) for v in ("bfloat16", "int8", "nf4", "nf4+dq", "fp4"))


@dataclass(frozen=True)
class VariantResult(Record):
    """What one variant measured; ``error`` is set (and the numbers None) when it could not run."""

    _json_properties = ("estimate_error",)

    variant: Variant
    error: str | None = None
    footprint_bytes: int | None = None
    estimate_bytes: int | None = None
    load_s: float | None = None
    ttft_s: float | None = None
    tokens_per_s: float | None = None
    decode_efficiency: float | None = None
    perplexity: float | None = None
    kl_divergence: float | None = None
    token_match_rate: float | None = None
    rss_after_unload_bytes: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def estimate_error(self) -> float | None:
        if not (self.footprint_bytes and self.estimate_bytes):
            return None
        return self.estimate_bytes / self.footprint_bytes - 1

    def to_dict(self) -> dict[str, Any]:
        """The fields and ``estimate_error``, with the variant by its label."""
        d = super().to_dict()
        d["variant"] = self.variant.label
        return d


@dataclass(frozen=True)
class Recommendation:
    label: str
    reason: str


@dataclass(frozen=True)
class QuantStudy:
    """Rows of measurements, one per variant, with the baseline first."""

    model: str
    device: str
    rows: tuple[VariantResult, ...]
    eval_tokens: int
    eval_source: str
    cancelled: bool = False
    started_at: float = field(default_factory=time.time)

    @property
    def baseline(self) -> VariantResult | None:
        return self.rows[0] if self.rows and self.rows[0].ok else None

    def table(self) -> list[dict[str, Any]]:
        """One dict per variant: the raw numbers plus ratios against the baseline."""
        base = self.baseline
        out = []
        for r in self.rows:
            d = r.to_dict()
            if base and r.ok:
                d["memory_ratio"] = r.footprint_bytes / base.footprint_bytes if base.footprint_bytes else None
                d["speed_ratio"] = r.tokens_per_s / base.tokens_per_s if base.tokens_per_s else None
                d["perplexity_change"] = r.perplexity / base.perplexity - 1 if base.perplexity else None
            out.append(d)
        return out

    def recommendation(self, max_perplexity_increase: float = 0.05, max_kl: float = 0.1) -> Recommendation:
        """The smallest variant whose quality stays within the bounds, with the reason in words.

        A variant qualifies when its perplexity is at most ``max_perplexity_increase``
        above the baseline's and its mean KL divergence from the baseline is at most
        ``max_kl`` nats. Among those, the smallest footprint wins. The greedy token
        match is reported but does not decide: continuations that part at one token
        differ at every position after it, so with a few short prompts it swings
        far more than the model's quality does.
        """
        base = self.baseline
        if base is None:
            return Recommendation("none", "the baseline did not run, so nothing can be compared")
        rows = {r.variant.label: r for r in self.rows}
        good = []
        for d in self.table()[1:]:
            if d["error"] is None and d.get("perplexity_change") is not None \
                    and d["perplexity_change"] <= max_perplexity_increase \
                    and d["kl_divergence"] is not None and d["kl_divergence"] <= max_kl:
                good.append(d)
        if not good:
            return Recommendation(base.variant.label,
                                  f"{base.variant.label}: no quantized variant kept perplexity within "
                                  f"+{max_perplexity_increase:.0%} and KL divergence under {max_kl:g} nats")
        best = min(good, key=lambda d: d["footprint_bytes"])
        r = rows[best["variant"]]
        return Recommendation(r.variant.label,
                              f"{r.variant.label}: {best['memory_ratio']:.0%} of the memory, perplexity "
                              f"{best['perplexity_change']:+.1%}, {best['speed_ratio']:.2g}x speed on {self.device}")

    def to_dict(self) -> dict[str, Any]:
        rec = self.recommendation()
        return {"model": self.model, "device": self.device, "eval_tokens": self.eval_tokens,
                "eval_source": self.eval_source, "cancelled": self.cancelled, "rows": self.table(),
                "recommendation": {"label": rec.label, "reason": rec.reason}}

    def format_table(self) -> str:
        """A fixed-width text table for the terminal and bench output."""
        head = ["variant", "memory", "est.err", "load s", "ttft s", "tok/s", "ppl", "KL", "match", "note"]
        lines = []
        for d in self.table():
            if d["error"]:
                lines.append([d["variant"], "-", "-", "-", "-", "-", "-", "-", "-", d["error"][:60]])
                continue
            lines.append([
                d["variant"], format_bytes(d["footprint_bytes"]),
                f"{d['estimate_error']:+.1%}" if d["estimate_error"] is not None else "-",
                f"{d['load_s']:.2f}", f"{d['ttft_s']:.3f}", f"{d['tokens_per_s']:.1f}", f"{d['perplexity']:.2f}",
                f"{d['kl_divergence']:.4f}", f"{d['token_match_rate']:.0%}", "",
            ])
        widths = [max(len(str(x[i])) for x in [head, *lines]) for i in range(len(head))]
        return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *lines])


Progress = Callable[[str, float], None]


def compare(
    model: str,
    variants: Sequence[Variant | str] = DEFAULT_VARIANTS,
    device: str = "cpu",
    *,
    text: str | None = None,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    max_eval_tokens: int = 1024,
    kl_tokens: int = 256,
    new_tokens: int = 24,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    registry: Registry | None = None,
    gguf_source: str | Path | None = None,
    work_dir: str | Path | None = None,
    window: int = 512,
    allow_unknown_cache: bool = False,
) -> QuantStudy:
    """Load, measure and unload each variant of ``model`` on ``device`` in turn.

    Args:
        model: a store entry name.
        variants: :class:`Variant` objects or their labels; the first is the baseline.
        device: ``"cpu"`` or ``"cuda:N"``.
        text: evaluation text (default: the shipped public-domain chapters).
        prompts: prompts whose greedy continuations are compared with the baseline's.
        max_eval_tokens: tokens of ``text`` scored for perplexity.
        kl_tokens: positions whose full next-token distributions are compared (KL).
        new_tokens: tokens generated per prompt, for speed and agreement.
        progress: called with ``(message, fraction)``.
        cancel: set it to stop after the current step; whatever is loaded is unloaded.
        gguf_source: the F16/BF16/F32 GGUF (a store entry name or a file) ``llamacpp:`` variants
            are quantized from; default the store's unquantized GGUF of ``model``, else one
            written from ``model``'s safetensors (llama models).
        work_dir: where quantized GGUFs are written (a temporary folder inside it, removed at the end).
        window: tokens scored at once for perplexity and KL (every row alike).
        allow_unknown_cache: load each variant even when the store cannot measure the model's cache
            (as :class:`~workbench.runtime.spec.LoadSpec`'s; without it such a variant is a row with
            ``error`` naming the unknown part and this option).

    A variant that fails (unsupported on this backend, out of memory) becomes a
    row with ``error`` set; the others still run.

    Raises:
        ConfigError: no variants, or a label :meth:`Variant.parse` does not know.
    """
    from ..runtime import LoadSpec, get_registry
    from .metrics import EVAL_TEXT_SOURCE, default_eval_text, match_rate, mean_kl

    registry = registry or get_registry()
    parsed = _expand(variants, model, registry)
    if not parsed:
        raise ConfigError("no variants to compare", hint="pass at least a baseline such as 'bfloat16'")
    eval_text = text if text is not None else default_eval_text()
    source = "user text" if text is not None else EVAL_TEXT_SOURCE
    say = progress or (lambda msg, frac: None)
    rows: list[VariantResult] = []
    base_logprobs = None
    base_tokens: list[list[int]] | None = None
    eval_count = 0
    steps = len(parsed)

    def cancelled() -> bool:
        return cancel is not None and cancel.is_set()

    ggufs = _GGUFFiles(model, registry, gguf_source, work_dir)
    reference_tokenizer = None
    try:
        for i, variant in enumerate(parsed):
            if cancelled():
                break
            say(f"{variant.label}: loading", i / steps)
            loaded = None
            try:
                if variant.engine == "llamacpp":
                    say(f"{variant.label}: preparing the GGUF", i / steps)
                    entry = ggufs.entry(variant)
                    spec = LoadSpec(model=entry, devices=(device,), engine="llamacpp", n_ctx=window + 64,
                                    name=f"{model}@study-{variant.label}", allow_unknown_cache=allow_unknown_cache)
                else:
                    spec = LoadSpec(model=model, devices=(device,), dtype=variant.dtype, quant=variant.quant,
                                    double_quant=variant.double_quant, compute_dtype=variant.compute_dtype,
                                    name=f"{model}@study-{variant.label}", allow_unknown_cache=allow_unknown_cache)
                loaded = registry.load(spec, cancel=cancel)
                if reference_tokenizer is None and variant.engine == "transformers":
                    reference_tokenizer = loaded.tokenizer
                row, tokens, score = _measure(
                    loaded, model, variant, prompts, eval_text, max_eval_tokens=max_eval_tokens, kl_tokens=kl_tokens,
                    new_tokens=new_tokens, say=lambda msg, at, i=i: say(msg, (i + at) / steps), cancelled=cancelled,
                    reference_tokenizer=reference_tokenizer, window=window)
                eval_count = eval_count or score.tokens
                if i == 0:
                    base_tokens, base_logprobs = tokens, score.logprobs
                if base_tokens is not None:  # quality is relative: only when the baseline ran
                    same_vocab = base_logprobs.shape[-1] == score.logprobs.shape[-1]
                    row = replace(row, kl_divergence=mean_kl(base_logprobs, score.logprobs) if same_vocab else None,
                                  token_match_rate=match_rate(base_tokens, tokens))
            except LoadCancelledError:
                break
            except WorkbenchError as exc:
                row = VariantResult(variant, error=str(exc))
            except (RuntimeError, ValueError, ImportError, NotImplementedError, OSError) as exc:
                # bitsandbytes (and llama.cpp's bindings) report a missing backend or kernel as plain errors.
                row = VariantResult(variant, error=f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
            finally:
                rss = registry.unload(loaded.name).rss_after_bytes if loaded is not None else None
                loaded = None
                gc.collect()
            rows.append(replace(_finite(row), rss_after_unload_bytes=rss))
    finally:
        ggufs.cleanup()
    say("done", 1.0)
    return QuantStudy(model=model, device=device, rows=tuple(rows), eval_tokens=eval_count, eval_source=source,
                      cancelled=cancelled())


def _measure(loaded: LoadedModel, model: str, variant: Variant, prompts: Sequence[str], eval_text: str, *, max_eval_tokens: int,
             kl_tokens: int, new_tokens: int, say: Callable[[str, float], None],
             cancelled: Callable[[], bool], reference_tokenizer: Any = None,
             window: int = 512) -> tuple[VariantResult, list[list[int]], Any]:
    """One loaded variant's row (memory, speed, perplexity), its greedy tokens and its text score.

    ``say(message, fraction_of_this_variant)`` reports progress.

    Raises:
        LoadCancelledError: ``cancelled()`` became true after generating.
    """
    from ..runtime import GenerationParams, generate
    from .metrics import greedy_tokens, score_text

    row = VariantResult(variant, footprint_bytes=loaded.footprint_bytes,
                        estimate_bytes=loaded.estimate.weights_bytes if loaded.estimate else None,
                        load_s=loaded.load_s)
    say(f"{variant.label}: generating", 0.3)
    gen = generate(loaded, prompts[0], GenerationParams(max_new_tokens=new_tokens, temperature=0.0))
    row = replace(row, ttft_s=gen.ttft_s, tokens_per_s=gen.tokens_per_s, decode_efficiency=gen.decode_efficiency)
    if cancelled():
        raise LoadCancelledError(f"study of {model} cancelled during {variant.label}")
    say(f"{variant.label}: scoring the evaluation text", 0.5)
    if variant.engine == "llamacpp":
        from .gguf_variants import GGUFScorer, prompt_ids, reference_ids

        tok = reference_tokenizer or loaded.tokenizer  # the baseline's ids, so positions line up
        with GGUFScorer(loaded.model.path, window) as scorer:
            score = scorer.score(reference_ids(tok, eval_text, max_eval_tokens), keep_logprobs=kl_tokens)
            tokens = [scorer.greedy(prompt_ids(tok, p), new_tokens) for p in prompts]
        return replace(row, perplexity=score.perplexity), tokens, score
    score = score_text(loaded.model, loaded.tokenizer, eval_text, max_tokens=max_eval_tokens,
                       keep_logprobs=kl_tokens, window=window)
    tokens = [greedy_tokens(loaded.model, loaded.tokenizer, p, new_tokens) for p in prompts]
    return replace(row, perplexity=score.perplexity), tokens, score


def _expand(variants: Sequence[Variant | str], model: str, registry: Registry) -> list[Variant]:
    """The variants parsed, with ``"gguf"`` replaced by the store's GGUF entries of ``model`` (by name)."""
    out: list[Variant] = []
    for v in variants:
        if v == "gguf":
            from .gguf_variants import store_ggufs

            base = registry.store.get(model)
            out += [Variant(f"gguf:{e.name}", gguf_entry=e.name) for e in store_ggufs(registry.store.list(), base)]
        else:
            out.append(v if isinstance(v, Variant) else Variant.parse(v))
    return out


class _GGUFFiles:
    """The GGUF entries behind a study's llama.cpp variants; writes and quantizes into a temporary folder."""

    def __init__(self, model: str, registry: Registry, source: str | Path | None, work_dir: str | Path | None) -> None:
        self.model, self.registry, self.source_arg, self.work_dir = model, registry, source, work_dir
        self.tmp: Path | None = None
        self._source: Path | None = None

    def _folder(self) -> Path:
        if self.tmp is None:
            import tempfile

            self.tmp = Path(tempfile.mkdtemp(prefix="workbench-quant-", dir=self.work_dir))
        return self.tmp

    def source(self) -> Path:
        """The unquantized GGUF file: given, the store's, or written from the safetensors."""
        if self._source is not None:
            return self._source
        from .gguf_variants import UNQUANTIZED_TYPES, store_ggufs
        from .gguf_write import write_gguf

        store = self.registry.store
        if self.source_arg is not None:
            arg = Path(self.source_arg)
            if arg.suffix == ".gguf" and arg.is_file():
                self._source = arg
            else:
                e = store.get(str(self.source_arg))
                if e.format != "gguf" or (e.dtype or "").upper() not in UNQUANTIZED_TYPES:
                    raise ConfigError(f"gguf_source {e.name!r} is a {e.format} entry of type {e.dtype or 'unknown'}, "
                                      "not an unquantized GGUF to quantize from",
                                      hint=f"give a GGUF of type {', '.join(UNQUANTIZED_TYPES)}, or leave gguf_source "
                                           "unset to write one from the safetensors model")
                self._source = e.folder / (e.gguf_file or "")
            return self._source
        base = store.get(self.model)
        for e in store_ggufs(store.list(), base):
            if (e.dtype or "").upper() in UNQUANTIZED_TYPES:
                self._source = e.folder / (e.gguf_file or "")
                return self._source
        self._source = write_gguf(base.folder, self._folder() / f"{base.name}-F16.gguf", out_type="F16",
                                  weight_files=base.weight_files)
        return self._source

    def entry(self, variant: Variant) -> Any:
        """The :class:`~workbench.store.ModelEntry` to load for a llama.cpp variant."""
        from ..store import ModelStore
        from .gguf_variants import quantize

        if variant.gguf_entry:
            return self.registry.store.get(variant.gguf_entry)
        src = self.source()
        if variant.llamacpp_type == "F16":
            path = src
        else:
            path = quantize(src, self._folder() / f"{self.model}-{variant.llamacpp_type}.gguf", variant.llamacpp_type)
        entry = next((e for e in ModelStore([path.parent], cache_path=None).list() if e.gguf_file == path.name), None)
        if entry is None:
            raise WorkbenchError(f"the store does not read {path} as a GGUF entry", hint="the file may be incomplete")
        return entry

    def cleanup(self) -> None:
        if self.tmp is not None:
            import shutil

            shutil.rmtree(self.tmp, ignore_errors=True)


def _finite(row: VariantResult) -> VariantResult:
    """The row, marked failed when its perplexity is not a finite number."""
    if row.ok and row.perplexity is not None and not math.isfinite(row.perplexity):
        return replace(row, error=f"perplexity is {row.perplexity}: the quantized model's outputs are not finite")
    return row
