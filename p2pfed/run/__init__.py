"""Running peers: wires the other layers together. Nothing below it imports it.

Three parts, each a package, and the commands on top (import-linter keeps the order:
cli > centralized > launch > node > observe > exitcodes):

    node/          the peer runtime: one peer process, round after round
    launch/        starting and keeping peers: launch.py, preflight, restarts, spares, Slurm
    observe/       watching peers: status files, the sinks of outputs/ wired to a peer, the live page

    cli.py         the `p2pfed` click commands
    centralized.py the single-process reference run (`p2pfed centralized`)
    exitcodes.py   exit codes and their help texts, shared by the peer, the launcher and the supervisor
"""
