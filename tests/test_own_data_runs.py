"""Real peers on their own folders (docs/own-data.md): sites with different class subsets train one
model whose per-class accuracy shows that no label was shifted; an unreadable image is skipped
and named, never a lost site; real photos of many sizes train at their sites; a peer that starts
from other weights, or holds a class folder nobody declared, is named."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from helpers import make_config, peer_log, start_peer, story, summary, wait_all
from photo_sites import make_site

from p2pfed import config
from p2pfed.learning import folders
from p2pfed.run.launch import sites

pytestmark = pytest.mark.slow

ALL = ["a", "b", "c", "d", "e", "f"]


def _own_config(tmp_path: Path, dirs: list[Path], **sections) -> tuple[config.Config, Path]:
    """make_config's fast settings, with each peer on its own folder as launch.py sets it up."""
    sections["data"] = {"dataset": "folder", **sections.get("data", {})}
    cfg, path = make_config(tmp_path, len(dirs), **sections)
    cfg = sites.own_folders(cfg, [str(d) for d in dirs], None)
    path.write_text(config.dumps_toml(cfg))
    return cfg, path


def test_sites_with_different_classes_train_one_model_with_labels_mapped_by_name(tmp_path, procs):
    s0 = make_site(tmp_path / "site0", ALL, 14, 5, seed=10)
    s1 = make_site(tmp_path / "site1", ["c", "d", "e", "f"], 24, 5, seed=11)     # sorted locally, c would be 0
    s2 = make_site(tmp_path / "site2", ALL, 12, 5, seed=12)
    (s2 / "train" / "a" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 20)
    cfg, path = _own_config(tmp_path, [s0, s1, s2], train={"rounds": 5, "local_steps": [15]})
    assert cfg.data.classes == tuple(ALL)
    run = tmp_path / "run"
    ps = [start_peer(procs, path, i) for i in range(3)]
    assert wait_all(ps, 240, run) == [0, 0, 0], story(run, 3)
    s = summary(run)
    assert [r["members"] for r in s["rounds"]] == [[0, 1, 2]] * 5 and all(r["digests_agree"] for r in s["rounds"])
    assert s["never_joined"] == [] and s["classes"] == ALL
    # the corrupt file is skipped, counted and named; its site took part in every round
    assert s["unreadable"]["2"]["count"] == 1 and s["unreadable"]["2"]["files"] == ["train/a/corrupt.jpg"]
    assert "corrupt.jpg" in peer_log(run, 2)
    # every class is recognised at every site that tests it: a shifted label would sink some
    per_site = s["sites"]
    assert set(per_site) == {"0", "1", "2", "pooled"} and per_site["pooled"]["total"] == 6 * 5 + 4 * 5 + 6 * 5
    for site in ("0", "1", "2"):
        for c, v in per_site[site]["per_class"].items():
            if v["total"]:
                assert v["accuracy"] >= 0.6, (site, c, v, story(run, 3))
    assert per_site["1"]["per_class"]["a"]["total"] == 0          # site 1 has no a
    assert s["per_class"]["a"]["total"] == 10 and s["per_class"]["a"]["accuracy"] >= 0.6
    assert per_site["0"]["train_images"] == 6 * 14 and per_site["1"]["train_images"] == 4 * 24
    # each peer weighted by its own image count
    assert s["rounds"][0]["weights"] == {"0": 84, "1": 96, "2": 72}


@pytest.fixture(scope="module")
def clothing(tmp_path_factory) -> Path:
    archive = Path(__file__).resolve().parents[2] / "shared" / "data" / "clothing-dev.tar"
    if not archive.is_file():
        pytest.skip("real-photo test: ../shared/data/clothing-dev.tar is absent here")
    return folders.unpack_archive(archive, str(tmp_path_factory.mktemp("cache"))) / "clothing-dev"


def test_real_photos_of_many_sizes_train_at_three_sites(tmp_path, procs, clothing):
    out = tmp_path / "sites"
    sites.make_sites(str(clothing), str(out), 3, "iid", seed=0)
    for split in ("train", "test"):                               # site 1 lacks two classes
        for c in ("shoes", "skirt"):
            shutil.rmtree(out / "site1" / split / c)
    (out / "site2" / "train" / "hat" / "broken.jpg").write_bytes(b"\x00" * 500)
    dirs = [out / f"site{k}" for k in range(3)]
    cfg, path = _own_config(tmp_path, dirs, model={"input_size": 48, "cifar_stem": False},
                            train={"rounds": 2, "max_steps": 4, "batch_size": 16, "bn_pool_images": 32},
                            data={"dataset": "folder", "test_limit": 60})
    run = tmp_path / "run"
    ps = [start_peer(procs, path, i) for i in range(3)]
    assert wait_all(ps, 240, run) == [0, 0, 0], story(run, 3)
    s = summary(run)
    assert all(r["digests_agree"] and r["members"] == [0, 1, 2] for r in s["rounds"])
    assert s["unreadable"] == {"2": {"count": 1, "files": ["train/hat/broken.jpg"]}}
    assert all(s["sites"][k]["total"] > 0 and s["sites"][k]["accuracy"] is not None for k in ("0", "1", "2"))
    assert s["sites"]["1"]["per_class"]["shoes"]["total"] == 0
    assert "decoded while training" in peer_log(run, 0)
    st = torch.load(run / "consensus.pt", weights_only=True)
    assert st["classes"] == sorted(p.name for p in (clothing / "train").iterdir())


def test_a_peer_that_starts_from_other_weights_is_named_and_the_others_finish(tmp_path, procs):
    from p2pfed.learning import model
    cfg, path = make_config(tmp_path, 3, train={"rounds": 2, "max_steps": 5})
    for name, seed in (("a.pt", 1), ("b.pt", 2)):
        torch.save(model.build(cfg.model, seed=seed).state_dict(), tmp_path / name)
    path.write_text(config.dumps_toml(config.override(cfg, model={"weights_file": str(tmp_path / "a.pt")})))
    other = tmp_path / "other.toml"
    other.write_text(config.dumps_toml(config.override(cfg, model={"weights_file": str(tmp_path / "b.pt")})))
    run = tmp_path / "run"
    ps = [start_peer(procs, path, 0), start_peer(procs, path, 1), start_peer(procs, other, 2)]
    codes = wait_all(ps, 180, run)
    assert codes[:2] == [0, 0] and codes[2] != 0, story(run, 3)
    assert "model.start_digest" in peer_log(run, 2)
    assert "peer 2 trains with other options (model.start_digest" in peer_log(run, 0)
    assert all(r["members"] == [0, 1] for r in summary(run)["rounds"])


def test_a_class_folder_nobody_declared_stops_that_peer_naming_it(tmp_path, procs):
    site = make_site(tmp_path / "site", ["a", "b"], 2, 0, seed=1)
    (site / "train" / "shoos").mkdir()
    cfg, path = make_config(tmp_path, 2, data={"dataset": "folder", "partition": "own", "data_dir": str(site),
                                               "classes": ["a", "b", "shoes"], "site_images": 4},
                            model={"num_classes": 3})
    code = wait_all([start_peer(procs, path, 0)], 120, tmp_path / "run")[0]
    assert code != 0
    text = peer_log(tmp_path / "run", 0)
    assert "'shoos' (did you mean 'shoes'?)" in text and "data.classes" in text


def test_own_data_with_secure_aggregation(tmp_path, procs):
    """Secure aggregation weighs a site by its image count as it weighed a partition by its size:
    the masked sums agree every round on three own folders."""
    dirs = [make_site(tmp_path / f"site{k}", ALL if k != 1 else ["c", "d", "e", "f"], 6, 2, seed=20 + k)
            for k in range(3)]
    cfg, path = _own_config(tmp_path, dirs, train={"rounds": 3, "local_steps": [2]},
                            security={"secure_aggregation": True})
    run = tmp_path / "run"
    ps = [start_peer(procs, path, i) for i in range(3)]
    assert wait_all(ps, 240, run) == [0, 0, 0], story(run, 3)
    s = summary(run)
    assert [r["members"] for r in s["rounds"]] == [[0, 1, 2]] * 3 and all(r["digests_agree"] for r in s["rounds"])
    assert s["sites"]["pooled"]["total"] == 2 * 6 + 2 * 4 + 2 * 6
    assert s["rounds"][0]["weights"] == {"0": 36, "1": 24, "2": 36}
