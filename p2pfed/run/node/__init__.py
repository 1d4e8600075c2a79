"""The peer runtime: one peer process, round after round (`p2pfed peer`).

    peer.py        one peer process, one round read top to bottom
    stages.py      RoundStage and its transitions: what the heartbeat, metrics and live view say
    trainer.py     a peer's model, optimizer, batches and local steps
    state.py       the peer's round state in and out of torch
    pacing.py      train.auto_steps for one peer: measured times in, the agreed plan applied
    evaluation.py  evaluating a committed round (pooled BatchNorm statistics, my test slice)
    checkpoints.py a peer's own checkpoint: save, and load for --resume
    reports.py     what a peer says about a round (its `report`), and round dumps for tests
    finish.py      the end of a run: the writer's outputs
    faults.py      fault injection at named points (crash, kill, abort, stall, dissent, slow)
    keys.py        the run's CURVE keys: keygen for a config, loading, exposure warning
    own_data.py    a peer's own folder: checks before loading, its test folder, its unreadable images
"""
