"""The flags every small-size bench shares: the data, the peers and the size of one run."""
from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser with --data, --peers, --train-limit, --epochs and --width-mult."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10-dev.tar.xz"))
    ap.add_argument("--peers", type=int, default=5)
    ap.add_argument("--train-limit", type=int, default=10000)
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--width-mult", type=float, default=0.5)
    return ap
