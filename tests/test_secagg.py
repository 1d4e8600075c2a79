"""Secure aggregation's pure parts: fixed point, masks that cancel exactly, keys, the recipe and
the wire (consensus/secagg.py). The runs with real peers are in test_secagg_runs.py."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest

from p2pfed import config
from p2pfed.consensus import averaging, recipe, secagg
from p2pfed.net import wire

U64 = secagg.U64


def _masked_parts(values: list[np.ndarray], weights: list[int], rnd: int = 3, attempt: int = 1, degree: int = 0):
    """Each member's masked vector as the butterfly builds it (ids need not start at 0), the
    seeds, and a function that sums shard j's parts and removes the self-masks, as its reducer does."""
    keys = [secagg.MaskKey() for _ in values]
    members = list(range(10, 10 + len(values)))
    public = {m: k.public for m, k in zip(members, keys)}
    seeds = {m: secagg.new_seed() for m in members}
    bounds = averaging.shard_bounds(values[0].size, len(values))
    total_w = float(sum(weights))
    parts = [secagg.masked_vector(x, w / total_w, k, m, public, seeds[m], rnd, attempt, bounds, degree=degree)
             for x, w, k, m in zip(values, weights, keys, members)]

    def reduce(j: int, with_seeds: bool = True, skip: int | None = None) -> np.ndarray:
        lo, hi = bounds[j]
        total = np.zeros(hi - lo, U64)
        for i, p in enumerate(parts):
            if i != skip:
                total += p[lo:hi]
        return secagg.unmasked(total, seeds, members[j], rnd, attempt, lo, hi) if with_seeds else \
            secagg.decode(total)

    return parts, bounds, reduce


@pytest.mark.parametrize("k", [3, 4, 5, 7, 10, 16])
def test_masks_cancel_exactly_in_the_sum_over_all_members_and_the_mean_is_within_the_bound(k):
    rng = np.random.default_rng(k)
    n = 1000 + k
    values = [rng.normal(0, 1, n).astype(np.float32) * rng.choice([1e-6, 1.0, 1e4], n).astype(np.float32)
              for _ in range(k)]
    values[0][:4] = [2.0 ** 29, -(2.0 ** 29), 0.0, -0.0]        # near the range: the masked values wrap around
    weights = [int(w) for w in rng.integers(1, 5000, k)]
    parts, bounds, reduce = _masked_parts(values, weights)

    exact = sum(np.float64(w) / sum(weights) * x.astype(np.float64) for x, w in zip(values, weights))
    plain = averaging.weighted_mean(values, weights).astype(np.float64)
    for j, (lo, hi) in enumerate(bounds):
        unmasked = np.zeros(hi - lo, dtype=U64)
        for x, w in zip(values, weights):
            unmasked += secagg.encode(x[lo:hi], w / float(sum(weights)))
        got = reduce(j)
        assert np.array_equal(got, secagg.decode(unmasked))     # the masks cancel bit for bit, mod 2^64
        bound = secagg.error_bound(k) + np.abs(exact[lo:hi]) * 2.0 ** -24   # + float32's rounding
        assert np.all(np.abs(got - exact[lo:hi]) <= bound)
        assert np.all(np.abs(got - plain[lo:hi]) - np.abs(plain[lo:hi]) * 2.0 ** -23 <= secagg.error_bound(k))


def test_without_one_members_part_the_sum_is_noise_and_is_refused_before_it_is_decoded():
    rng = np.random.default_rng(0)
    values = [rng.normal(0, 1, 4000).astype(np.float32) for _ in range(4)]
    _, bounds, reduce = _masked_parts(values, [1, 1, 1, 1])
    with pytest.raises(secagg.NotCancelled, match=r"(\d+) of its 1000 words are beyond") as caught:
        reduce(0, skip=1)
    assert int(str(caught.value).split()[0]) > 300      # uniform over 2^64: about half beyond 2^62
    assert np.abs(reduce(0) - np.mean(values, axis=0)[:bounds[0][1]]).max() < 1e-6


def test_a_member_whose_masks_are_wrong_makes_every_other_shard_refused():
    """One member masks with the wrong nonce (another attempt's): its pair and self-masks cancel in
    no other member's shard, so each of those reducers finds words beyond what the members' values
    can sum to. Its own shard (which carries only the other pairs' masks) sums right."""
    rng = np.random.default_rng(1)
    values = [rng.normal(0, 1, 300).astype(np.float32) for _ in range(4)]
    keys = [secagg.MaskKey() for _ in values]
    public = {m: k.public for m, k in enumerate(keys)}
    seeds = {m: secagg.new_seed() for m in public}
    bounds = averaging.shard_bounds(300, 4)
    parts = [secagg.masked_vector(x, 0.25, k, m, public, seeds[m], 5, 2 if m == 3 else 1, bounds)
             for m, (x, k) in enumerate(zip(values, keys))]
    for j, (lo, hi) in enumerate(bounds):
        total = sum((p[lo:hi] for p in parts), np.zeros(hi - lo, U64))
        if j == 3:
            got = secagg.unmasked(total, seeds, j, 5, 1, lo, hi)
            assert np.abs(got - np.mean(values, axis=0)[lo:hi]).max() < 1e-6
            continue
        with pytest.raises(secagg.NotCancelled):
            secagg.unmasked(total, seeds, j, 5, 1, lo, hi)


def test_a_wide_sum_that_did_not_cancel_is_refused():
    rng = np.random.default_rng(2)
    keys = {m: secagg.MaskKey() for m in range(3)}
    public = {m: k.public for m, k in keys.items()}
    vectors = [rng.normal(0, 1e3, 20) for _ in range(3)]
    nonce = secagg.nonce(4, -1, [0, 1, 2], "bnstats/-1")
    masked = [secagg.wide_add(secagg.wide_encode(v), secagg.pair_mask(keys[m], m, public, nonce, 20, words=2))
              for m, v in enumerate(vectors)]
    total = secagg.wide_add(secagg.wide_add(masked[0], masked[1]), masked[2])
    secagg.check_wide_cancelled(total, 3)                       # cancelled: passes, and decodes to the sum
    assert np.allclose(secagg.wide_decode(total), sum(vectors), rtol=1e-12)
    with pytest.raises(secagg.NotCancelled, match="values are beyond"):
        secagg.check_wide_cancelled(secagg.wide_add(masked[0], masked[1]), 3)     # one member's vector missing


@pytest.mark.parametrize("member", range(4))
def test_a_single_part_is_uncorrelated_with_its_members_values(member):
    rng = np.random.default_rng(1)
    values = [rng.normal(0, 1, 20000).astype(np.float32) for _ in range(4)]
    parts, bounds, _ = _masked_parts(values, [3, 1, 2, 5])
    for j, (lo, hi) in enumerate(bounds):
        if j == member:
            continue                        # a member's own shard is not sent
        seen = parts[member][lo:hi].view(np.int64).astype(np.float64)
        plain = secagg.encode(values[member][lo:hi], 0.25).view(np.int64).astype(np.float64)
        assert np.corrcoef(plain, values[member][lo:hi])[0, 1] > 0.999      # the check can see a plain part
        assert abs(np.corrcoef(seen, values[member][lo:hi])[0, 1]) < 0.06


def test_the_self_mask_alone_hides_the_sum_from_its_reducer_without_the_seeds():
    """Pair masks cancel in the reducer's sum; until the seeds are out, the sum is still masked."""
    rng = np.random.default_rng(2)
    values = [rng.normal(0, 1, 3000).astype(np.float32) for _ in range(3)]
    _, bounds, reduce = _masked_parts(values, [1, 1, 1])
    assert np.abs(reduce(1, with_seeds=False)).mean() > 1e6
    lo, hi = bounds[1]
    assert np.abs(reduce(1) - np.mean(values, axis=0)[lo:hi]).max() < 1e-6


def test_wide_sums_cancel_and_decode_to_float64_precision():
    rng = np.random.default_rng(3)
    k, n = 6, 257
    vectors = [np.concatenate([rng.normal(0, 1, n) * 1e-9, rng.normal(0, 1, n) * 1e9, [2.0 ** 40, -3.5]])
               for _ in range(k)]
    keys = [secagg.MaskKey() for _ in range(k)]
    public = {m: keys[m].public for m in range(k)}
    nonce = secagg.nonce(2, 0, list(range(k)), "bnsync/7")
    total = np.zeros((2, vectors[0].size), dtype=U64)
    for m in range(k):
        total = secagg.wide_add(total, secagg.wide_add(secagg.wide_encode(vectors[m]),
                                                       secagg.pair_mask(keys[m], m, public, nonce, vectors[0].size, 2)))
    exact = np.array([math.fsum(v[i] for v in vectors) for i in range(vectors[0].size)])   # exactly rounded
    got = secagg.wide_decode(total)
    assert np.all(np.abs(got - exact) <= np.abs(exact) * 2.0 ** -52 + k * 2.0 ** -65)


def test_wide_subtraction_borrows_across_the_limbs():
    a = secagg.wide_encode(np.array([1.0, -1.0, 0.25]))
    b = secagg.wide_encode(np.array([0.5, 2.0**40, 0.75]))
    assert np.allclose(secagg.wide_decode(secagg.wide_add(a, b, -1)), [0.5, -1.0 - 2.0**40, -0.5], rtol=0, atol=0)


def test_values_beyond_the_fixed_point_range_are_refused_naming_the_position():
    x = np.zeros(10, np.float32)
    x[7] = 2.0 ** 30
    with pytest.raises(secagg.RangeError, match="position 7"):
        secagg.encode(x, 0.5)
    with pytest.raises(secagg.RangeError, match="position 0"):
        secagg.wide_encode(np.array([2.0 ** 57]))


def test_a_stream_read_from_an_offset_is_that_part_of_the_whole_stream():
    key, nonce = bytes(range(32)), secagg.nonce(1, 0, [0, 1], "self")
    whole = secagg.stream(key, nonce, 100)
    for lo, hi in [(0, 3), (5, 17), (8, 16), (63, 100), (99, 100)]:
        assert np.array_equal(secagg.self_mask(key, nonce, lo, hi), whole[lo:hi])


def test_pair_keys_agree_both_ways_and_nonces_separate_every_exchange():
    a, b, c = secagg.MaskKey(), secagg.MaskKey(), secagg.MaskKey()
    assert a.pair_key(b.public) == b.pair_key(a.public) != a.pair_key(c.public)
    nonces = {secagg.nonce(r, at, m, p) for r in (1, 2) for at in (0, 1) for m in ([0, 1, 2], [0, 1]) for p in
              ("part", "self", "bnsync/0")}
    assert len(nonces) == 2 * 2 * 2 * 3
    assert all(n[12:] == b"\0\0\0\0" for n in nonces)


def test_the_recipe_names_secure_aggregation_only_when_it_is_on():
    off, on = config.Config(), config.override(config.Config(), security={"secure_aggregation": True})
    assert "security" not in recipe.of(off)               # a peer that predates the option agrees
    assert "security.secure_aggregation=true" in recipe.of(on).split(";")
    assert "security.secure_aggregation: true here, (absent: at its default) there" in recipe.differences(recipe.of(on),
                                                                                         recipe.of(off))


@pytest.mark.parametrize("train, words", [({"compression": "int8"}, "train.compression"),
                                          ({"optimizer": "adamw", "average_optimizer_state": True},
                                           "train.average_optimizer_state")])
def test_combinations_it_cannot_mask_are_refused_naming_both_keys(train, words):
    with pytest.raises(config.ConfigError, match=r"security.secure_aggregation.*" + words):
        config.override(config.Config(), security={"secure_aggregation": True}, train=train)


def _decoded(kind: str, arrays, **fields) -> wire.Message:
    return wire.decode(wire.encode(kind, 1, arrays, **fields), 1 << 24)


def test_masked_frames_pass_the_schema_and_malformed_ones_name_the_problem():
    like = {"w": np.zeros(10, np.float32)}
    kd = "ab" * 32
    part = _decoded("part", [np.zeros(5, U64)], round=1, attempt=0, shard=1, members=[0, 1], codec="m64", keys=kd,
                    sealed=False)
    wire.check_schema(part, like, 10)
    with pytest.raises(wire.WireError, match="masked shard"):
        wire.check_schema(_decoded("part", [np.zeros(5, U64)], round=1, attempt=0, shard=1, members=[0, 1],
                                   codec="m64"), like, 10)
    with pytest.raises(wire.WireError, match="keys must be 64"):
        wire.check_schema(_decoded("part", [np.zeros(5, U64)], round=1, attempt=0, shard=1, members=[0, 1],
                                   codec="m64", keys="xyz"), like, 10)
    wire.check_schema(_decoded("bnsync", [np.zeros((2, 4), U64)], round=1, attempt=0, seq=3, keys=kd), like, 10)
    with pytest.raises(wire.WireError, match="masked uint64"):
        wire.check_schema(_decoded("bnsync", [np.zeros((2, 4), U64)], round=1, attempt=0, seq=3), like, 10)
    with pytest.raises(wire.WireError, match="seed must be 64"):
        wire.check_schema(_decoded("seed", [], round=1, attempt=0, seed="00"), like, 10)


class _Box:
    """The part of a Mailbox that member_keys reads: peer 1 sent its mask key, peer 2 (alive) none."""
    me = 0

    def __init__(self, keys: dict[int, str]):
        self.mask_keys = keys

    def alive(self, peer, since=None):
        return True

    def mask_key(self, peer):
        return self.mask_keys.get(peer)

    def wait(self, deadline, watch=(), since=None):
        time.sleep(0.01)


def test_a_member_without_a_usable_mask_key_is_named_and_nothing_waits_past_the_deadline():
    from p2pfed.consensus.ends import Ended
    from p2pfed.consensus.exchange import Scope
    from p2pfed.consensus.masked import member_keys
    mine, theirs = secagg.MaskKey(), secagg.MaskKey()
    with pytest.raises(Ended, match=r"no mask key from \[2\].*secure_aggregation"):
        member_keys(_Box({1: theirs.public}), Scope(1, 0, (0, 1, 2)), mine, time.monotonic() + 0.1)
    third = secagg.MaskKey().public
    with pytest.raises(Ended, match=r"peer 1's mask key is unusable"):      # my own key sent back to me
        member_keys(_Box({1: mine.public, 2: third}), Scope(1, 0, (0, 1, 2)), mine, time.monotonic() + 0.1)
    assert member_keys(_Box({1: theirs.public, 2: third}), Scope(1, 0, (0, 1, 2)), mine,
                       time.monotonic() + 0.1) == {0: mine.public, 1: theirs.public, 2: third}


def test_a_non_finite_batchnorm_sum_is_refused_not_encoded():
    with pytest.raises(secagg.RangeError, match="position 1"):
        secagg.wide_encode(np.array([1.0, np.nan, 2.0]))


class _Keys:
    """The part of a Mailbox that Secure.prepare reads: my id and the others' mask keys."""

    def __init__(self, me: int, keys: dict[int, str]):
        self.me, self._keys = me, keys

    def mask_key(self, m: int) -> str | None:
        return self._keys.get(m)


@pytest.mark.parametrize("background", [True, False])
def test_masks_computed_ahead_serve_exactly_their_attempt_once(background):
    from p2pfed.consensus.masked import Secure
    others = {m: secagg.MaskKey() for m in (1, 2, 3)}
    me = Secure(background=background)
    keys = {0: me.key.public, **{m: k.public for m, k in others.items()}}
    box = _Keys(0, keys)
    me.prepare(box, 5, [0, 1, 2, 3], 1000)
    got = me.take(5, 0, keys, 1000, deadline=time.monotonic() + 30)
    assert got is not None
    masks, seed = got
    assert np.array_equal(masks, secagg.masks(me.key, 0, keys, seed, 5, 0, averaging.shard_bounds(1000, 4)))
    assert me.take(5, 0, keys, 1000, deadline=time.monotonic() + 30) is None        # used once


@pytest.mark.parametrize("change", ["members", "attempt", "round", "key", "size"])
def test_masks_computed_ahead_are_discarded_when_the_attempt_differs(change):
    """Prepared for round 5's derived group [0, 1, 2, 3]; the exchange that comes is another:
    peer 3 is gone, a leader's attempt 1, round 6, peer 2 restarted with a new key, or a vector of
    another size. Nothing computed ahead is used, and nothing is kept for later."""
    from p2pfed.consensus.masked import Secure
    others = {m: secagg.MaskKey() for m in (1, 2, 3)}
    me = Secure(background=False)
    keys = {0: me.key.public, **{m: k.public for m, k in others.items()}}
    me.prepare(_Keys(0, keys), 5, [0, 1, 2, 3], 1000)
    rnd, attempt, size, used = 5, 0, 1000, dict(keys)
    if change == "members":
        used.pop(3)
    elif change == "attempt":
        attempt = 1
    elif change == "round":
        rnd = 6
    elif change == "key":
        used[2] = secagg.MaskKey().public
    else:
        size = 999
    assert me.take(rnd, attempt, used, size, deadline=time.monotonic() + 5) is None
    assert me.ahead is None
    assert me.take(5, 0, keys, 1000, deadline=time.monotonic() + 5) is None       # dropped, not kept


def test_nothing_is_prepared_without_every_members_key():
    from p2pfed.consensus.masked import Secure
    me = Secure(background=False)
    me.prepare(_Keys(0, {1: secagg.MaskKey().public}), 5, [0, 1, 2], 100)     # no key from peer 2 yet
    assert me.ahead is None


@pytest.mark.parametrize("n, d", [(16, 8), (17, 8), (32, 10), (100, 14)])
def test_large_groups_mask_with_a_sparse_symmetric_connected_graph(n, d):
    """With security.mask_degree = d each member masks with d neighbours (a Harary graph on a
    relabelled ring), the same on every member; a new attempt relabels it; by default, or in a
    group of at most d + 1, with every other member."""
    members = list(range(100, 100 + n))
    graph = {m: secagg.neighbours(members, 7, 1, m, d) for m in members}
    assert all(len(v) == d for v in graph.values())
    assert all(a in graph[b] for a in members for b in graph[a])            # symmetric: the masks cancel
    seen, todo = {members[0]}, [members[0]]
    while todo:
        for b in graph[todo.pop()] - seen:
            seen.add(b)
            todo.append(b)
    assert seen == set(members)                                             # connected
    assert any(secagg.neighbours(members, 7, 2, m, d) != graph[m] for m in members)   # a redo relabels it
    assert secagg.neighbours(members, 7, 1, members[0]) == set(members[1:])              # the default: all
    assert secagg.neighbours(members[:d + 1], 7, 1, members[0], d) == set(members[1:d + 1])


def test_with_a_sparse_graph_a_member_masks_fewer_streams():
    """32 members: each other shard carries 10 neighbours' streams at most (all pairs: 30)."""
    members = list(range(32))
    keys = {m: secagg.MaskKey() for m in members}
    public = {m: k.public for m, k in keys.items()}
    bounds = averaging.shard_bounds(32 * 4, 32)
    calls = []
    real = secagg.stream

    def counted(key, nonce16, n, offset=0):
        calls.append(n)
        return real(key, nonce16, n, offset)

    secagg.stream = counted
    try:
        secagg.part_masks(keys[0], 0, public, secagg.nonce(1, 0, members, "part"), bounds,
                          secagg.neighbours(members, 1, 0, 0, 10))
    finally:
        secagg.stream = real
    assert len(calls) <= 31 * 10 and len(calls) >= 31 * 9


def test_an_honest_batchnorm_sum_of_128_or_more_members_passes_the_check():
    """The limit k x 2^56 would wrap past int64 at k = 128; it is capped instead."""
    x = np.full(3, 2.0 ** 55)
    total = secagg.wide_encode(x)
    for _ in range(127):
        total = secagg.wide_add(total, secagg.wide_encode(-x if _ % 2 else x))
    for k in (127, 128, 200):
        secagg.check_wide_cancelled(total, k)


def test_a_masked_exchange_of_two_members_is_refused_before_anything_is_sent():
    """Even if a leader of another version proposes a group of two, a member takes no part."""
    from p2pfed.consensus.ends import Ended
    from p2pfed.consensus.exchange import Scope
    from p2pfed.consensus.masked import member_keys
    with pytest.raises(Ended, match="needs at least 3; not taking part"):
        member_keys(_Keys(0, {}), Scope(4, 1, (0, 1)), secagg.MaskKey(), time.monotonic() + 5)


@pytest.mark.parametrize("k, degree", [(16, 8), (21, 10)])
def test_with_a_mask_degree_the_masks_still_cancel_bit_for_bit(k, degree):
    rng = np.random.default_rng(k)
    values = [rng.normal(0, 1, 40 * k).astype(np.float32) for _ in range(k)]
    weights = [int(w) for w in rng.integers(1, 100, k)]
    _, bounds, reduce = _masked_parts(values, weights, degree=degree)
    for j, (lo, hi) in enumerate(bounds):
        unmasked = np.zeros(hi - lo, dtype=U64)
        for x, w in zip(values, weights):
            unmasked += secagg.encode(x[lo:hi], w / float(sum(weights)))
        assert np.array_equal(reduce(j), secagg.decode(unmasked))
