"""Named settings for launch.py (`--preset`), applied before the other options.

    cpu    the default recipe (docs/benchmarks.md has what each part of it bought): CIFAR stem,
           channels-last, 32 images per peer per step, averaging after every step in the first
           third of the run, every 2 in the second, every 4 in the last (post-local SGD), SGD
           with Nesterov momentum and a one-cycle schedule scaled linearly with the global batch,
           label smoothing, BatchNorm statistics pooled over all peers before evaluation and export
    seed   the notebook's setup: ImageNet weights, 224 px input, one round of one local epoch
"""
from __future__ import annotations

PRESETS = {
    "cpu": {"model": {"pretrained": False, "input_size": 32, "cifar_stem": True},
            "train": {"epochs": 8.0, "local_steps": [1, 2, 4], "batch_size": 32, "optimizer": "sgd", "lr": 0.05,
                      "lr_scaling": "linear", "lr_base_batch": 128, "schedule": "onecycle", "label_smoothing": 0.1,
                      "bn_pool_images": 512}},
    "seed": {"model": {"pretrained": True, "input_size": 224, "cifar_stem": False, "width_mult": 1.0},
             "train": {"rounds": 1, "local_epochs": 1.0, "optimizer": "sgd", "lr": 0.01, "schedule": "cosine"}},
}

HELP = ("cpu: the default CPU recipe; seed: the notebook's setup (ImageNet weights, 224 px input, 1 round of 1 "
        "epoch; needs internet or cached weights)")
