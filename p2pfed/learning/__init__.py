"""Learning: data, the model and local training. Torch; knows nothing of sockets or the protocol.

    folders.py     image folders on disk, archives unpacked once per machine (no torch)
    fetch.py       CIFAR-10 downloaded into data_dir once, one process at a time (no torch until needed)
    datasets.py    CIFAR-10, image folders (labels by class name), synthetic data; a peer's partition or own folder
    photos.py      real photos of any size: training crops, the evaluation resize, decoding threads, the stream
    partition.py   partitions of the training set over the peers (pure)
    augment.py     normalisation, augmentation, the endless batch stream, per-peer seeds
    mobilenet.py   MobileNetV2 (torchvision's tree and initialisation, without importing torchvision)
    model.py       the configured model for small images; channels-last
    normfree.py    the normalization-free MobileNetV2 (weight-standardized convolutions, gradient clipping)
    device.py      train.device resolved to a torch device; GPUs spread over a host's peers
    schedule.py    the plan (rounds, local steps, epochs, eval cadence) and the learning rate (pure)
    balance.py     sample-target rounds: each member's batch from the measured speeds (pure)
    train.py       the optimizer and k local optimiser steps
    evaluate.py    evaluation counts that several peers' test slices add up
    scaffold.py    SCAFFOLD control variates: the gradient correction during local steps
    syncbn.py      synchronized BatchNorm: the forward and backward sums through one combine call
    bnstats.py     a peer's BatchNorm sums, and the pooled statistics they give
    capture.py     torch state in and out of numpy (model and optimizer buffers)
"""
