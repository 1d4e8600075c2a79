"""Running peers: wires the other layers together. Nothing imports it.

    peer.py        one peer process, one round read top to bottom
    stages.py      RoundStage and its transitions: what the heartbeat, metrics and live view say
    trainer.py     a peer's model, optimizer, batches and local steps
    state.py       the peer's round state in and out of torch
    evaluation.py  evaluating a committed round (pooled BatchNorm statistics, my test slice)
    checkpoints.py a peer's own checkpoint: save, and load for --resume
    finish.py      the end of a run: the writer's outputs
    faults.py      fault injection at named points (crash, kill, abort, stall, dissent, slow)
    supervise.py   peers that come back: the restart policy, `p2pfed peer --supervise`
    spare.py       a warm spare process that becomes a restarted peer
    slurm.py       `--from-slurm`: the federation read from the Slurm step
    keys.py        the run's CURVE keys: keygen for a config, loading, exposure warning
    launcher.py    `python launch.py`: N local peers, live progress, restarts, cleanup
    preflight.py   what the launcher checks before it starts any peer
    liveview.py    the launcher's live view
    presets.py     named settings (--preset)
    centralized.py the single-process reference run
    own_data.py    a peer's own folder: checks before loading, its test folder, its unreadable images
    sites.py       launch.py's own folders (classes, epoch size); `p2pfed sites` (demo site folders)
    cli.py         the `p2pfed` click commands
    exitcodes.py   exit codes and their help texts
"""
