"""A peer's own data (data.partition = "own"): which folder it trains on, what must be agreed
before it loads (the class names, the size of an epoch), its own test folder, and the
unreadable images it reports (by their path inside the site, at most UNREADABLE_NAMED of them).
"""
from __future__ import annotations

import logging
from pathlib import Path

from ... import config
from ...learning import datasets, folders

log = logging.getLogger("p2pfed.run.own_data")

UNREADABLE_NAMED = 20      # unreadable files a report names (all are counted)


def data_dir(cfg, me: int) -> str:
    """This peer's folder: its [[peers]] data_dir, else data.data_dir."""
    return cfg.peer(me).data_dir or cfg.data.data_dir


def check(cfg, me: int) -> str:
    """This peer's data folder, after the checks own data needs before anything is loaded."""
    d, path = cfg.data, data_dir(cfg, me)
    if d.partition != "own":
        return d.data_dir
    if not d.classes:
        _, names = folders.class_folders(path, "train", d.cache_dir)
        raise config.ConfigError(
            f"peer {me}: data.partition = \"own\" but data.classes is empty. Every site must map its class folders "
            f"to the same outputs, so the class list is agreed by name: set data.classes to the classes of all "
            f"sites, in the same order on every peer (this site, {path}, has {names}); launch.py fills it in from "
            f"its --data-dir folders")
    if cfg.train.local_steps and not d.site_images:
        raise config.ConfigError(
            f"peer {me}: data.partition = \"own\" with train.local_steps needs the length of an epoch agreed by every "
            f"peer (the run's length and its evaluation rounds follow from it): set data.site_images to the mean "
            f"number of training images per site, the same on every peer; launch.py counts it from its --data-dir "
            f"folders (or use train.local_epochs, where every site counts epochs over its own folder)")
    return path


def check_classes(cfg, classes: list[str]) -> None:
    """The model's outputs fit the data's classes (a folder of 8 classes with 10 outputs, or of 12
    with 10, is a config mistake, never silently trained)."""
    if len(classes) != cfg.model.num_classes:
        raise config.ConfigError(
            f"the data has {len(classes)} classes ({', '.join(classes[:12])}{' ...' if len(classes) > 12 else ''}) "
            f"but model.num_classes = {cfg.model.num_classes}; set model.num_classes = {len(classes)} on every peer"
            + ("" if cfg.data.classes else ", or list the federation's classes in data.classes"))


def test_split(cfg, path: str) -> datasets.Split | None:
    """The test set this peer evaluates: the shared one (sliced per member later), or with own data
    its own site's test folder (None when the site has none)."""
    if cfg.data.partition != "own":
        return datasets.load_split(cfg.data, "test", cfg.model.input_size)
    try:
        return datasets.load_split(cfg.data, "test", cfg.model.input_size, path)
    except folders.MissingSplit:
        log.info("%s has no test/ folder: this site evaluates nothing (the others' folders still do)", path)
        return None


def unreadable(peer) -> dict[str, str]:
    """Every unreadable image this peer has skipped so far: file -> why."""
    return {**peer.train_split.bad, **peer.evaluator.unreadable()}


def site_name(path: str) -> str:
    """A file's path inside its site (split/class/file): what a report may say of it."""
    return "/".join(Path(path).parts[-3:])


def unreadable_stats(peer) -> dict:
    """The report's count of unreadable images, and the first of them by name."""
    bad = unreadable(peer)
    return {"unreadable": len(bad), "unreadable_files": [site_name(f) for f in sorted(bad)][:UNREADABLE_NAMED]}
