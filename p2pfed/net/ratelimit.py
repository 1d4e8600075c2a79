"""One rate limiter for routine log lines: the same key at most once per interval.

A flood of bad frames or of late messages must not flood the log; the first line of each kind
still says what happened. Used by the network thread (rejected frames) and by the mailbox
(dropped and rejected messages).
"""
from __future__ import annotations

import logging
import time


class RateLimitedLog:
    """log(key, level, fmt, *args) writes at most once per `every_s` for each key."""

    def __init__(self, logger: logging.Logger, every_s: float, max_keys: int = 10_000):
        self.logger = logger
        self.every_s = every_s
        self.max_keys = max_keys
        self._last: dict[object, float] = {}

    def log(self, key: object, level: int, fmt: str, *args) -> bool:
        """True if the line was written."""
        now = time.monotonic()
        if now - self._last.get(key, -float("inf")) < self.every_s:
            return False
        if len(self._last) >= self.max_keys:       # bounded whatever the senders invent
            self._last.clear()
        self._last[key] = now
        self.logger.log(level, fmt, *args)
        return True
