"""Named settings for launch.py (`--preset`), applied before the other options.

    cpu    the default recipe (docs/history/recipe.md, "The federated recipe (issue 13)" and "Towards
           80% in 20 minutes", has what each part of it bought): MobileNetV2 at
           width 0.5 with the CIFAR stem, channels-last, 15 epochs of 32 images per peer per step,
           averaging after every step in the first third of the run, every 2 in the second, every
           4 in the last (post-local SGD), SGD with Nesterov momentum and a one-cycle schedule to
           a peak lr of 0.05 at a global batch of 128, scaled linearly with it, label smoothing,
           BatchNorm statistics pooled over all peers before evaluation and export (5 peers on
           2 cores, dev data: 77.2% in 1,190 s; docs/benchmarks.md)
    noniid for label-skewed data, at width 1.0 and 8 epochs: BatchNorm synchronized across the
           peers every step and averaging after every step (measured at full size on
           Dirichlet(0.5): 74.1% against 66.8% for the cpu recipe of that time and 67.8% for
           today's, in 2.2x the wall time; docs/benchmarks.md)
    gpu    peers on GPUs: 256 images per peer per step, bf16, averaging every 4 steps, 30 epochs
           (bench/gpu_check.sh on one H200, 5 peers on the one GPU, dev data: 80.19% in 314 s)
    photos real photos of any size (a site's own folder, docs/own-data.md): 128 px, MobileNetV2's
           own stride-2 stem, width 0.5, random resized crops, 40 epochs, the cpu recipe otherwise (3
           sites cut from clothing-dev by Dirichlet(0.5), 2 cores: 72.4% on the dev test photos in
           947 s; bench/own_data.py, docs/benchmarks.md)
    seed   the notebook's setup: ImageNet weights, 224 px input, one round of one local epoch
"""
from __future__ import annotations

PRESETS = {
    "cpu": {"model": {"pretrained": False, "input_size": 32, "cifar_stem": True, "width_mult": 0.5},
            "train": {"epochs": 15.0, "local_steps": [1, 2, 4], "batch_size": 32, "optimizer": "sgd", "lr": 0.05,
                      "lr_scaling": "linear", "lr_base_batch": 128, "schedule": "onecycle", "label_smoothing": 0.1,
                      "bn_pool_images": 512}},
    "noniid": {"model": {"pretrained": False, "input_size": 32, "cifar_stem": True, "width_mult": 1.0},
               "train": {"epochs": 8.0, "local_steps": [1], "batch_size": 32, "optimizer": "sgd", "lr": 0.05,
                         "lr_scaling": "linear", "lr_base_batch": 128, "schedule": "onecycle",
                         "label_smoothing": 0.1, "bn_pool_images": 512, "batchnorm": "sync"}},
    "gpu": {"model": {"pretrained": False, "input_size": 32, "cifar_stem": True, "width_mult": 1.0},
            "train": {"device": "auto", "precision": "bf16", "epochs": 30.0, "local_steps": [4], "batch_size": 256,
                      "optimizer": "sgd", "lr": 0.05, "lr_scaling": "sqrt", "lr_base_batch": 128,
                      "schedule": "onecycle", "label_smoothing": 0.1, "bn_pool_images": 2048,
                      "eval_batch_size": 1024}},
    "photos": {"model": {"pretrained": False, "input_size": 128, "cifar_stem": False, "width_mult": 0.5},
               "train": {"epochs": 40.0, "local_steps": [1, 2, 4], "batch_size": 32, "optimizer": "sgd", "lr": 0.05,
                         "lr_scaling": "linear", "lr_base_batch": 128, "schedule": "onecycle",
                         "label_smoothing": 0.1, "bn_pool_images": 256}},
    "seed": {"model": {"pretrained": True, "input_size": 224, "cifar_stem": False, "width_mult": 1.0},
             "train": {"rounds": 1, "local_epochs": 1.0, "optimizer": "sgd", "lr": 0.01, "schedule": "cosine",
                      "device": "auto"}},
}

HELP = ("cpu: the default CPU recipe; noniid: for label-skewed data (synchronized BatchNorm, averaging every "
        "step); photos: real photos of any size at 128 px (own folders); gpu: peers on GPUs (bf16, 256 images per step, 30 epochs; 80.2% in about 5 minutes with 5 peers on one H200); seed: the notebook's "
        "setup (ImageNet weights at 224 px, 1 round of 1 epoch): it needs the ImageNet weights, from the internet "
        "or model.weights_file, and a GPU to run in reasonable time")
