"""A deterministic simulator of the real consensus code (docs/testing.md).

N peers in one process, each a greenlet that runs consensus/ unchanged, one at a time, over an
in-memory network and a virtual clock (net/clock.py), with numpy vectors instead of models. A
seed fixes everything: the network's delays, drops, duplicates and reorderings, the cut links,
the peers killed and restarted at every fault point. The same seed gives the same trace hash;
a failing seed is shrunk to the faults it needs and replayed with its events
(`python -m p2pfed.sim SEED`, docs/testing.md).

    world.py    the virtual clock, the event queue, the network, the baton between threads
    process.py  a simulated peer process (a life) and its transport (net.shared.SharedState inside)
    peer.py     one life's round loop around the real consensus code (run/node/peer.py's loop)
    model.py    the numpy round states, and the exact weighted mean each commit is checked against
    plan.py     a seed's network behaviour and faults, as plain data
    checks.py   the invariants, checked after every commit, adoption and delivered message
    runner.py   run a seed, shrink a failing one, the broken variants, the command line
"""
