"""Checks across keys: every error names the key, its value and what is allowed."""
from __future__ import annotations

import re

from .schema import SECURE_MIN_MEMBERS, Config, ConfigError


def validate(cfg: Config) -> None:
    """Raise ConfigError naming the first key whose value is not allowed."""
    _peers(cfg)
    _train(cfg)
    _ranges(cfg)
    _faults(cfg)
    _data(cfg)


def _data(cfg: Config) -> None:
    d, m = cfg.data, cfg.model
    if d.classes and len(d.classes) != m.num_classes:
        raise ConfigError(f"data.classes names {len(d.classes)} classes but model.num_classes = {m.num_classes}; "
                          f"set model.num_classes = {len(d.classes)}")
    own = [p.id for p in cfg.peers if p.data_dir]
    if own and d.partition != "own":
        raise ConfigError(f"peers {own} set their own data_dir, but data.partition = {d.partition!r} cuts one shared "
                          f"data set; set data.partition = \"own\" (every peer trains on all of its own folder)")
    if d.partition == "own" and d.dataset != "folder":
        raise ConfigError(f"data.partition = \"own\" needs data.dataset = \"folder\" (each peer's image folder), "
                          f"got {d.dataset!r}")
    if d.partition == "own" and cfg.train.batchnorm == "sync" and cfg.train.local_epochs:
        raise ConfigError("train.batchnorm = \"sync\" trains the members in lockstep, step by step, but with "
                          "data.partition = \"own\" and train.local_epochs each site takes as many steps as its own "
                          "folder holds; set train.local_steps instead")
    if d.site_images < 0 or d.workers < 1:
        raise ConfigError(f"data.site_images = {d.site_images} must be >= 0 and data.workers = {d.workers} >= 1")


def _peers(cfg: Config) -> None:
    ids = [p.id for p in cfg.peers]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"[[peers]] ids must be unique, got {ids}")
    for p in cfg.peers:
        if p.id < 0:
            raise ConfigError(f"peers.id = {p.id} must be >= 0")
        if not 0 < p.port < 65536:
            raise ConfigError(f"peers.port = {p.port} for peer {p.id} must be in 1..65535")
        if cfg.security.curve and not p.public_key:
            raise ConfigError(f"security.curve is on but peer {p.id} has no public_key; "
                              f"run `p2pfed keygen` and list its public key")
    if not 0 <= cfg.averaging.min_peers <= max(1, len(ids)):
        raise ConfigError(f"averaging.min_peers = {cfg.averaging.min_peers} must be in 0..{len(ids)} "
                          f"(0 = a majority of the {len(ids)} peers)")
    d = cfg.security.mask_degree
    if d and (d < 8 or d % 2 or not cfg.security.secure_aggregation):
        raise ConfigError(f"security.mask_degree = {d} must be 0 (every other member) or an even number >= 8, and "
                          f"needs security.secure_aggregation = true")
    if cfg.security.secure_aggregation:
        if 0 < cfg.averaging.min_peers < SECURE_MIN_MEMBERS:
            raise ConfigError(f"averaging.min_peers = {cfg.averaging.min_peers} with security.secure_aggregation = "
                              f"true: in a round of two members each sees the other's update (the sum less its own), "
                              f"so rounds need at least {SECURE_MIN_MEMBERS}; set averaging.min_peers to 0 (a "
                              f"majority, and at least {SECURE_MIN_MEMBERS}) or to {SECURE_MIN_MEMBERS} or more")
        if 0 < len(ids) < SECURE_MIN_MEMBERS:
            raise ConfigError(f"security.secure_aggregation = true needs at least {SECURE_MIN_MEMBERS} peers, and "
                              f"[[peers]] lists {len(ids)}: in a round of two each member sees the other's update; "
                              f"add peers, or turn secure aggregation off")


def _train(cfg: Config) -> None:
    t = cfg.train
    if bool(t.local_steps) == bool(t.local_epochs):
        raise ConfigError(f"set exactly one of train.local_steps (optimiser steps per round) and train.local_epochs "
                          f"(epochs per round); got local_steps = {list(t.local_steps)}, local_epochs = "
                          f"{t.local_epochs}")
    if any(k < 1 for k in t.local_steps):
        raise ConfigError(f"train.local_steps = {list(t.local_steps)}: every entry must be >= 1")
    if t.local_epochs < 0:
        raise ConfigError(f"train.local_epochs = {t.local_epochs} must be > 0 (or 0 with train.local_steps set)")
    if t.outer_lr != 1.0 and t.outer_momentum == 0:
        raise ConfigError(f"train.outer_lr = {t.outer_lr} has no effect without train.outer_momentum > 0; "
                          f"set both, or leave outer_lr at 1")
    if t.batchnorm != "local" and cfg.model.norm != "batch":
        raise ConfigError(f"train.batchnorm = \"{t.batchnorm}\" needs BatchNorm, but model.norm = \"{cfg.model.norm}\"; "
                          f"set train.batchnorm = \"local\" for a normalization-free model")
    if cfg.model.norm != "batch" and cfg.model.pretrained:
        raise ConfigError("model.pretrained loads ImageNet weights of the BatchNorm network; set model.norm = "
                          "\"batch\" or model.pretrained = false")
    if t.round_deadline_s == float("inf"):
        raise ConfigError("train.round_deadline_s = inf: give a number of seconds, or 0 for no deadline")
    if t.round_target == "samples" and t.batchnorm == "sync":
        raise ConfigError("train.round_target = \"samples\" cannot be used with train.batchnorm = \"sync\": synchronized "
                          "BatchNorm sends `ready` before training, so the images a member will process are not known "
                          "then; use train.round_target = \"steps\"")
    if t.round_deadline_s and t.round_target != "samples":
        raise ConfigError(f"train.round_deadline_s = {t.round_deadline_s} needs train.round_target = \"samples\" (a "
                          f"member that stops early is weighted by the images it processed); set both, or set "
                          f"round_deadline_s = 0")
    if cfg.security.secure_aggregation and t.compression != "none":
        raise ConfigError(f"security.secure_aggregation = true cannot be used with train.compression = "
                          f"\"{t.compression}\": a masked sum needs one fixed-point scale for all members, and "
                          f"compressed shards have one scale per member; set train.compression = \"none\"")
    if cfg.security.secure_aggregation and t.average_optimizer_state and t.optimizer == "adamw":
        raise ConfigError("security.secure_aggregation = true cannot average AdamW's moments "
                          "(train.average_optimizer_state = true with train.optimizer = \"adamw\"): its second "
                          "moments (about 1e-10) are below the fixed point's resolution of 2^-32; use SGD, or set "
                          "train.average_optimizer_state = false")
    a = cfg.averaging
    if a.dead_after_s < 2 * a.heartbeat_interval_s:
        raise ConfigError(f"averaging.dead_after_s ({a.dead_after_s}) must be at least twice "
                          f"averaging.heartbeat_interval_s ({a.heartbeat_interval_s})")


def _ranges(cfg: Config) -> None:
    """Each key alone: (key, value, low, high, text of the allowed range); None = unbounded."""
    t, a, m = cfg.train, cfg.averaging, cfg.model
    checks = [
        ("train.rounds", t.rounds, 0, None, ">= 0"), ("train.bn_pool_images", t.bn_pool_images, 0, None, ">= 0"),
        ("train.threads", t.threads, 0, None, ">= 0"), ("train.max_steps", t.max_steps, 0, None, ">= 0"),
        ("train.eval_every", t.eval_every, 0, None, ">= 0"), ("train.weight_decay", t.weight_decay, 0, None, ">= 0"),
        ("output.checkpoint_every", cfg.output.checkpoint_every, 0, None, ">= 0"),
        ("train.label_smoothing", t.label_smoothing, 0, 1, "in [0, 1)"),
        ("train.outer_momentum", t.outer_momentum, 0, 1, "in [0, 1) (0 = no outer step)"),
        ("train.agc_clip", t.agc_clip, 0, None, ">= 0 (0 = off)"),
        ("train.small_input", t.small_input, 0, None, ">= 0 (0 = off)"),
        ("train.small_until", t.small_until, 0, 1, "in [0, 1]"),
        ("train.round_deadline_s", t.round_deadline_s, 0, None, ">= 0 seconds (0 = no deadline)"),
    ]
    for key, value, low, high, allowed in checks:
        if not value >= low or (high is not None and value >= high):     # `not >=`: NaN fails too
            raise ConfigError(f"{key} = {value} must be {allowed}")
    if not 0 <= cfg.output.metrics_port <= 65535:
        raise ConfigError(f"output.metrics_port = {cfg.output.metrics_port} must be a TCP port (1-65535), or 0 for "
                          f"no metrics endpoint")
    if cfg.output.metrics_port:
        local = max((sum(q.host == p.host for q in cfg.peers) for p in cfg.peers), default=1)
        if cfg.output.metrics_port + local - 1 > 65535:
            raise ConfigError(f"output.metrics_port = {cfg.output.metrics_port}: the {local} peers of one host serve "
                              f"on ports up to {cfg.output.metrics_port + local - 1}, beyond 65535; choose a lower port")
    if not cfg.output.metrics_bind:
        raise ConfigError('output.metrics_bind is empty; use "127.0.0.1" (this host only) or the address to serve on')
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", t.device):
        raise ConfigError(f"train.device = {t.device!r} is not a device; use auto, cpu, cuda or cuda:K")
    if not 0 < t.freeze_bn_at < 1:
        raise ConfigError(f"train.freeze_bn_at = {t.freeze_bn_at} must be in (0, 1): the fraction of the run after "
                          f"which BatchNorm is frozen")
    if not 0 < t.outer_lr <= 2:
        raise ConfigError(f"train.outer_lr = {t.outer_lr} must be in (0, 2]")
    positive = [("data.shards_per_peer", cfg.data.shards_per_peer), ("train.epochs", t.epochs), ("train.lr_base_batch", t.lr_base_batch),
                ("train.batch_size", t.batch_size), ("train.lr", t.lr), ("train.eval_batch_size", t.eval_batch_size),
                ("averaging.startup_timeout_s", a.startup_timeout_s), ("averaging.fetch_timeout_s", a.fetch_timeout_s),
                ("averaging.heartbeat_interval_s", a.heartbeat_interval_s), ("averaging.dead_after_s", a.dead_after_s),
                ("averaging.ready_timeout_s", a.ready_timeout_s), ("averaging.exchange_timeout_s", a.exchange_timeout_s),
                ("averaging.max_attempts", a.max_attempts), ("model.width_mult", m.width_mult),
                ("model.input_size", m.input_size), ("data.alpha", cfg.data.alpha)]
    for key, value in positive:
        if value <= 0:
            raise ConfigError(f"{key} = {value} must be > 0")


def _faults(cfg: Config) -> None:
    ids = [p.id for p in cfg.peers]
    for f in cfg.faults:
        if f.peer not in ids:
            raise ConfigError(f"faults.peer = {f.peer} is not a peer id (ids: {sorted(ids)})")
        if f.round < 1 or (cfg.train.rounds and f.round > cfg.train.rounds):
            raise ConfigError(f"faults.round = {f.round} must be in 1..{cfg.train.rounds or 'the last round'}")
        if f.action == "slow" and (f.phase != "train" or not 1.0 <= f.slow_factor <= 1000.0):
            raise ConfigError(f"faults: a slow peer (peer {f.peer}, round {f.round}) needs phase = \"train\" and "
                              f"slow_factor in 1..1000 (got {f.phase!r}, {f.slow_factor})")
        if f.action == "dissent" and f.phase != "exchange":
            raise ConfigError(f"faults.action = \"dissent\" (peer {f.peer}, round {f.round}) needs phase = \"exchange\"")
