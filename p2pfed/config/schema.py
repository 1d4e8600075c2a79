"""The config's schema: one frozen dataclass per section of peers.toml, every field with a
default and a one-line comment (docs/configuration.md's key tables are made from them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key and the fix."""


@dataclass(frozen=True)
class PeerSpec:
    id: int                      # unique peer id, >= 0; the lowest live id proposes groups
    host: str = "127.0.0.1"      # address other peers connect to (advertised address)
    port: int = 0                # TCP port this peer listens on
    bind: str = ""               # address to bind; "" means the same as host (use 0.0.0.0 on multi-host)
    public_key: str = ""         # Z85 CURVE public key (from `p2pfed keygen`); required when security.curve
    data_dir: str = ""           # this peer's own data (data.partition = "own"): its image folder or a .tar of one; "" = data.data_dir


@dataclass(frozen=True)
class DataConfig:
    dataset: Literal["cifar10", "folder", "synthetic"] = "synthetic"  # which data set
    data_dir: str = "data"       # cifar10: download/cache dir; folder: root with train/ test/, or a .tar.xz
    cache_dir: str = ""          # where a .tar.xz is unpacked; "" = ~/.cache/p2pfed
    partition: Literal["iid", "dirichlet", "shards", "own"] = "iid"  # how the training set is split across peers; own: no shared data set, every peer trains on all of its own data_dir (docs/own-data.md)
    alpha: float = 0.5           # dirichlet concentration; smaller = more skewed label mix
    shards_per_peer: int = 2     # shards: label-sorted shards per peer (McMahan et al. 2017); 2 = two classes each
    seed: int = 0                # seed for partitions, synthetic data, init and shuffling
    synthetic_train: int = 2000  # synthetic: number of training images
    synthetic_test: int = 500    # synthetic: number of test images
    train_limit: int = 0         # use a fixed random subset of N training images (0 = all), e.g. quick demos
    test_limit: int = 0          # evaluate on a fixed random subset of N test images (0 = all)
    classes: tuple[str, ...] = ()  # the class names in output order, the same on every peer; class folders are mapped to outputs by these names (required with partition = "own"; launch.py fills it in); () = the sorted class folders of the shared data set
    site_images: int = 0         # partition = "own": the mean number of training images per site, which sizes an epoch (the same on every peer; launch.py counts it); required there unless train.rounds or train.local_epochs sets the run length
    loader: Literal["auto", "memory", "stream"] = "auto"  # memory: decode every image once and keep it (small images of one size, e.g. CIFAR); stream: decode photos of any size while training, resized at model.input_size; auto: stream unless the images are input_size squares
    workers: int = 2             # stream: threads that decode images while the peer trains


@dataclass(frozen=True)
class ModelConfig:
    width_mult: float = 0.5      # MobileNetV2 width multiplier (0.5: about 2x the images per second of 1.0, better in a short budget; tests use 0.1)
    cifar_stem: bool = True      # first conv stride 1 instead of 2: much better on 32x32 inputs
    input_size: int = 32         # images are resized to this (224 to use ImageNet weights as designed)
    pretrained: bool = False     # start from torchvision's ImageNet weights (needs internet or cache)
    weights_file: str = ""       # start from a local state_dict file instead (backbone; head is replaced)
    num_classes: int = 10        # output classes; must match the data set
    norm: Literal["batch", "none"] = "batch"  # batch: MobileNetV2's BatchNorm; none: normalization-free (weight standardization, SkipInit)


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 15.0         # run length: passes over the (average) partition; rounds follow from it
    rounds: int = 0              # > 0: run exactly this many rounds instead (tests, demos); 0 = from epochs
    local_steps: tuple[int, ...] = (1, 2, 4)  # local optimiser steps per round; a list grows k over equal parts of the run; "auto": this default with auto_steps = true
    local_epochs: float = 0.0    # or: local epochs per round (fractions allowed); set exactly one of the two
    batch_size: int = 32         # local mini-batch size (per peer; the global batch is peers x this)
    optimizer: Literal["adamw", "sgd"] = "sgd"  # local optimizer (sgd: momentum 0.9, Nesterov)
    lr: float = 0.05             # peak learning rate at a global batch of lr_base_batch images
    lr_scaling: Literal["sqrt", "linear", "none"] = "linear"  # lr x the ratio global batch / lr_base_batch (SGD), x its square root (AdamW), or as given
    lr_base_batch: int = 128     # the global batch (peers x batch_size) at which `lr` applies as given
    label_smoothing: float = 0.1  # cross-entropy label smoothing
    weight_decay: float = 5e-4   # weight decay
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"  # LR over the whole run's steps
    augment: bool = True         # random crop (pad 4) + horizontal flip
    threads: int = 0             # torch threads per peer; 0 = cores / local peers
    device: str = "auto"         # auto (CUDA if present, peers spread over the GPUs, else CPU) | cpu | cuda | cuda:K; per host
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # bf16 autocast on CUDA (auto = bf16 there, fp32 on the CPU); per host
    max_steps: int = 0           # with local_epochs: cap local steps per round (0 = no cap); tests and demos
    eval_every: int = 0          # evaluate every N rounds; 0 = each time an epoch is completed (and the last round)
    eval_batch_size: int = 64    # batch size for evaluation (larger batches raise peak memory, not speed)
    bn_pool_images: int = 512    # images per peer for pooled BatchNorm statistics before eval/export; 0 = off
    outer_momentum: float = 0.0  # > 0: Nesterov outer momentum on each round's mean (SlowMo/DiLoCo); 0 = off
    outer_lr: float = 1.0        # outer learning rate, used when outer_momentum > 0
    average_optimizer_state: bool = False  # also average the optimizer's buffers (SGD momentum; AdamW moments)
    scaffold: bool = False       # SCAFFOLD control variates against client drift on skewed partitions (2x the bytes)
    batchnorm: Literal["local", "sync", "frozen"] = "local"  # BatchNorm statistics in training: each peer's own batch, the round's joint batch (synchronized every step), or frozen to the averaged ones after freeze_bn_at (FixBN)
    freeze_bn_at: float = 0.5    # batchnorm = "frozen": the fraction of the run after which BatchNorm uses the averaged statistics
    compression: Literal["none", "fp16", "int8"] = "none"  # shards as deltas from the last round in fp16 or int8 with error feedback (slow links; docs/protocol.md)
    auto_steps: bool = False     # after round 4, multiply local_steps by a power of two (<= 4), and turn on int8 compression if it is off and the exchange outlasts the steps, chosen from the members' agreed measured costs (slow links; docs/configuration.md)
    round_target: Literal["steps", "samples"] = "steps"  # steps: each member takes its k steps of batch_size; samples: the round's members x k x batch_size images are shared out by measured speed (batch sizes vary), weights = images processed (mixed hardware; docs/configuration.md)
    round_deadline_s: float = 0.0  # round_target = "samples": a member stops its local steps this long after it began them (after the step in flight), contributing what it managed; 0 = no deadline
    agc_clip: float = 0.0        # adaptive gradient clipping: a unit's gradient is at most this x its weights' norm (0 = off; for model.norm = "none")
    small_input: int = 0         # progressive resizing: train at this many pixels (e.g. 24) until small_until, then at model.input_size; 0 = off
    small_until: float = 0.5     # small_input: the fraction of the run's steps trained at the smaller size


@dataclass(frozen=True)
class AveragingConfig:
    heartbeat_interval_s: float = 0.5  # transport thread sends a heartbeat this often
    dead_after_s: float = 4.0          # a peer silent this long is dead for the current attempt
    ready_timeout_s: float = 600.0     # leader waits this long for live peers to finish training
    exchange_timeout_s: float = 60.0   # max time for one all-reduce attempt (shards + digests)
    startup_timeout_s: float = 60.0    # how long to wait for peers to appear at start-up
    fetch_timeout_s: float = 60.0      # max time to download the consensus from a live peer
    max_attempts: int = 10             # attempts per round before giving up
    min_peers: int = 0                 # a round needs this many members; 0 = a majority of [[peers]]; secure aggregation: at least 3


SECURE_MIN_MEMBERS = 3


@dataclass(frozen=True)
class SecurityConfig:
    """SECURE_MIN_MEMBERS: under secure aggregation no round has fewer members, since a member of a
    round of two sees its partner's update (the sum less its own)."""
    curve: bool = False          # CURVE encryption + authentication; keys in [[peers]] public_key
    secret_key_file: str = ""    # this peer's secret key file; {id} is replaced by the peer id
    secure_aggregation: bool = False  # members see only the sum of their round states, never one member's (masked fixed point; docs/security.md); every peer must set it alike
    mask_degree: int = 0         # secure aggregation: pair masks with this many neighbours per member (even, >= 8; 0 = every other member), for large groups; fewer colluders expose a member (docs/security.md, "Large groups")


@dataclass(frozen=True)
class OutputConfig:
    run_dir: str = "runs/latest"  # where logs, metrics, checkpoints and the consensus go
    writer: int = -1             # peer that writes consensus.pt and summary; -1 = lowest live id
    quantize: bool = False       # the writer also exports ONNX and quantizes to INT8 at the end
    calibration_images: int = 256  # images from the writer's partition used to calibrate INT8
    checkpoint_every: int = 0    # checkpoint every N rounds; 0 = at every evaluation (a restarted peer downloads anyway)
    dump_round_models: bool = False  # write each peer's model before and after averaging, per round (tests)
    log_level: Literal["info", "debug"] = "info"  # debug also logs routine protocol events (late messages, links)
    tensorboard: bool = True     # TensorBoard event files under RUN_DIR/tb/peer-K (if the tensorboard package is installed)
    metrics_port: int = 0        # > 0: each peer serves /metrics (Prometheus) and /status (JSON) on this port + its index among the peers of its host; 0 = off
    metrics_bind: str = "127.0.0.1"  # address the metrics port listens on; "0.0.0.0" exposes it to the network (read-only; docs/security.md)


@dataclass(frozen=True)
class Fault:
    peer: int                    # which peer misbehaves
    round: int                   # in which round (1-based)
    phase: Literal["train", "exchange", "seed", "reveal", "between-rounds"] = "train"  # where (seed, reveal: secure aggregation, docs/faults.md)
    action: Literal["crash", "stall", "dissent", "slow", "kill", "abort"] = "crash"  # crash = exit 70 (not restarted); stall = sleep stall_s; dissent = corrupt my copy of the result (exchange only); slow = from this round on, every local step takes slow_factor x as long (phase train); kill, abort = die of SIGKILL (as by the OOM killer) or SIGABRT (as by an assertion in libzmq): a crash a supervisor restarts
    stall_s: float = 30.0        # how long a stall lasts
    slow_factor: float = 3.0     # action = slow: each local step takes this many times as long (3 = a third of the speed)


@dataclass(frozen=True)
class Config:
    peers: tuple[PeerSpec, ...] = ()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    averaging: AveragingConfig = AveragingConfig()
    security: SecurityConfig = SecurityConfig()
    output: OutputConfig = OutputConfig()
    faults: tuple[Fault, ...] = ()

    def peer(self, peer_id: int) -> PeerSpec:
        for p in self.peers:
            if p.id == peer_id:
                return p
        raise ConfigError(f"peer id {peer_id} is not in [[peers]] (ids: {self.peer_ids}); "
                          f"pass one of those to --id")

    @property
    def peer_ids(self) -> list[int]:
        return sorted(p.id for p in self.peers)


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig,
             "averaging": AveragingConfig, "security": SecurityConfig, "output": OutputConfig}
