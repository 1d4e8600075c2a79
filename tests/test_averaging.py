from collections import OrderedDict

import numpy as np
import pytest

from helpers import max_relative_error, reference_mean
from p2pfed.consensus import averaging, digest


def _state(rng, scale=1.0):
    return OrderedDict([
        ("w", (rng.standard_normal((4, 3)) * scale).astype(np.float32)),
        ("bn.running_mean", rng.standard_normal(3).astype(np.float32)),
        ("bn.num_batches_tracked", np.array(rng.integers(0, 100), dtype=np.int64)),
        ("b", rng.standard_normal(5).astype(np.float32)),
    ])


def test_shard_bounds_cover_range_contiguously():
    for n, k in [(10, 3), (3, 5), (0, 2), (1000003, 7)]:
        b = averaging.shard_bounds(n, k)
        assert len(b) == k and b[0][0] == 0 and b[-1][1] == n
        assert all(b[i][1] == b[i + 1][0] for i in range(k - 1))
        sizes = [hi - lo for lo, hi in b]
        assert max(sizes) - min(sizes) <= 1


def test_flatten_unflatten_round_trip_keeps_dtypes_and_scalars():
    s = _state(np.random.default_rng(0))
    flat = averaging.flatten(s)
    assert flat.dtype == np.float32 and flat.size == 12 + 3 + 5
    back = averaging.unflatten(flat, {"bn.num_batches_tracked": s["bn.num_batches_tracked"]}, s)
    assert list(back) == list(s)
    for k in s:
        assert back[k].dtype == s[k].dtype and back[k].shape == s[k].shape
        np.testing.assert_array_equal(back[k], s[k])


def test_sharded_weighted_mean_matches_float64_reference():
    rng = np.random.default_rng(1)
    states = [_state(rng, scale=10 ** rng.uniform(-3, 3)) for _ in range(5)]
    weights = [100, 37, 1, 4000, 250]
    flats = [averaging.flatten(s) for s in states]
    bounds = averaging.shard_bounds(flats[0].size, 5)
    out = np.concatenate([averaging.weighted_mean([f[lo:hi] for f in flats], weights) for lo, hi in bounds])
    ints = {"bn.num_batches_tracked": states[0]["bn.num_batches_tracked"]}
    result = averaging.unflatten(out, ints, states[0])
    ref = reference_mean(states, weights)
    assert max_relative_error(result, ref) < 1e-6
    assert result["bn.num_batches_tracked"] == states[0]["bn.num_batches_tracked"]


def test_weighted_mean_rejects_bad_weights():
    with pytest.raises(ValueError):
        averaging.weighted_mean([np.ones(2, np.float32)], [0])
    with pytest.raises(ValueError):
        averaging.weighted_mean([np.ones(2, np.float32)], [1, 2])


def test_digest_is_stable_and_sensitive_to_value_name_and_shape():
    s = _state(np.random.default_rng(2))
    d = digest.digest(s)
    assert d == digest.digest(OrderedDict((k, v.copy()) for k, v in s.items()))
    t = OrderedDict((k, v.copy()) for k, v in s.items())
    t["b"][0] = np.nextafter(t["b"][0], np.float32(np.inf))
    assert digest.digest(t) != d
    u = OrderedDict((("W" if k == "w" else k), v) for k, v in s.items())
    assert digest.digest(u) != d
    v = OrderedDict((k, (x.reshape(3, 4) if k == "w" else x)) for k, x in s.items())
    assert digest.digest(v) != d


def test_integer_source_is_lowest_member():
    assert averaging.integer_source([4, 2, 7]) == 2
