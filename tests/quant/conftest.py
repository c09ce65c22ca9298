"""Fakes shared with the runtime tests."""

from fakes.fixtures import no_fp4_backend  # noqa: F401
