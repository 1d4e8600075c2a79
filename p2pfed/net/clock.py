"""The protocol's one clock: monotonic seconds.

Every deadline and liveness judgement in `net/shared.py` and `consensus/` reads the time through
`clock.now()`. A real peer gets `time.monotonic`; the deterministic simulator (`p2pfed/sim/`)
installs its virtual clock with `use()`, so the same code runs on simulated time.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator

_now: Callable[[], float] = time.monotonic


def now() -> float:
    """Monotonic seconds (virtual seconds under the simulator)."""
    return _now()


@contextmanager
def use(source: Callable[[], float]) -> Iterator[None]:
    """Read the time from source within the block (the simulator's virtual clock)."""
    global _now
    previous, _now = _now, source
    try:
        yield
    finally:
        _now = previous
