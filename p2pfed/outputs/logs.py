"""Logging with the peer id and round in every record."""
from __future__ import annotations

import logging
import sys


class PeerContext(logging.Filter):
    """Stamps records with this process's peer id and current round (set by the peer)."""
    def __init__(self, peer: str = "-"):
        super().__init__()
        self.peer = peer
        self.round = "-"

    def filter(self, record: logging.LogRecord) -> bool:
        record.peer = self.peer
        record.round = self.round
        return True


FORMAT = "%(asctime)s %(levelname)-7s peer=%(peer)s round=%(round)s %(name)s: %(message)s"


def setup(peer: str = "-", log_file: str | None = None, level: int = logging.INFO,
          stream=sys.stderr) -> PeerContext:
    ctx = PeerContext(peer)
    root = logging.getLogger("p2pfed")
    root.setLevel(level)
    for h in list(root.handlers):
        root.removeHandler(h)
    handlers = [logging.StreamHandler(stream)] if stream is not None else []
    if log_file:
        handlers.append(logging.FileHandler(log_file))
    for h in handlers:
        h.addFilter(ctx)
        h.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(h)
    root.propagate = False
    return ctx
