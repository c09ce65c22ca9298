"""A checkpoint's tensors must cover the model transformers builds for it: the one rule, for listings and loads.

transformers 5 loads a checkpoint that lacks a parameter with a warning and leaves the
parameter at its random initialisation; it never reads a tensor the model has no place
for; and it refuses one whose shape differs from the parameter's only after reading the
weights. So a checkpoint missing a tensor, holding one of the wrong shape, or holding
tensors the model does not have (beyond what transformers itself ignores) is ``broken``:
the listing says so, naming the first tensors at fault, and a load refuses it before
reading a weight (:func:`workbench.store.safety.check_entry` asks :func:`check_coverage`).

The verdict is transformers' own: the names and shapes from the weight files' headers
are given, as meta tensors, to the calls ``from_pretrained`` makes to match a checkpoint
to the model (key renaming by the model's conversion mapping, base-model prefix, tied
weights, ignore patterns: :func:`workbench._transformers_compat.loading_report`), on the
meta-device skeleton the estimate builds (:mod:`workbench.store.layout`). It is cached
with the skeleton's results, keyed by the config's content and the tensors' names and
shapes, so the listing shows a verdict computed before (by ``store inspect`` or a load)
without importing torch; a listing never builds a skeleton.

Not checked, each for its reason:

* pre-quantized checkpoints (``quantization_config``): they hold packed tensors and
  quantization state (bitsandbytes' ``absmax``, MXFP4's ``*_blocks``/``*_scales``, GPTQ's
  ``qweight``) that transformers' quantizer maps onto modules it replaces first, while the
  skeleton is the full-precision model;
* GGUF files (transformers converts their tensors with its own GGUF tables);
* models transformers cannot build (the estimate says why).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from ..errors import BrokenModelError, EstimateUnavailableError
from .coverage_report import HINT, CheckpointTensors
from .entry import ModelEntry
from .folder_json import config_or_none
from .safetensors_header import read_safetensors_header


def applies(weight_files: Sequence[str], config: Mapping[str, object] | None) -> bool:
    """Whether the rule checks a checkpoint: safetensors weights, not pre-quantized (module docstring)."""
    return (bool(weight_files) and all(f.endswith(".safetensors") for f in weight_files)
            and not (config or {}).get("quantization_config"))


def file_digest(tensors: Iterable[tuple[str, Sequence[int]]]) -> str:
    """A hash of one weight file's tensor names and shapes (dtypes do not matter: a load casts them).

    The scan keeps it in the header index cache, so a listing finds a verdict without hashing again.
    """
    text = "\n".join(sorted(f"{name}\t{','.join(map(str, shape))}" for name, shape in tensors))
    return hashlib.sha256(text.encode()).hexdigest()


def checkpoint_digest(file_digests: Iterable[str]) -> str:
    """The key of a checkpoint's tensors: its weight files' :func:`file_digest`, in order."""
    return hashlib.sha256("\n".join(file_digests).encode()).hexdigest()


def checkpoint_shapes(entry: ModelEntry) -> CheckpointTensors:
    """Every tensor's shape by name, from the headers of the entry's weight files (as the scan read them).

    Raises:
        BrokenModelError: a header cannot be read (the scan would have listed it broken).
    """
    shapes: dict[str, tuple[int, ...]] = {}
    digests = []
    for name in entry.weight_files:
        tensors = [(t.name, tuple(t.shape)) for t in read_safetensors_header(entry.path / name).tensors]
        shapes.update(tensors)
        digests.append(file_digest(tensors))
    return CheckpointTensors(shapes, checkpoint_digest(digests))


def checked(entry: ModelEntry) -> bool:
    """Whether the rule checks ``entry`` (:func:`applies` to a safetensors folder's entry)."""
    return (entry.format == "safetensors" and entry.quant_method is None and entry.path.is_dir()
            and applies(entry.weight_files, config_or_none(entry.path)))


def shapes_if_checked(entry: ModelEntry) -> CheckpointTensors | None:
    """:func:`checkpoint_shapes` of an entry the rule checks, else ``None`` (what the estimate's build is given)."""
    try:
        return checkpoint_shapes(entry) if checked(entry) else None
    except BrokenModelError:
        return None


def cached_problem(folder: Path, digest: str) -> str | None:
    """The problem of a verdict computed before for the tensors of :func:`checkpoint_digest` ``digest``, else
    ``None`` (nothing is built)."""
    from .layout import cached_coverage

    verdict = cached_coverage(folder, digest)
    return verdict.problem if verdict is not None else None


def coverage_problem(entry: ModelEntry) -> str | None:
    """Why ``entry``'s tensors do not cover its model (a sentence naming them), ``None`` when they do or
    the rule does not apply (module docstring). Builds the skeleton when no verdict is cached."""
    shapes = shapes_if_checked(entry)  # headers unreadable since the scan: the scan's rule (and the load) say so
    if shapes is None:
        return None
    from .layout import coverage_or_reason

    try:
        return coverage_or_reason(entry.path, shapes).problem
    except EstimateUnavailableError:  # the machine is too busy to build it now: the load's estimate says so
        return None


def check_coverage(entry: ModelEntry) -> None:
    """Refuse an entry whose checkpoint does not cover its model.

    Raises:
        BrokenModelError: naming the first tensors at fault and what to do.
    """
    problem = coverage_problem(entry)
    if problem is not None:
        raise BrokenModelError(f"{entry.name} cannot be loaded: {problem}", hint=HINT, name=entry.name,
                               path=entry.path)


def verified(entry: ModelEntry) -> ModelEntry:
    """``entry``, listed ``broken`` with the problem if its checkpoint does not cover its model."""
    if entry.status != "ok":
        return entry
    problem = coverage_problem(entry)
    return replace(entry, status="broken", problem=problem) if problem else entry
