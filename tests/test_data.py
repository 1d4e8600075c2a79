import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from p2pfed import config
from p2pfed.learning import augment, datasets, evaluate, model, partition, schedule
from p2pfed.learning import train as training


def test_iid_partition_is_deterministic_disjoint_and_covering():
    a = partition.partition_iid(1003, 5, seed=7)
    b = partition.partition_iid(1003, 5, seed=7)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    allidx = np.concatenate(a)
    assert len(allidx) == 1003 and len(np.unique(allidx)) == 1003
    assert max(map(len, a)) - min(map(len, a)) <= 1
    assert not np.array_equal(a[0], partition.partition_iid(1003, 5, seed=8)[0])


def test_dirichlet_partition_is_deterministic_disjoint_covering_and_skewed():
    labels = np.random.default_rng(0).integers(0, 10, 5000)
    a = partition.partition_dirichlet(labels, 5, alpha=0.1, seed=3)
    b = partition.partition_dirichlet(labels, 5, alpha=0.1, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    allidx = np.concatenate(a)
    assert len(allidx) == 5000 and len(np.unique(allidx)) == 5000
    # label skew: some peer's most common class is far above the 10% of an iid split
    top_share = max(np.bincount(labels[p], minlength=10).max() / len(p) for p in a)
    assert top_share > 0.4


def test_synthetic_is_deterministic_and_train_test_differ():
    a, b = datasets.synthetic(50, seed=1), datasets.synthetic(50, seed=1)
    assert torch.equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    t = datasets.synthetic(50, seed=1, split_seed=1)
    assert not torch.equal(a.images, t.images)
    assert a.images.dtype == torch.uint8 and a.images.shape == (50, 3, 32, 32)


def test_synthetic_is_learnable_far_above_chance():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    cfg = config.override(config.Config(), model={"width_mult": 0.1},
                          train={"batch_size": 32, "lr": 0.01, "schedule": "constant"})
    train, test = datasets.synthetic(1000, 0), datasets.synthetic(300, 0, split_seed=1)
    net = model.channels_last(model.build(cfg.model))
    opt = training.make_optimizer(net, cfg.train)
    stream = augment.stream(train, 32, torch.Generator().manual_seed(0), True, 32)
    training.train_steps(net, opt, stream, cfg.train, 150, 0, 150, 32)
    ev = evaluate.evaluate(net, test, 256, 32)
    assert ev["correct"] / ev["total"] > 0.5       # chance is 0.1


def test_augment_keeps_shape_dtype_and_changes_images():
    x = datasets.synthetic(16, 0).images
    y = augment.augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == torch.uint8 and not torch.equal(x, y)


def test_folder_loader_reads_the_dev_archive(dev_data, tmp_path):
    dcfg = config.DataConfig(dataset="folder", data_dir=str(dev_data), cache_dir=str(tmp_path))
    train, test = datasets.load_split(dcfg, "train"), datasets.load_split(dcfg, "test")
    assert len(train) == 40000 and len(test) == 10000
    assert train.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert np.array_equal(np.bincount(train.labels), [4000] * 10)
    assert all(f"/{train.classes[l]}/" in f for f, l in zip(train.files[::997], train.labels[::997]))
    # a peer decodes only its own partition
    part, idx, n_total = datasets.peer_partition(dcfg, 2, 5)
    assert len(part) == 8000 and part.images.shape == (8000, 3, 32, 32)
    mean = part.images.float().div(255).mean(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.tensor([0.491, 0.482, 0.447]), atol=0.02)
    # unpacked once: a second load reuses the cache
    before = sorted(p.name for p in tmp_path.iterdir())
    datasets.load_split(dcfg, "test")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_missing_folder_gives_clear_error(tmp_path):
    with pytest.raises(datasets.DataError, match=r"does not exist \(data.data_dir, or a \[\[peers\]\] data_dir\); pass --data-dir"):
        datasets.load_split(config.DataConfig(dataset="folder", data_dir=str(tmp_path / "nope")), "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(datasets.DataError, match="no train/ folder"):
        datasets.load_split(config.DataConfig(dataset="folder", data_dir=str(tmp_path / "empty")), "train")


def test_cifar10_offline_fails_with_one_clear_line_and_no_traceback(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text(f'[data]\ndataset = "cifar10"\ndata_dir = "{tmp_path / "cifar"}"\n'
                    '[[peers]]\nid = 0\nport = 1\n')
    out = subprocess.run([sys.executable, "-m", "p2pfed", "centralized", "--config", str(toml), "--run-dir",
                          str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert "could not be downloaded" in out.stderr and "--dataset folder" in out.stderr


def test_model_cifar_stem_and_width():
    net = model.build(config.ModelConfig(width_mult=0.1, cifar_stem=True))
    assert net.features[0][0].stride == (1, 1)
    assert net.classifier[-1].out_features == 10
    assert model.build(config.ModelConfig(width_mult=0.1, cifar_stem=False)).features[0][0].stride == (2, 2)
    with torch.no_grad():
        assert net.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(model.ModelError, match="does not exist"):
        model.build(config.ModelConfig(weights_file=str(tmp_path / "w.pt")))


def test_onecycle_schedule_warms_up_then_decays():
    lrs = [schedule.lr_at(s, 100, 0.01, "onecycle") for s in range(100)]
    peak = int(np.argmax(lrs))
    assert 5 < peak < 25 and abs(max(lrs) - 0.01) < 1e-3 and lrs[-1] < 1e-4 and lrs[0] < 0.002


def test_spread_sample_of_a_class_sorted_split_covers_every_class():
    # image folders and partitions list images class by class: a prefix would be one class
    labels = np.repeat(np.arange(10), 100)
    split = datasets.Split(labels, [str(c) for c in range(10)], images=torch.zeros((1000, 3, 2, 2), dtype=torch.uint8))
    s = datasets.spread_sample(split, 200, seed=3)
    assert len(s) == 200 and min(np.bincount(s.labels, minlength=10)) >= 8
    assert np.array_equal(datasets.spread_sample(split, 200, seed=3).labels, s.labels)      # deterministic
    assert datasets.spread_sample(split, 5000, seed=3) is split
    lazy = datasets.Split(labels[:3], ["a"], files=["x", "y", "z"])
    import unittest.mock
    with unittest.mock.patch.object(datasets, "decode_images", lambda files, size: (torch.zeros((len(files), 3, 2, 2)), list(range(len(files))), {})):
        assert datasets.spread_sample(lazy, 10, seed=0).images is not None        # all of a lazy split: decoded


def test_an_archive_is_unpacked_once_even_when_several_processes_ask_at_once(tmp_path):
    """Four processes open the same image-folder archive at the same moment: one unpacks it, the
    others wait for that copy; every process gets the same complete tree, and no temporary is left."""
    import tarfile

    from PIL import Image
    src = tmp_path / "src" / "tiny"
    for split in ("train", "test"):
        for c in ("a", "b"):
            (src / split / c).mkdir(parents=True)
            for i in range(150):
                Image.new("RGB", (4, 4), (i, 0, 0)).save(src / split / c / f"{i}.png")
    archive = tmp_path / "tiny.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(src, arcname="tiny")
    cache = tmp_path / "cache"
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout); "
            "from pathlib import Path; from p2pfed.learning import folders; "
            f"print('ROOT', folders.unpack_archive(Path({str(archive)!r}), {str(cache)!r}))")
    ps = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
          for _ in range(4)]
    outs = [p.communicate(timeout=120)[0] for p in ps]
    assert all(p.returncode == 0 for p in ps), outs
    roots = {line.split("ROOT ", 1)[1] for out in outs for line in out.splitlines() if line.startswith("ROOT ")}
    assert len(roots) == 1, outs
    assert sum(out.count("unpacking ") for out in outs) == 1, outs
    root = Path(roots.pop())
    assert len(list(root.glob("tiny/*/*/*.png"))) == 600
    assert [p.name for p in cache.iterdir() if ".tmp" in p.name] == []


@pytest.mark.parametrize("width", [0.1, 1.0])
def test_our_mobilenet_v2_is_torchvisions_tree_and_initial_weights(width):
    """The peers build MobileNetV2 without importing torchvision (its import costs 1.4 s per
    process); the same seed must give torchvision's module tree and weights, so its ImageNet
    weights and earlier checkpoints load."""
    import torchvision
    from p2pfed.learning.mobilenet import MobileNetV2
    torch.manual_seed(3)
    ref = torchvision.models.mobilenet_v2(width_mult=width)
    torch.manual_seed(3)
    ours = MobileNetV2(width_mult=width)
    a, b = ref.state_dict(), ours.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_shards_give_each_peer_its_classes_and_every_image_exactly_once():
    labels = np.repeat(np.arange(10), 400)                  # 10 classes, 400 images each, sorted
    rng = np.random.default_rng(5)
    labels = labels[rng.permutation(len(labels))]           # any order: shards sort by label
    parts = partition.partition(labels, 5, "shards", 0.5, seed=3, shards_per_peer=2)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(labels)))    # every image once
    hist = partition.histogram(labels, parts, 10)
    for row in hist:                                         # 10 shards of one class each: 2 classes a peer
        assert sorted(row) == [0] * 8 + [400, 400], hist
    again = partition.partition(labels, 5, "shards", 0.5, seed=3, shards_per_peer=2)             # deterministic
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    # 15 shards of 266-267 images: a shard spans at most 2 classes, so a peer holds at most 6
    three = partition.partition(labels, 5, "shards", 0.5, seed=3, shards_per_peer=3)
    assert all(len(p) in (799, 800, 801) for p in three)
    assert all(sum(1 for c in row if c) <= 6 for row in partition.histogram(labels, three, 10))
    with pytest.raises(ValueError, match="cannot cut"):
        partition.partition_shards(labels[:8], 5, 2, seed=0)
