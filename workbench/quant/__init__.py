"""Quantization study: memory, speed and quality of bitsandbytes variants, side by side."""

from .study import (
    DEFAULT_PROMPTS,
    DEFAULT_VARIANTS,
    QuantStudy,
    Recommendation,
    Variant,
    VariantResult,
    compare,
)

__all__ = ["DEFAULT_PROMPTS", "DEFAULT_VARIANTS", "QuantStudy", "Recommendation", "Variant", "VariantResult", "compare"]
