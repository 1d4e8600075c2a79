"""The flags of `python launch.py` (and `p2pfed launch`), in the order --help shows them."""
from __future__ import annotations

import click

from .presets import HELP as PRESET_HELP
from .presets import PRESETS


def options(f):
    """Decorate the launch command with its flags."""
    opts = [
        click.option("--peers", type=click.IntRange(min=1), default=5, show_default=True, help="number of local peers"),
        click.option("--config", type=click.Path(dir_okay=False), help="base config (default: peers.toml here if present)"),
        click.option("--preset", type=click.Choice(sorted(PRESETS)), help=PRESET_HELP),
        click.option("--epochs", type=float, help="run length in epochs over each peer's partition"),
        click.option("--rounds", type=int, help="run exactly this many rounds instead of --epochs"),
        click.option("--local-steps", help="local optimiser steps per round, e.g. 4, or 2,4,8 to grow over the run"),
        click.option("--local-epochs", type=float, help="or: local epochs per round"),
        click.option("--eval-every", type=int, help="evaluate every N rounds (default: once per epoch)"),
        click.option("--dataset", type=click.Choice(["cifar10", "folder", "synthetic"])),
        click.option("--data-dir", multiple=True, help="cifar10: download dir; folder: an image folder or a .tar.xz of "
                                                      "one; once per peer (--data-dir site0 --data-dir site1 ...): "
                                                      "each peer trains on all of its own folder"),
        click.option("--partition", type=click.Choice(["iid", "dirichlet", "shards", "own"]),
                     help="how peers share one data set; own: each trains on all of its --data-dir"),
        click.option("--alpha", type=float, help="Dirichlet concentration (smaller: more skewed)"),
        click.option("--width-mult", type=float, help="MobileNetV2 width multiplier"),
        click.option("--seed", type=int),
        click.option("--batch-size", type=int, help="images per peer per step"),
        click.option("--max-steps", type=int, help="cap local steps per round (quick demos)"),
        click.option("--round-target", type=click.Choice(["steps", "samples"]),
                     help="samples: share each round's images out by measured speed (mixed hardware, --slow)"),
        click.option("--round-deadline-s", type=float, help="with --round-target samples: stop local steps after "
                                                            "this many seconds"),
        click.option("--secure-aggregation/--no-secure-aggregation", default=None,
                     help="members see only the sum of their updates, never one peer's (docs/security.md; default: "
                          "security.secure_aggregation)"),
        click.option("--train-limit", type=int, help="use only N training images in all"),
        click.option("--test-limit", type=int, help="evaluate on only N test images"),
        click.option("--threads", type=int, help="torch threads per peer (default cores / peers)"),
        click.option("--gpus", help="GPUs for the peers, e.g. 0,1: peer k trains on GPU k mod 2 (default: "
                                   "train.device, which spreads the peers over every GPU there is)"),
        click.option("--run-dir", help="default runs/<timestamp>"),
        click.option("--kill", multiple=True, metavar="ID@ROUND:PHASE",
                     help="crash a peer (exit 70, not restarted) at train|exchange|seed|reveal|between-rounds of a "
                          "round (repeatable)"),
        click.option("--sigkill", multiple=True, metavar="ID@ROUND:PHASE",
                     help="a peer dies of SIGKILL at a point of a round, as by the OOM killer; it is restarted "
                          "(repeatable)"),
        click.option("--sigabrt", multiple=True, metavar="ID@ROUND:PHASE",
                     help="a peer dies of SIGABRT at a point of a round, as by an assertion in libzmq; it is "
                          "restarted (repeatable)"),
        click.option("--stall", multiple=True, metavar="ID@ROUND:PHASE",
                     help="stall a peer (faults.stall_s) at a point of a round (repeatable)"),
        click.option("--slow", multiple=True, metavar="ID[@ROUND]xFACTOR",
                     help="make a peer FACTOR times slower from ROUND (default 1) on, e.g. 2x3 (repeatable)"),
        click.option("--restart", multiple=True, metavar="ID@ROUND",
                     help="restart a peer that --kill crashed, with --resume, once the others reach ROUND "
                          "(repeatable)"),
        click.option("--no-restart", is_flag=True,
                     help="leave a peer that dies dead (by default a peer that crashes, e.g. killed by a signal, is "
                          "restarted with --resume, with a back-off)"),
        click.option("--max-restarts", type=click.IntRange(min=0), default=5, show_default=True,
                     help="restarts per peer before it is left dead"),
        click.option("--quantize/--no-quantize", default=None,
                     help="export + INT8-quantize the consensus at the end (default: output.quantize)"),
        click.option("--watch", "watch_port", type=click.IntRange(0, 65535), default=None, metavar="PORT",
                     help="serve the live page of the run on http://127.0.0.1:PORT/ (0: any free port)"),
        click.option("--metrics-port", type=click.IntRange(1, 65535), default=None,
                     help="peer k serves Prometheus /metrics and /status on PORT + k (output.metrics_port)"),
        click.option("--tensorboard/--no-tensorboard", default=None,
                     help="TensorBoard event files in RUN_DIR/tb (default: output.tensorboard, on)"),
        click.option("--report/--no-report", default=True, show_default=True,
                     help="render plots and summary.md at the end"),
        click.option("--timeout-s", type=click.FloatRange(min=0), default=0,
                     help="give up (and stop all peers) after this long; 0 = never"),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f
