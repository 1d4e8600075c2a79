"""Watching peers (docs/observability.md). It never imports the peer runtime (node/) or the
launcher: the peer hands it records, and the page reads what peers write and serve.

    observers.py   everything that watches one peer: status file, TensorBoard, Prometheus, /status
    status.py      what one peer knows of the federation, for status files and /status
    federation.py  the federation as the page shows it: pure functions over peer statuses
    watch.py       `p2pfed watch`: the live page over a run directory or a peer
    watch.html     the page itself (one file, no build step)
"""
