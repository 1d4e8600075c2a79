"""What the simulated peers average: small numpy round states instead of models, and the
exact reference every commit is checked against.

A peer's round state for round r is a pure function of (run seed, peer, r, the committed state
it trained from): the committed floats plus a seeded step, and an integer buffer that names the
peer and round (so "integer buffers are copied from the lowest member" is checked too). The
reference of a commit is the sample-weighted mean of its members' states, computed here from
scratch on whole vectors: in float64 rounded once to float32 (consensus/averaging.py's
definition), or under secure aggregation the decoded fixed-point sum (consensus/secagg.py).
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ..consensus import averaging, digest, secagg

N_FLOATS = (37, 5)          # two float tensors: shards of uneven sizes


def initial() -> "OrderedDict[str, np.ndarray]":
    return OrderedDict(w=np.zeros(N_FLOATS[0], np.float32), b=np.ones(N_FLOATS[1], np.float32),
                       steps=np.zeros(1, np.int64))


def trained(seed: int, peer: int, rnd: int, base: dict) -> "OrderedDict[str, np.ndarray]":
    """Peer `peer`'s round state after training round rnd from `base` (deterministic)."""
    rng = np.random.default_rng([seed, peer, rnd])
    return OrderedDict(w=(base["w"] + rng.normal(0, 0.1, N_FLOATS[0])).astype(np.float32),
                       b=(base["b"] + rng.normal(0, 0.01, N_FLOATS[1])).astype(np.float32),
                       steps=np.array([rnd * 1000 + peer], np.int64))


def reference(states: dict[int, dict], weights: dict[int, int], secure: bool) -> str:
    """The digest of the exact weighted mean of these members' states (members = the keys)."""
    members = sorted(states)
    flats = [averaging.flatten(states[m]) for m in members]
    w = [weights[m] for m in members]
    if secure:
        total = sum(w)
        acc = np.zeros(flats[0].shape, dtype=secagg.U64)
        for x, wi in zip(flats, w):
            acc += secagg.encode(x, float(wi) / float(total))
        mean = secagg.decode(acc)
    else:
        mean = averaging.weighted_mean(flats, w)
    first = states[averaging.integer_source(members)]
    ints = OrderedDict((k, v) for k, v in first.items() if not averaging.is_float(v))
    return digest.digest(averaging.unflatten(mean, ints, first))
