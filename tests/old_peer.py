"""A peer of protocol 1 (tests only): `python tests/old_peer.py peer ...` runs `p2pfed peer ...`
as a peer written before protocol 2 would: its `ready` carries no `protocol` field, and its
recipe text is built by protocol 1's rule, every key of its sections always present, with no
knowledge of the options protocol 2 added (recipe.ADDED)."""
from __future__ import annotations

import sys
from dataclasses import fields

from p2pfed.consensus import group, recipe
from p2pfed.net import wire

PER_HOST = {"data.data_dir", "data.cache_dir", "data.workers", "model.weights_file", "train.threads", "train.eval_batch_size",
            "train.device", "train.precision"}


def protocol1_text(cfg) -> str:
    pairs = []
    for section in ("data", "model", "train"):
        table = getattr(cfg, section)
        for f in fields(table):
            key = f"{section}.{f.name}"
            if key in PER_HOST or key in recipe.ADDED:     # unknown to protocol 1
                continue
            pairs.append(f"{key}={recipe._text(getattr(table, f.name))}")
    return ";".join(sorted(pairs))


def install() -> None:
    recipe.of = protocol1_text

    def ready(self, rnd: int, n_samples: int) -> None:
        frames = wire.encode("ready", self.me, round=rnd, n_samples=int(n_samples), recipe=self.mb.recipe)
        self.t.broadcast(self.all_peers, frames)
        self.t.announce(rnd, frames)

    group.GroupFormation.ready = ready


if __name__ == "__main__":
    install()
    sys.argv = ["p2pfed"] + sys.argv[1:]
    from p2pfed.run.cli import main
    main()
