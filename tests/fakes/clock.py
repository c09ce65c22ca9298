"""The one fake clock of the tests: seconds that move only when the test moves them."""

from __future__ import annotations


class FakeClock:
    """A callable clock for the ``clock=`` seams (``time.time`` or ``time.monotonic`` stand-ins).

    Args:
        start: the first reading; ``time.time()`` where file stamps made by the kernel's real
            clock must line up with it (leases), ``0.0`` for a throttle's monotonic seconds.

    Example:
        >>> clock = FakeClock(100.0)
        >>> clock.now += 61
        >>> clock()
        161.0
    """

    def __init__(self, start: float = 0.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now
