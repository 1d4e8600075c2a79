"""The outer step (outer.py) and the round state (roundstate.py): pure functions, and one
live run in which the outer step, the averaged optimizer buffers and a dissenter's download
all keep every member on the same digest."""
from collections import OrderedDict

import numpy as np
import torch

from helpers import make_config, peer_log, round_records, start_peer, summary, wait_all
from p2pfed import config
from p2pfed.consensus import digest, outer
from p2pfed.learning import model
from p2pfed.learning import train as training
from p2pfed.run.node.state import capture_state, restore_state
from test_dissent import _dissent


def test_outer_step_is_nesterov_momentum_on_the_pseudo_gradient():
    x, y, m = np.float32([1.0, 2.0]), np.float32([0.5, 2.5]), np.float32([0.2, 0.0])
    new, m2 = outer.step(x, y, m, lr=0.5, beta=0.5)
    d = x - y                                               # [0.5, -0.5]
    np.testing.assert_array_equal(m2, np.float32(0.5) * m + d)              # [0.6, -0.5]
    np.testing.assert_allclose(new, x - 0.5 * (d + 0.5 * m2), rtol=1e-7)   # [0.6, 2.375]
    assert new.dtype == np.float32 and m2.dtype == np.float32
    # no momentum and lr 1 is the plain mean, up to float32 rounding
    new, _ = outer.step(x, y, np.zeros(2, np.float32), lr=1.0, beta=0.0)
    np.testing.assert_allclose(new, y, rtol=1e-7)


def test_the_first_round_result_is_the_mean_with_zero_momentum():
    like = OrderedDict([("w", np.float32([9.0])), ("outer.w", np.float32([5.0]))])
    out = outer.start(OrderedDict([("w", np.float32([2.0]))]), like)
    assert list(out) == ["w", "outer.w"] and out["w"][0] == 2.0 and out["outer.w"][0] == 0.0


def test_outer_apply_steps_parameters_only_and_keeps_the_state_order():
    prev = OrderedDict([("w", np.float32([1.0, 1.0])), ("bn.running_var", np.float32([1.0])),
                        ("bn.num_batches_tracked", np.int64(3)), ("outer.w", np.float32([0.0, 1.0]))])
    mean = OrderedDict([("w", np.float32([0.0, 2.0])), ("bn.running_var", np.float32([4.0])),
                        ("bn.num_batches_tracked", np.int64(7))])
    out = outer.apply(mean, prev, lr=1.0, beta=0.5)
    assert list(out) == list(prev)
    np.testing.assert_array_equal(out["outer.w"], [1.0, -0.5])            # 0.5 m + d, d = [1, -1]
    np.testing.assert_array_equal(out["w"], [1.0 - (1.0 + 0.5), 1.0 - (-1.0 - 0.25)])
    assert out["bn.running_var"][0] == 4.0 and out["bn.num_batches_tracked"] == 7   # the mean, as given
    # bit-identical on a second evaluation (every member computes it)
    again = outer.apply(mean, prev, lr=1.0, beta=0.5)
    assert digest.digest(again) == digest.digest(out)


def _net_and_opt(optimizer: str, width_mult: float = 0.1, **train):
    cfg = config.override(config.Config(), model={"width_mult": width_mult}, train={"optimizer": optimizer, **train})
    net = model.channels_last(model.build(cfg.model, seed=0))
    return cfg, net, training.make_optimizer(net, cfg.train)


def _one_step(net, opt):
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    opt.zero_grad()
    net(x).sum().backward()
    opt.step()


def test_round_state_is_the_state_dict_alone_without_the_options():
    cfg, net, opt = _net_and_opt("sgd")
    state = capture_state(net, opt, cfg.train)
    assert list(state) == list(net.state_dict())


def test_round_state_round_trips_optimizer_buffers_and_outer_momentum():
    for optimizer, bufs in [("sgd", ["momentum_buffer"]), ("adamw", ["exp_avg", "exp_avg_sq"])]:
        cfg, net, opt = _net_and_opt(optimizer, average_optimizer_state=True, outer_momentum=0.5, outer_lr=0.5)
        names = [n for n, _ in net.named_parameters()]
        before = capture_state(net, opt, cfg.train, copy=True)
        assert before[f"optimizer.{names[0]}.{bufs[-1]}"].max() == 0.0        # no step yet: zeros
        _one_step(net, opt)
        outer_m = {f"outer.{n}": np.full(p.shape, 0.25, np.float32) for n, p in net.named_parameters()}
        state = capture_state(net, opt, cfg.train, outer_m, copy=True)
        n_model = len(net.state_dict())
        assert list(state)[:n_model] == list(net.state_dict())
        assert list(state)[n_model:] == [f"optimizer.{n}.{b}" for n in names for b in bufs] + \
            [f"outer.{n}" for n in names]
        # a fresh peer restores everything, and takes the same next step as the original
        cfg2, net2, opt2 = _net_and_opt(optimizer, average_optimizer_state=True, outer_momentum=0.5, outer_lr=0.5)
        got_outer = restore_state(net2, opt2, cfg2.train, state, global_step=1)
        assert digest.digest(capture_state(net2, opt2, cfg2.train, got_outer)) == digest.digest(state)
        torch.manual_seed(1)
        _one_step(net, opt)
        torch.manual_seed(1)
        _one_step(net2, opt2)
        for (k, a), b in zip(net.state_dict().items(), net2.state_dict().values()):
            assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6), (optimizer, k)


def test_live_outer_step_averaged_optimizer_state_and_scaffold_stay_exact_and_agreed(tmp_path, procs):
    """4 peers, SGD, outer momentum 0.5 / lr 0.5, averaged momentum buffers and SCAFFOLD control
    variates, 7 rounds of 2 steps; peer 3 dissents in round 3 and downloads. Every round's result
    is the outer step of the exact float64 mean of the members' models, the control variate c is
    the exact mean of the peers' own c_i, and after the download peer 3 computes the same digest as
    the others again: its downloaded optimizer buffers, c and outer momentum are right."""
    train = {"local_steps": 2, "local_epochs": 0.0, "max_steps": 0, "rounds": 7, "optimizer": "sgd", "lr": 0.05,
             "outer_momentum": 0.5, "outer_lr": 0.5, "average_optimizer_state": True, "scaffold": True}
    # width 0.35: the round state (model, momentum buffers, c, outer momentum: 4 x 1.7 MB) is larger
    # than a message limit sized for the model alone would allow, so the dissenter's download checks it
    cfg, path = make_config(tmp_path, 4, train=train, model={"width_mult": 0.35})
    _dissent(path, 3, [3])
    run = tmp_path / "run"
    ps = [start_peer(procs, path, i) for i in range(4)]
    assert wait_all(ps, 240) == [0] * 4
    s = summary(run)
    assert [r["members"] for r in s["rounds"]] == [[0, 1, 2, 3]] * 7
    assert "dissented" in " ".join(s["rounds"][2]["events"]), s["rounds"][2]
    assert "downloading the committed model" in peer_log(run, 3)
    for rnd in range(4, 8):
        assert len({round_records(run, p)[rnd]["digest"] for p in range(4)}) == 1, rnd
    # the outer step on the float64 mean, checked on round 5 from the dumped models
    _, net, _ = _net_and_opt("sgd", width_mult=0.35)
    params = [n for n, _ in net.named_parameters()]
    n_model = len(net.state_dict())
    # the report's bytes line: model + momentum buffers + c are averaged (outer.* never travels)
    param_bytes = sum(p.numel() * 4 for p in net.parameters())
    assert s["final"]["exchanged_bytes"] == s["final"]["model_bytes"] + 2 * param_bytes
    names = (list(net.state_dict()) + [f"optimizer.{n}.momentum_buffer" for n in params] +
             [f"scaffold.{n}" for n in params] + [f"outer.{n}" for n in params])

    def load(rnd, peer, post):
        z = np.load(run / "pre" / f"round{rnd}-peer{peer}{'-post' if post else ''}.npz")
        return [z[f"t{i}"] for i in range(len(z.files) - 1)], int(z["n_samples"])

    # round 1 has no agreed anchor yet: its result is the exact mean, with zero outer momentum
    pre1 = [load(1, p, False) for p in range(4)]
    post1, _ = load(1, 0, True)
    w1 = np.array([w for _, w in pre1], np.float64)
    for i, name in enumerate(names):
        if name.startswith("outer."):
            assert not post1[i].any(), name
        elif np.issubdtype(post1[i].dtype, np.floating):
            mean = sum(w * t[i].astype(np.float64) for w, (t, _) in zip(w1, pre1)) / w1.sum()
            np.testing.assert_allclose(post1[i], mean, rtol=1e-5, atol=1e-7, err_msg=name)
    pre = [load(5, p, False) for p in range(4)]
    weights = np.array([w for _, w in pre], np.float64)
    anchor, _ = load(4, 0, True)
    post, _ = load(5, 0, True)
    assert len(post) == len(names) == len(anchor)
    # each peer sends its own c_i (its mean gradient of the round), and they differ; c is their mean
    sc = [i for i, n in enumerate(names) if n.startswith("scaffold.") and pre[0][0][i].size > 1]
    assert all(pre[0][0][i].any() for i in sc)
    assert not all(np.array_equal(pre[0][0][i], pre[1][0][i]) for i in sc)
    assert not all(np.array_equal(pre[0][0][i], post[i]) for i in sc)
    for i, name in enumerate(names):
        if name.startswith("outer.") or not np.issubdtype(post[i].dtype, np.floating):
            continue
        mean = sum(w * t[i].astype(np.float64) for w, (t, _) in zip(weights, pre)) / weights.sum()
        if name in params:
            d = anchor[i].astype(np.float64) - mean
            m = 0.5 * anchor[names.index("outer." + name)].astype(np.float64) + d
            expect = anchor[i].astype(np.float64) - 0.5 * (d + 0.5 * m)
            np.testing.assert_allclose(post[names.index("outer." + name)], m, rtol=1e-4, atol=1e-6)
        else:
            expect = mean                      # BatchNorm statistics, momentum buffers and c: the mean
        np.testing.assert_allclose(post[i], expect, rtol=1e-4, atol=1e-6, err_msg=name)
    for p in range(1, 4):
        other, _ = load(5, p, True)
        assert all(np.array_equal(a, b) for a, b in zip(post, other)), p
    assert n_model < len(names)


def test_a_checkpoint_keeps_the_whole_round_state(tmp_path):
    from p2pfed.outputs import checkpoint
    opts = dict(average_optimizer_state=True, outer_momentum=0.5, outer_lr=0.5, scaffold=True)
    cfg, net, opt = _net_and_opt("sgd", **opts)
    _one_step(net, opt)
    carried = {f"{prefix}{n}": np.full(p.shape, value, np.float32) for n, p in net.named_parameters()
               for prefix, value in (("outer.", 0.5), ("scaffold.", -0.25))}
    state = capture_state(net, opt, cfg.train, carried, copy=True)
    assert [k for k in state if k.startswith("scaffold.")] and [k for k in state if k.startswith("outer.")]
    path = tmp_path / "ck.pt"
    checkpoint.save_checkpoint(path, state_dict=net.state_dict(), optimizer=opt.state_dict(), rnd=3,
                               digest=digest.digest(state), members=[0, 1], global_step=1,
                               model_args=model.model_args(cfg.model),
                               carried={k: torch.from_numpy(v) for k, v in carried.items()})
    # what run/checkpoints.load does
    _, net2, opt2 = _net_and_opt("sgd", **opts)
    ck = checkpoint.read(path, checkpoint.CHECKPOINT_FORMAT)
    net2.load_state_dict(ck["state_dict"])
    opt2.load_state_dict(ck["optimizer"])
    carried2 = {k: v.numpy() for k, v in ck["carried"].items()}
    assert digest.digest(capture_state(net2, opt2, cfg.train, carried2)) == ck["digest"]
