"""A peer that records what it receives (tests only): `python tests/recording_peer.py DIR peer ...`
runs `p2pfed peer ...` and appends every `part`, `reduced`, `held`, `seed` and `bnstats` it files to
DIR/frames-<id>.jsonl (header fields; the array in DIR/<id>-<n>.npy): a curious member's view."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from p2pfed.consensus import mailbox

RECORDED = ("part", "reduced", "held", "seed", "bnstats")


def install(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    original = mailbox.Mailbox.file
    count = [0]

    def file(self, msg):
        if msg.kind in RECORDED:
            count[0] += 1
            name = f"{self.me}-{count[0]}"
            if msg.arrays:
                np.save(out / f"{name}.npy", msg.arrays[0])
            fields = {k: v for k, v in msg.header.items() if k not in ("arrays", "v")}
            with open(out / f"frames-{self.me}.jsonl", "a") as f:
                f.write(json.dumps({"to": self.me, "kind": msg.kind, "from": msg.sender, "fields": fields,
                                    "array": name if msg.arrays else None}) + "\n")
        return original(self, msg)

    mailbox.Mailbox.file = file


if __name__ == "__main__":
    install(Path(sys.argv[1]))
    sys.argv = ["p2pfed"] + sys.argv[2:]
    from p2pfed.run.cli import main
    main()
