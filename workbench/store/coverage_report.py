"""The sentence a coverage verdict shows, and the checkpoint's tensors it is computed for.

The rule itself is :mod:`workbench.store.coverage`; these pieces sit apart because the skeleton's
build (:mod:`workbench.store.layout`), which coverage asks for its verdicts, computes the verdict
while the skeleton is at hand: both import this module, and neither the other's way round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._transformers_compat import LoadingReport

#: How many tensors a problem names before "and N more".
NAMED = 3
HINT = "re-download the checkpoint, or re-export it with save_pretrained from the model it came from"


def _few(names: Sequence[str]) -> str:
    return ", ".join(names[:NAMED]) + (f" and {len(names) - NAMED} more" if len(names) > NAMED else "")


def report_problem(report: LoadingReport) -> str | None:
    """The sentence a listing shows for a loading report with faults, ``None`` for a clean one."""
    parts = []
    if report.missing:
        parts.append(f"lacks {_few(report.missing)}, which a load would leave randomly initialised")
    if report.mismatched:
        shapes = [f"{name} {list(ckpt)} (the model's is {list(model)})" for name, ckpt, model in report.mismatched]
        parts.append(f"holds {_few(shapes)} of the wrong shape")
    if report.unconvertible:
        parts.append(f"holds tensors transformers cannot convert for {_few([k for k, _ in report.unconvertible])} "
                     f"({report.unconvertible[0][1]})")
    if report.unexpected:
        parts.append(f"holds {_few(report.unexpected)}, which the model transformers builds does not have")
    if not parts:
        return None
    return f"its checkpoint {'; it '.join(parts)}: {HINT}"



@dataclass(frozen=True)
class CheckpointTensors:
    """A checkpoint's tensor shapes by name, with the :func:`checkpoint_digest` its verdict is cached under."""

    shapes: Mapping[str, tuple[int, ...]]
    digest: str
