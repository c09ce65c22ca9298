"""The model store: discovery, header-only metadata, memory estimates, import and seed."""

from .entry import Format, ModelEntry, Status, WeightStats, format_bytes, format_count
from .estimate import (
    MemoryEstimate,
    cache_problem,
    cache_state_bytes,
    estimate,
    estimate_table,
    kv_cache_bytes,
)
from .roots import StoreRoot
from .store import DeletePlan, ModelStore, check_name

__all__ = [
    "DeletePlan", "Format", "MemoryEstimate", "ModelEntry", "ModelStore", "Status", "StoreRoot", "WeightStats",
    "cache_problem", "cache_state_bytes", "check_name", "estimate", "estimate_table", "format_bytes", "format_count", "kv_cache_bytes",
]
