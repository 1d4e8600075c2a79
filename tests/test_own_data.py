"""A site's own data, the pure and in-process parts (docs/own-data.md): classes agreed by name,
photos of any size, format and mode, unreadable files skipped and named, bounded memory while
streaming, demo sites, the launcher's own folders, the head kept by class name, the ONNX
metadata's preprocessing against the evaluation rule, and the summary's per-site view."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from photo_sites import COLOURS, make_site, photo, save

from p2pfed import config
from p2pfed.consensus import recipe
from p2pfed.learning import datasets, folders, model, photos
from p2pfed.outputs import summary
from p2pfed.run.launch import sites


def test_classes_map_by_name_whatever_a_site_holds(tmp_path):
    make_site(tmp_path / "s", ["c", "e", "f"], 2, 0, seed=1)     # no a, b, d: sorted locally c would be 0
    files, labels, classes = folders.list_split(str(tmp_path / "s"), "train", classes=("a", "b", "c", "d", "e", "f"))
    assert classes == ["a", "b", "c", "d", "e", "f"]
    assert sorted(set(labels)) == [2, 4, 5]
    for f, y in zip(files, labels):
        assert Path(f).parent.name == classes[y]
    # without an agreed list a shared data set keeps its sorted folders
    assert folders.list_split(str(tmp_path / "s"), "train")[2] == ["c", "e", "f"]


def test_a_misspelt_class_folder_is_named_with_the_nearest_class(tmp_path):
    (tmp_path / "s" / "train" / "shoos").mkdir(parents=True)
    (tmp_path / "s" / "train" / "hat").mkdir(parents=True)
    with pytest.raises(folders.DataError, match=r"'shoos' \(did you mean 'shoes'\?\).*not in data.classes"):
        folders.list_split(str(tmp_path / "s"), "train", classes=("hat", "shoes", "skirt"))


def test_photos_of_every_size_format_and_mode_decode_upright_at_the_input_size(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    paths = [save(photo(rng, COLOURS["a"], 50 + 7 * k, 40 + 3 * k), tmp_path / f"p{k}", k) for k in range(5)]
    gray = tmp_path / "g.png"
    Image.fromarray(photo(rng, COLOURS["b"], 60, 30)).convert("L").save(gray)
    paths.append(gray)
    for p in paths:
        t = photos.eval_image(str(p), 32)
        assert t.shape == (3, 32, 32) and t.dtype == torch.uint8, p
        u = photos.train_image(str(p), 32, seed=3)
        assert u.shape == (3, 32, 32) and torch.equal(u, photos.train_image(str(p), 32, seed=3)), p
    # the EXIF-rotated one (kind 4) was stored 40+12 wide and 50+28 high, rotated: upright it is 78 x 52
    assert photos.open_rgb(str(paths[4])).size == (78, 52)
    # the red image stays red after CMYK and alpha: a wrong channel order or black alpha would show
    red = photos.eval_image(str(paths[0]), 32).float().mean(dim=(1, 2))
    assert red[0] > 2 * red[1] and red[0] > 2 * red[2]


def test_unreadable_files_are_skipped_and_named_never_fatal(tmp_path):
    make_site(tmp_path / "s", ["a", "b"], 6, 0, seed=2)
    garbage = tmp_path / "s" / "train" / "a" / "garbage.jpg"
    garbage.write_bytes(b"this is not a jpeg at all" * 10)
    good = sorted((tmp_path / "s" / "train" / "b").glob("*.jpg"))[0].read_bytes()
    truncated = tmp_path / "s" / "train" / "b" / "truncated.jpg"
    truncated.write_bytes(good[: len(good) // 3])
    shared = datasets.image_folder(str(tmp_path / "s"), "train", classes=("a", "b"), size=32)
    assert shared.stream and not shared.bad and len(shared) == 14   # a shared set keeps its listing (same partitions)
    split = datasets.image_folder(str(tmp_path / "s"), "train", classes=("a", "b"), size=32, own=True)
    assert split.stream and str(garbage) in split.bad and len(split) == 12 + 1    # the header check caught one
    dec = photos.Decoder(2)
    try:
        stream = photos.PhotoStream(split.files, split.labels, 5, torch.Generator().manual_seed(0), True, 32, 32, dec)
        batches = [next(stream) for _ in range(8)]      # three passes over 12 readable images and a truncated one
        assert all(1 <= len(y) <= 5 and set(y.tolist()) <= {0, 1} for _, y in batches)
        assert sum(len(y) for _, y in batches) >= 3 * 12 - 5
        assert str(truncated) in dec.bad                 # found while decoding, skipped, named
        images, kept = dec.decode(split.files, 32)
        assert len(kept) == 12 and len(images) == 12
    finally:
        dec.close()
    # the in-memory path skips them too
    images, kept, bad = datasets.decode_images([str(garbage)] + split.files[:3], 32)
    assert kept == [1, 2, 3] and str(garbage) in bad


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read the resident set size")
def test_streaming_a_folder_far_larger_than_a_batch_keeps_memory_bounded(tmp_path):
    """4,000 listed photos of 400 x 533 (decoded whole: 2.6 GB; at 128 px: 197 MB); two epochs' worth
    of batches of 32 must not grow the resident set by more than 60 MB."""
    rng = np.random.default_rng(0)
    real = [save(photo(rng, COLOURS["abcdef"[k % 6]], 400, 533), tmp_path / f"big{k}", 0) for k in range(12)]
    files = [str(real[i % len(real)]) for i in range(4000)]
    labels = np.arange(4000) % 6
    dec = photos.Decoder(2)
    try:
        stream = photos.PhotoStream(files, labels, 32, torch.Generator().manual_seed(0), True, 128, 128, dec)
        for _ in range(5):
            next(stream)
        before = _rss_mb()
        for _ in range(250):           # 8,000 images: two passes over the listing
            x, y = next(stream)
        grown = _rss_mb() - before
    finally:
        dec.close()
    assert x.shape == (32, 3, 128, 128)
    assert grown < 60, f"the resident set grew by {grown:.0f} MB while streaming"


def test_demo_sites_follow_the_partition_and_each_sites_class_mix(tmp_path):
    make_site(tmp_path / "src", list("abcdef"), 30, 10, seed=3)
    m = sites.make_sites(str(tmp_path / "src"), str(tmp_path / "out"), 3, "dirichlet", 0.5, seed=1)
    train_total = sum(sum(s["train"].values()) for s in m["sites"])
    test_total = sum(sum(s["test"].values()) for s in m["sites"])
    assert train_total == 180 and test_total == 60
    for s in m["sites"]:
        on_disk = {c: len(os.listdir(tmp_path / "out" / s["folder"] / "train" / c)) for c in s["train"]}
        assert on_disk == s["train"]
        for c in s["test"]:          # a site is tested on classes it trains on
            assert c in s["train"]
    assert json.loads((tmp_path / "out" / "sites.json").read_text()) == m
    with pytest.raises(config.ConfigError, match="not empty"):
        sites.make_sites(str(tmp_path / "src"), str(tmp_path / "out"), 3)


def test_the_launcher_agrees_classes_and_epoch_size_from_its_folders(tmp_path):
    make_site(tmp_path / "s0", list("abcdef"), 4, 1, seed=0)
    make_site(tmp_path / "s1", list("cdef"), 2, 1, seed=1)
    cfg = config.replace_peers(config.Config(), config.local_peers(2, [5000, 5001]))
    cfg = sites.own_folders(cfg, [str(tmp_path / "s0"), str(tmp_path / "s1")], None)
    assert cfg.data.partition == "own" and cfg.data.classes == tuple("abcdef") and cfg.model.num_classes == 6
    assert cfg.data.site_images == round((24 + 8) / 2)
    assert [p.data_dir for p in cfg.peers] == [str(tmp_path / "s0"), str(tmp_path / "s1")]
    assert "data.classes=a,b,c,d,e,f" in recipe.of(cfg)
    with pytest.raises(config.ConfigError, match="3 --data-dir folders for 2 peers"):
        sites.own_folders(cfg, [str(tmp_path / "s0")] * 3, None)
    with pytest.raises(config.ConfigError, match="--partition iid cuts one shared data set"):
        sites.own_folders(cfg, [str(tmp_path / "s0"), str(tmp_path / "s1")], "iid")
    (tmp_path / "s1" / "train" / "g").mkdir()
    fixed = config.override(cfg, data={"classes": list("abcdef")})
    with pytest.raises(config.ConfigError, match=r"peer 1: .*'g'.*not in data.classes"):
        sites.own_folders(fixed, [str(tmp_path / "s0"), str(tmp_path / "s1")], None)


def test_config_checks_of_own_data():
    cfg = config.replace_peers(config.Config(), config.local_peers(2, [5000, 5001]))
    with pytest.raises(config.ConfigError, match=r"data.classes names 3 classes but model.num_classes = 10"):
        config.override(cfg, data={"classes": ["x", "y", "z"]})
    with pytest.raises(config.ConfigError, match="names \\['x'\\] more than once"):
        config.override(cfg, data={"classes": ["x", "x"]}, model={"num_classes": 2})
    with pytest.raises(config.ConfigError, match="set their own data_dir.*partition"):
        config.from_dict({"peers": [{"id": 0, "port": 5000, "data_dir": "/a"}, {"id": 1, "port": 5001}]})
    mine = recipe.of(config.override(cfg, data={"classes": ["x", "y"]}, model={"num_classes": 2}))
    theirs = recipe.of(config.override(cfg, data={"classes": ["y", "x"]}, model={"num_classes": 2}))
    assert recipe.differences(mine, theirs) == "data.classes: x,y here, y,x there"
    start = recipe.with_start(mine, "ab" * 32)
    assert recipe.differences(start, mine) == \
        "model.start_digest: abababababababab here, (absent: the seed's random weights) there"


def test_a_consensus_file_keeps_its_head_rows_by_class_name(tmp_path):
    mcfg = config.ModelConfig(width_mult=0.1, num_classes=3)
    old = model.build(mcfg, seed=1)
    path = tmp_path / "consensus.pt"
    torch.save({"format": "p2pfed-consensus-1", "state_dict": old.state_dict(), "classes": ["hat", "shoes", "skirt"]},
               path)
    new_cfg = config.ModelConfig(width_mult=0.1, num_classes=4, weights_file=str(path))
    new = model.build(new_cfg, seed=2, classes=["skirt", "dress", "hat", "shoes"])
    w_old, w_new = old.classifier[-1].weight, new.classifier[-1].weight
    for i, j in ((0, 2), (2, 0), (3, 1)):          # skirt, hat, shoes: by name, in the new order
        assert torch.equal(w_new[i], w_old[j])
    assert not torch.equal(w_new[1], w_old[0])      # dress is new: freshly initialised
    assert torch.equal(new.features[0][0].weight, old.features[0][0].weight)


def test_predict_preprocesses_exactly_as_evaluation_does(tmp_path):
    from p2pfed.learning import augment
    from p2pfed.outputs import predict
    rng = np.random.default_rng(5)
    for k in range(5):
        p = save(photo(rng, COLOURS["c"], 70 + 9 * k, 45 + 5 * k), tmp_path / f"q{k}", k)
        ours = augment.normalize(photos.eval_image(str(p), 40)[None], 40)[0].numpy()
        theirs = predict.preprocess(p, 40, np.asarray(augment.CIFAR_MEAN, np.float32),
                                    np.asarray(augment.CIFAR_STD, np.float32))
        assert np.abs(ours - theirs).max() < 1e-5, p


def test_the_summary_shows_every_site_every_class_and_the_pooled_accuracy():
    classes = ["a", "b", "c"]
    by = {0: {"correct": 8, "total": 10, "class_correct": [3, 5, 0], "class_total": [4, 6, 0], "n_samples": 50,
              "unreadable": 1},
          1: {"correct": 1, "total": 2, "class_correct": [0, 0, 1], "class_total": [0, 0, 2], "n_samples": 20},
          2: {"correct": 0, "total": 0, "class_correct": [0, 0, 0], "class_total": [0, 0, 0], "n_samples": 30}}
    s = summary.sites(by, classes)
    assert s["0"]["accuracy"] == 0.8 and s["1"]["accuracy"] == 0.5 and s["2"]["accuracy"] is None
    assert s["pooled"] == {"accuracy": 0.75, "correct": 9, "total": 12}
    assert s["0"]["per_class"]["b"] == {"correct": 5, "total": 6, "accuracy": 0.8333}
    pooled = summary.per_class(by, classes)
    assert pooled["c"] == {"correct": 1, "total": 2, "accuracy": 0.5}
    bad = dict(by)
    bad[1] = {**by[1], "class_correct": [0, "x", 1]}      # from the network: ignored, not trusted
    assert summary.per_class(bad, classes)["c"]["total"] == 0


def test_small_images_of_one_size_stay_in_memory_even_when_the_model_upscales_them(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in "ab":
        (tmp_path / "s" / "train" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(photo(rng, COLOURS[c], 32, 32)).save(tmp_path / "s" / "train" / c / f"{i}.png")
    assert not datasets.image_folder(str(tmp_path / "s"), "train", size=224).stream      # CIFAR-like at 224 px
    assert not datasets.image_folder(str(tmp_path / "s"), "train", size=32).stream
    Image.fromarray(photo(rng, COLOURS["a"], 40, 30)).save(tmp_path / "s" / "train" / "a" / "odd.png")
    assert datasets.image_folder(str(tmp_path / "s"), "train", size=32).stream           # mixed sizes stream


def test_a_stream_with_more_broken_than_good_files_goes_on_with_the_good_ones(tmp_path):
    make_site(tmp_path / "s", ["a"], 4, 0, seed=4)
    good = sorted((tmp_path / "s" / "train" / "a").iterdir())
    files = [str(f) for f in good]
    head = good[0].read_bytes()
    for k in range(6):                    # they pass the header check, then fail to decode
        bad = tmp_path / f"t{k}.jpg"
        bad.write_bytes(head[: len(head) // 4] if good[0].suffix == ".jpg" else b"")
        files.append(str(bad))
    dec = photos.Decoder(2)
    try:
        stream = photos.PhotoStream(files, np.zeros(len(files), dtype=np.int64), 4, torch.Generator().manual_seed(1),
                                    True, 32, 32, dec)
        got = sum(len(next(stream)[1]) for _ in range(12))
    finally:
        dec.close()
    assert got >= 12 and len(dec.bad) == 6


def test_launch_flags_for_own_data(tmp_path):
    from p2pfed.run.launch import launcher
    make_site(tmp_path / "s0", ["a", "b"], 2, 1, seed=0)
    # from the repo root, whose peers.toml says dataset = "cifar10", partition = "iid"
    cfg, _, _ = launcher.resolve_config(launcher.parse_args(
        ["--peers", "2", "--partition", "own", "--data-dir", str(tmp_path / "s0"), "--run-dir", str(tmp_path / "r")]))
    assert cfg.data.partition == "own" and [p.data_dir for p in cfg.peers] == [str(tmp_path / "s0")] * 2
    assert cfg.data.classes == ("a", "b") and cfg.data.dataset == "folder"
