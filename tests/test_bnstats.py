"""Pooled BatchNorm statistics: the maths against one pass over the union of the peers' batches."""
import numpy as np
import torch

from p2pfed import config
from p2pfed.consensus import pooling
from p2pfed.learning import bnstats, model
from p2pfed.learning.capture import to_numpy


def _batches(seed, n=3, size=16):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 32, 32, generator=g) * (1 + seed), torch.zeros(size, dtype=torch.long))
            for _ in range(n)]


def test_pooled_statistics_equal_one_pass_over_the_union_and_leave_the_model_untouched():
    net = model.channels_last(model.build(config.ModelConfig(width_mult=0.25), seed=0))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    peers = [_batches(s) for s in range(3)]                     # three peers, different data
    vectors = [bnstats.collect(net, b) for b in peers]
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())   # buffers restored
    # the reference: one process runs every peer's batches and pools per channel directly
    union = bnstats.collect(net, [b for p in peers for b in p])
    total = pooling.combine(vectors)
    assert np.allclose(total, union, rtol=1e-9, atol=0)
    state = to_numpy(net.state_dict())
    pooled = bnstats.apply(state, total, list(bnstats.bn_layers(net)))
    ref = bnstats.apply(state, union, list(bnstats.bn_layers(net)))
    for k in state:
        if k.endswith(("running_mean", "running_var")):
            assert np.allclose(pooled[k], ref[k], rtol=1e-5, atol=1e-7), k
            assert not np.array_equal(pooled[k], state[k]), k
        else:
            assert pooled[k] is state[k]
    # the first BN layer sees the stem conv's output: check it against torch directly
    name = next(iter(bnstats.bn_layers(net)))
    stem = net.features[0][0]
    with torch.no_grad():
        x = torch.cat([stem(b[0]) for p in peers for b in p]).double()
    mean = x.mean(dim=(0, 2, 3))
    var = x.var(dim=(0, 2, 3), unbiased=True)
    assert np.allclose(pooled[f"{name}.running_mean"], mean.numpy(), rtol=1e-5, atol=1e-6)
    assert np.allclose(pooled[f"{name}.running_var"], var.numpy(), rtol=1e-5, atol=1e-6)
    # the sum is taken in member order: the same inputs give the same bytes on every peer
    assert pooling.combine(vectors).tobytes() == pooling.combine(list(vectors)).tobytes()
    assert len(total) == bnstats.vector_length(net)
