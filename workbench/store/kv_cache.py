"""The cache a model holds for a context, measured from the cache transformers itself builds.

No formula per family: the model transformers builds from ``config.json`` on the
``meta`` device (:mod:`workbench.store.layout`) is run forward on the meta device
(shapes only: no memory, no arithmetic) with ``use_cache=True``, as
``generate()`` runs it, and every tensor of the cache it returns is read:
keys and values, MLA's compressed latents, convolution and recurrent (SSM,
linear-attention) states, whatever the family keeps. Sliding and chunked windows,
layers sharing another layer's keys and values, hybrid layer patterns named any
way: whatever transformers does is right here by construction. The cache is read under
whichever output name ``generate()`` reads it from (``cache``, RWKV's ``state``, XLNet's
``mems``: :func:`workbench._transformers_compat.cache_output`); a forward pass that returns
none but leaves tensors on its modules (recurrent_gemma's states) is unmeasurable, not 0 bytes.

Each tensor of the cache is followed by its place in the cache object
(``layers[3].keys``) through forward passes of :data:`PROBE_LENGTHS` tokens, and one
just past the longest window a cache layer declares (``get_max_length``). Its size at
``t`` tokens is ``fixed + rate x min(t, cap)``: ``rate`` from the first two lengths,
``cap`` (a window) from the longest, and the lengths between check the form; a cache
that does not grow in this form is reported unmeasurable, never extrapolated. Beyond
the longest probe a growing tensor is assumed to keep growing (an upper bound). Elements stored in the model's dtype
scale with the load's dtype; others (float32 states, integer counters) keep their
bytes (the same split :mod:`workbench.store.layout` makes for buffers).

The result, :class:`CacheProfile`, is plain data (cached with the skeleton's other
results in the index cache); nothing here imports torch at import time.

GGUF entries carry no ``config.json`` for transformers to build: their keys and
values follow llama.cpp's cache (:func:`gguf_kv_bytes_per_token`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .._records import Record
from .._transformers_compat import cache_output
from ..errors import EstimateUnavailableError

#: Context lengths of the probing forward passes (see the module docstring).
PROBE_LENGTHS = (1, 2, 100, 1000)
#: Longest context a probe runs (meta tensors are free, but masks and position ids are
#: built for it, and linear-attention layers loop over it in chunks).
MAX_PROBE_TOKENS = 2**17
_MAX_DEPTH = 8


@dataclass(frozen=True)
class CacheGrowth(Record):
    """Cache tensors that grow alike: per token of context, up to ``cap_tokens`` (``None``: every token).

    Attributes:
        cap_tokens: tokens these tensors hold at most (a sliding or chunked window); ``None``: unbounded.
        elements_per_token: elements per token stored in the model's dtype (they scale with it).
        fixed_bytes_per_token: bytes per token of tensors whose dtype does not follow the model's.
    """

    cap_tokens: int | None
    elements_per_token: int
    fixed_bytes_per_token: int = 0


@dataclass(frozen=True)
class CacheProfile(Record):
    """What one sequence's cache holds, as transformers builds it, at any context length.

    Attributes:
        growth: the parts that grow with the context (see :class:`CacheGrowth`).
        state_elements: fixed per sequence, in the model's dtype (conv and recurrent states).
        state_fixed_bytes: fixed per sequence, in dtypes that do not follow the model's.
        measured_tokens: the longest context measured; beyond it every growing part is
            assumed to keep growing (an upper bound).
    """

    growth: tuple[CacheGrowth, ...]
    state_elements: int
    state_fixed_bytes: int
    measured_tokens: int

    def kv_bytes(self, tokens: int, width: int, batch: int = 1) -> int:
        """Bytes that grow with the context, after ``tokens`` tokens, ``width`` bytes an element."""
        total = 0
        for g in self.growth:
            held = tokens if g.cap_tokens is None else min(tokens, g.cap_tokens)
            total += held * (g.elements_per_token * width + g.fixed_bytes_per_token)
        return total * batch

    def state_bytes(self, width: int, batch: int = 1) -> int:
        """Bytes fixed per sequence (conv and recurrent states), ``width`` bytes an element."""
        return (self.state_elements * width + self.state_fixed_bytes) * batch

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CacheProfile:
        """The inverse of ``to_dict()`` (the index cache's JSON).

        Raises:
            KeyError, TypeError, ValueError: not a profile's dict.
        """
        growth = tuple(CacheGrowth(None if g["cap_tokens"] is None else int(g["cap_tokens"]),
                                   int(g["elements_per_token"]), int(g["fixed_bytes_per_token"]))
                       for g in data["growth"])
        return cls(growth, int(data["state_elements"]), int(data["state_fixed_bytes"]),
                   int(data["measured_tokens"]))


def _is_cache_object(obj: Any) -> bool:
    mod = type(obj).__module__ or ""
    return mod.startswith("transformers.") and ("cache" in mod or ".models." in mod)


def cache_tensors(cache: Any) -> Iterator[tuple[str, Any]]:
    """``(place, tensor)`` for every tensor the cache object holds, each once (shared ones at their first place).

    Walks lists, tuples, dicts and the attributes of transformers' cache objects (``Cache``,
    its layers, a model's own cache class), never modules or configs.
    """
    import torch

    seen: set[int] = set()
    stack: list[tuple[str, Any, int]] = [("cache", cache, 0)]
    while stack:
        place, obj, depth = stack.pop()
        if id(obj) in seen or depth > _MAX_DEPTH:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            yield place, obj
        elif isinstance(obj, (list, tuple)):
            stack.extend((f"{place}[{i}]", x, depth + 1) for i, x in enumerate(obj))
        elif isinstance(obj, dict):
            stack.extend((f"{place}[{k!r}]", x, depth + 1) for k, x in obj.items())
        elif not isinstance(obj, (torch.nn.Module, type)) and _is_cache_object(obj) and hasattr(obj, "__dict__"):
            stack.extend((f"{place}.{k}", x, depth + 1) for k, x in vars(obj).items())


def _sizes(cache: Any, dtype: Any) -> dict[str, tuple[int, int]]:
    """``place -> (elements in the model's dtype, bytes of other tensors)``."""
    out: dict[str, tuple[int, int]] = {}
    for place, t in cache_tensors(cache):
        if t.dtype == dtype:
            out[place] = (t.numel(), 0)
        else:
            out[place] = (0, t.numel() * t.element_size())
    return out


def _layer_bounds(cache: Any) -> list[int]:
    """The most tokens each layer of a transformers ``Cache`` says it can hold (``get_max_length``; -1: no bound)."""
    out = []
    for layer in getattr(cache, "layers", None) or ():
        try:
            out.append(int(layer.get_max_length()))
        except (AttributeError, TypeError, ValueError, NotImplementedError):
            out.append(-1)
    return out


def measure_cache(model: Any, what: str) -> CacheProfile:
    """Run ``model`` (built on the meta device) forward and read the cache it returns.

    Probes at :data:`PROBE_LENGTHS` tokens; when a cache layer says it holds at most more
    tokens than the last of them (a window), once more just past that bound (at most
    :data:`MAX_PROBE_TOKENS`), so the window shows. A model whose forward pass fails on the meta
    device is probed once more with transformers' eager attention (SDPA's mask reads values). Call inside
    :func:`workbench.store.skeleton.skeleton_budget`: the forward passes are bounded with the build.

    Args:
        model: a causal LM transformers built on the ``meta`` device.
        what: the model's name, for errors.

    Raises:
        EstimateUnavailableError: the model cannot run on the meta device (``reason="cache"``),
            its cache does not grow as ``fixed + rate x min(tokens, window)``, or it returns no
            cache but keeps state on its modules.
    """
    import torch

    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.bfloat16)
    before = _module_tensors(model)
    try:
        return _probe(model, what, dtype, before)
    except _ForwardFailed as failed:
        # transformers' SDPA mask reads mask values (``padding_mask.all().item()``) the meta device does
        # not have; its eager path builds the mask from shapes alone, and the cache is the same.
        if not _to_eager(model):
            raise failed.error from None
        try:
            return _probe(model, what, dtype, before)
        except _ForwardFailed:
            raise failed.error from None


class _ForwardFailed(Exception):
    """A probe's forward pass failed; ``error`` is what to raise if no other way runs."""

    def __init__(self, error: EstimateUnavailableError) -> None:
        super().__init__(str(error))
        self.error = error


def _to_eager(model: Any) -> bool:
    """Switch ``model`` to transformers' eager attention (``PreTrainedModel.set_attn_implementation``);
    ``False`` when it refuses."""
    try:
        model.set_attn_implementation("eager")
    except (AttributeError, ValueError, TypeError, NotImplementedError, ImportError):
        return False
    return True


def _probe(model: Any, what: str, dtype: Any, before: dict[str, int]) -> CacheProfile:
    """:func:`measure_cache`'s forward passes and fit.

    Raises:
        _ForwardFailed: a forward pass failed (the error names the library's exception).
        EstimateUnavailableError: the cache does not grow in the measurable form, or is kept on modules.
    """
    import torch

    lengths = list(PROBE_LENGTHS)
    runs: list[dict[str, tuple[int, int]]] = []
    i = 0
    while i < len(lengths):
        ids = torch.zeros((1, lengths[i]), dtype=torch.long, device="meta")
        try:
            with torch.no_grad():
                out = model(input_ids=ids, use_cache=True)
        except EstimateUnavailableError:
            raise
        except Exception as exc:  # noqa: BLE001 - any library failure means: not measurable this way
            raise _ForwardFailed(EstimateUnavailableError(
                f"{what}: transformers cannot run it on the meta device to measure its cache "
                f"({type(exc).__name__}: {str(exc)[:200]})",
                hint="its KV cache cannot be measured before loading; load it with allow_unknown_cache "
                     "(`--allow-unknown-cache`, or the Load tab's box) and leave room for the cache yourself",
                name=what, reason="cache")) from None
        cache = cache_output(out)  # `cache`, RWKV's `state`, XLNet's `mems`... (generate()'s names)
        if cache is None and i == 0:
            _no_state_on_modules(model, before, what)
        runs.append(_sizes(cache, dtype) if cache is not None else {})
        if i == len(PROBE_LENGTHS) - 1:
            bound = max([-1, *_layer_bounds(cache)])
            if bound >= lengths[-1]:
                lengths.append(min(bound + 1, MAX_PROBE_TOKENS))
        del out, cache
        i += 1
    return _fit(runs, tuple(lengths), what)


def _module_tensors(model: Any) -> dict[str, int]:
    """``"layers.0.temporal_block.conv1d_state" -> id`` of every tensor a module holds as a plain attribute
    (not a parameter or buffer: those live in the module's own dicts)."""
    import torch

    return {f"{name}.{attr}" if name else attr: id(value) for name, module in model.named_modules()
            for attr, value in vars(module).items() if isinstance(value, torch.Tensor)}


def _no_state_on_modules(model: Any, before: dict[str, int], what: str) -> None:
    """A forward pass that returned no cache must not have left state on the model's modules instead.

    Some families (``recurrent_gemma``) keep their recurrent and convolution states as module
    attributes rather than in a cache object; what they hold is not in any output, so it cannot be
    measured here: unavailable, never a cache of 0 bytes.

    Raises:
        EstimateUnavailableError: ``reason="cache"``, naming the first such attribute.
    """
    kept = sorted(k for k, v in _module_tensors(model).items() if before.get(k) != v)
    if kept:
        raise EstimateUnavailableError(
            f"{what}: its forward pass returns no cache but keeps state on its modules ({kept[0]}"
            f"{f' and {len(kept) - 1} more' if len(kept) > 1 else ''}), which cannot be measured before loading",
            hint="load it with allow_unknown_cache (`--allow-unknown-cache`, or the Load tab's box) and leave "
                 "room for its state yourself",
            name=what, reason="cache")


def _fit(runs: list[dict[str, tuple[int, int]]], lengths: tuple[int, ...], what: str) -> CacheProfile:
    """Per tensor place: ``fixed + rate x min(t, cap)`` from the runs at ``lengths`` (``1, 2, check..., longest``)."""
    places = sorted(set().union(*runs))
    growth: dict[int | None, list[int]] = {}
    state = [0, 0]
    longest = lengths[-1]

    def bad(place: str) -> EstimateUnavailableError:
        seen = ", ".join(f"{n} tokens: {sum(r.get(place, (0, 0)))}" for n, r in zip(lengths, runs))
        return EstimateUnavailableError(
            f"{what}: its cache tensor {place} does not grow as held tokens times a size ({seen})",
            hint="its KV cache cannot be measured before loading", name=what, reason="cache")

    for place in places:
        sizes = [r.get(place, (0, 0)) for r in runs]
        for k in (0, 1):  # elements in the model's dtype, then other bytes
            at = [s[k] for s in sizes]
            rate = at[1] - at[0]
            fixed = at[0] - rate
            if rate < 0 or fixed < 0:
                raise bad(place)
            if rate == 0:
                if any(a != at[0] for a in at):
                    raise bad(place)
                state[k] += fixed
                continue
            held, rem = divmod(at[-1] - fixed, rate)
            if rem or held > longest or held < 2:
                raise bad(place)
            cap = None if held == longest else held
            for n, a in zip(lengths[2:-1], at[2:-1]):
                if a != fixed + rate * (n if cap is None else min(n, cap)):
                    raise bad(place)
            state[k] += fixed
            slot = growth.setdefault(cap, [0, 0])
            slot[k] += rate
    parts = tuple(CacheGrowth(cap, e, b) for cap, (e, b) in
                  sorted(growth.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)))
    return CacheProfile(parts, state[0], state[1], longest)


def gguf_kv_bytes_per_token(num_layers: int | None, kv_heads: int | None, head_dim: int | None,
                            width: int) -> int | None:
    """llama.cpp's cache for a GGUF model: keys and values of every layer's KV heads, per token.

    ``llama-kv-cache.cpp`` allocates ``n_embd_k_gqa + n_embd_v_gqa`` (KV heads x head
    size, each) per layer and cell; ``None`` when the header lacks a count.
    """
    if not (num_layers and kv_heads and head_dim):
        return None
    return 2 * num_layers * kv_heads * head_dim * width
