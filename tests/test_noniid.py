"""Label-skewed data: synchronized BatchNorm against each peer's own BatchNorm.

A fast in-process simulation (threads as members, the product's syncbn module and weighted mean)
on a strongly skewed synthetic split, for several seeds; and real peers in the synchronized mode:
every round agrees exactly, and a member killed mid-step leaves the survivors to train the round
again and agree.
"""
import threading

import numpy as np
import pytest
import torch
from torch import nn

from helpers import add_faults, check_round_exact, make_config, start_peer, summary, wait_all
from p2pfed import config
from p2pfed.learning import augment, datasets, model, partition, syncbn
from p2pfed.run.node.faults import CRASH_EXIT_CODE
from test_syncbn import _Members


def _federate(seed: int, sync: bool, members: int = 4, rounds: int = 40, noise: float = 0.35,
              lr: float = 0.05) -> float:
    """k = 1: each member one SGD step on 16 images of its own 2 classes, then the sample-weighted
    mean; accuracy on a balanced test set, BatchNorm statistics re-estimated over the union (as
    the product pools them before evaluating)."""
    torch.manual_seed(seed)
    train = datasets.synthetic(1600, seed, noise=noise, size=16)
    test = datasets.synthetic(800, seed, split_seed=1, noise=noise, size=16)
    parts = partition.partition(train.labels, members, "shards", 0.5, seed, shards_per_peer=2)
    shares = [len(p) / len(train.labels) for p in parts]
    nets = [model.build(config.ModelConfig(width_mult=0.1), seed=seed) for _ in range(members)]
    for n in nets:
        n.classifier[0].p = 0.0        # no dropout: the members' threads would draw its masks from the
                                       # one global generator in whatever order they run
    nets = [syncbn.convert(n) if sync else n for n in nets]
    xs = [augment.normalize(train.images[torch.from_numpy(p)]) for p in parts]
    ys = [torch.from_numpy(train.labels[p]) for p in parts]
    opts = [torch.optim.SGD(n.parameters(), lr=lr, momentum=0.9) for n in nets]
    g = torch.Generator().manual_seed(seed)
    for _ in range(rounds):
        pick = [torch.randint(0, len(y), (16,), generator=g) for y in ys]
        combine = _Members(members)

        def step(i):
            nets[i].train()
            opts[i].zero_grad()
            with syncbn.synced(nets[i], combine.combine_for(i), shares[i]) if sync else _nothing():
                nn.functional.cross_entropy(nets[i](xs[i][pick[i]]), ys[i][pick[i]]).backward()
            opts[i].step()

        threads = [threading.Thread(target=step, args=(i,)) for i in range(members)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        with torch.no_grad():
            states = [n.state_dict() for n in nets]
            mean = {k: sum(s * st[k].double() for s, st in zip(shares, states)).to(v.dtype) if v.is_floating_point()
                    else v for k, v in states[0].items()}
            for n in nets:
                n.load_state_dict(mean)
    net = nets[0]
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None                      # a cumulative mean over the pass
        net.train()
        net(torch.cat(xs))
        net.eval()
        return float((net(augment.normalize(test.images)).argmax(1).numpy() == test.labels).mean())


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


@pytest.mark.slow          # trains three models in-process (about 80 s)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synchronized_batchnorm_beats_local_batchnorm_on_a_strongly_skewed_split(seed):
    """4 members holding 2 of 10 classes each, 40 rounds. Measured here (accuracy on 800 balanced
    test images, seeds 0-2): local 0.38, 0.33, 0.59; synchronized 0.99, 0.99, 0.92. At lr 0.1 both
    modes diverge on some seeds, so the comparison runs at 0.05. Without dropout the run is
    deterministic (with it, one seed's synchronized run measured 0.86 in CI and 0.96-0.98 here)."""
    torch.set_num_threads(1)
    local, synced = _federate(seed, False), _federate(seed, True)
    assert synced > local + 0.2, (seed, local, synced)


STEPS = {"local_steps": 1, "local_epochs": 0.0, "max_steps": 0, "batchnorm": "sync"}


def test_synchronized_rounds_agree_exactly_and_a_member_killed_mid_step_is_trained_around(tmp_path, procs):
    cfg, path = make_config(tmp_path, 3, train={**STEPS, "rounds": 8}, data={"partition": "shards"})
    add_faults(path, {"peer": 2, "round": 5, "phase": "train"})
    run = tmp_path / "run"
    ps = [start_peer(procs, path, i) for i in range(3)]
    codes = wait_all(ps, 240)
    assert codes[:2] == [0, 0] and codes[2] == CRASH_EXIT_CODE, codes
    s = summary(run)
    assert [r["round"] for r in s["rounds"]] == list(range(1, 9))
    for r in s["rounds"]:
        assert r["digests_agree"], r
        assert r["members"] == ([0, 1, 2] if r["round"] < 5 else [0, 1]), r
        check_round_exact(run, r["round"], r["members"], r["members"])
    r5 = s["rounds"][4]                 # peer 2 died in the middle of round 5's training
    assert r5["attempts"] == 2 and any("peer 2 died" in e for e in r5["events"]), r5
    assert np.isfinite(s["final"]["accuracy"])
