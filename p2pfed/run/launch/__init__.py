"""Starting peers and keeping them running: `python launch.py`, `p2pfed peer --supervise`,
`--from-slurm`. It may use the peer runtime (node/) and the live page (observe/).

    launcher.py    `python launch.py`: N local peers, live progress, restarts, cleanup
    flags.py       the launcher's flags, in --help order
    presets.py     named settings (--preset)
    preflight.py   what the launcher checks before it starts any peer (and fetches the data, once)
    sites.py       launch.py's own folders (classes, epoch size); `p2pfed sites` (demo site folders)
    liveview.py    the launcher's live view
    supervise.py   peers that come back: the restart policy, `p2pfed peer --supervise`
    spare.py       a warm spare process that becomes a restarted peer
    slurm.py       `--from-slurm`: the federation read from the Slurm step
"""
