"""Peers on a device: train.device resolution and its errors, the augmentation on a device, and
(marked gpu, skipped without CUDA) real peers training on a GPU, with a CPU peer among them."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import check_round_exact, make_config, start_peer, summary, wait_all
from p2pfed.config import ConfigError
from p2pfed.learning import augment, device

CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not CUDA, reason="no CUDA device on this machine: the GPU checks run on a GPU host "
                                          "(bench/gpu_check.sh)")


def test_auto_is_the_cpu_without_cuda_and_spreads_peers_over_the_gpus_with_it():
    if not CUDA:
        assert device.resolve("auto", 3) == torch.device("cpu")
    else:
        n = torch.cuda.device_count()
        assert [device.resolve("auto", k) for k in range(n + 1)][-1] == torch.device("cuda:0")
    assert device.resolve("cpu", 0) == torch.device("cpu")


def test_a_device_this_host_lacks_is_an_error_naming_the_key_and_what_there_is():
    gpus = torch.cuda.device_count() if CUDA else 0
    with pytest.raises(ConfigError, match=rf"train.device = 'cuda:{gpus + 6}', but this host has .*available: cpu"):
        device.resolve(f"cuda:{gpus + 6}", 0)
    if not CUDA:
        with pytest.raises(ConfigError, match=r"train.device = 'cuda', but this host has no CUDA \(available: cpu\)"):
            device.resolve("cuda", 0)
    with pytest.raises(ConfigError, match="is not a device; use auto, cpu, cuda or cuda:K"):
        device.resolve("gpu0", 0)


def test_a_peer_given_a_device_it_lacks_exits_2_with_that_line(tmp_path):
    cfg, path = make_config(tmp_path, 2)
    bad = f"cuda:{torch.cuda.device_count() + 6 if CUDA else 0}"
    p = subprocess.run([sys.executable, "-m", "p2pfed", "peer", "--config", str(path), "--id", "0", "--device", bad],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert f"train.device = '{bad}'" in p.stderr and "available: cpu" in p.stderr and "Traceback" not in p.stderr


def _crops(dev: str, n: int = 4000):
    """Augment n copies of an image whose pixel (r, c) has value r * 8 + c in channel 0: the
    top-left pixel that survives gives the crop offset, the row order the flip."""
    img = (torch.arange(32).view(32, 1) * 8 + torch.arange(32).view(1, 32)) % 251
    images = torch.stack([img, img, img]).to(torch.uint8).expand(n, 3, 32, 32).contiguous().to(dev)
    out = augment.augment(images, torch.Generator(device=dev).manual_seed(0)).cpu()
    return images.cpu(), out


@pytest.mark.parametrize("dev", ["cpu", pytest.param("cuda", marks=gpu)])
def test_the_augmentation_on_a_device_crops_and_flips_as_specified(dev):
    images, out = _crops(dev)
    assert out.shape == images.shape and out.dtype == torch.uint8 and int(out.max()) <= 255
    row = out[:, 0, 16].numpy().astype(int)                      # the middle row rises left to right ...
    flipped = row[:, 10] > row[:, 20]                            # ... unless the image was flipped
    assert abs(np.mean(flipped) - 0.5) < 0.04, np.mean(flipped)
    # the vertical offset: the pad rows are zero; the first non-zero row of column 16 tells the shift
    col = out[:, 0, :, 16].numpy()
    top_pad = (col[:, :5] == 0).sum(axis=1)                      # 0..4 rows of padding at the top
    counts = np.bincount(top_pad, minlength=5)
    assert counts.sum() == len(col) and counts.min() > 0.08 * len(col), counts   # every shift happens


@gpu
@pytest.mark.gpu
def test_two_peers_on_cuda_and_a_cpu_peer_agree_every_round(tmp_path, procs):
    cfg, path = make_config(tmp_path, 3, train={"rounds": 5})
    run = tmp_path / "run"
    ps = [start_peer(procs, path, 0, "--device", "cuda"), start_peer(procs, path, 1, "--device", "cuda"),
          start_peer(procs, path, 2, "--device", "cpu")]
    assert wait_all(ps, 240) == [0, 0, 0]
    s = summary(run)
    for r in s["rounds"]:
        assert r["members"] == [0, 1, 2] and r["digests_agree"], r
        check_round_exact(run, r["round"], r["members"], r["members"])
    assert "starting on cuda" in (run / "peer-0.log").read_text()
    assert json.loads((run / "summary.json").read_text())["final"]["accuracy"] > 0.1


@pytest.mark.skipif(CUDA, reason="on a CUDA host auto means the GPU: this checks a host without one")
def test_cpu_and_auto_give_the_same_digests_on_a_host_without_cuda(tmp_path, procs):
    digests = {}
    for dev in ("cpu", "auto"):
        (tmp_path / dev).mkdir()
        cfg, path = make_config(tmp_path / dev, 3, train={"rounds": 3, "max_steps": 8, "device": dev})
        ps = [start_peer(procs, path, i) for i in range(3)]
        assert wait_all(ps, 180) == [0, 0, 0]
        digests[dev] = [r["digests"]["0"] for r in summary(tmp_path / dev / "run")["rounds"]]
    assert digests["cpu"] == digests["auto"] and len(digests["cpu"]) == 3
