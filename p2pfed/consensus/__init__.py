"""The consensus protocol: how peers agree on one round state. numpy only; no torch, no files.

    roundstate.py  what a round agrees on: the names and order of the round state's parts
    averaging.py   pure maths: flatten, shards, the float64 weighted mean, the integer-buffer rule
    digest.py      the chunked SHA-256 of a round state, also computed while shards arrive
    outer.py       the outer step (Nesterov momentum on the round's mean), the same bits everywhere
    autosteps.py   train.auto_steps: local steps and compression chosen from the agreed costs (pure)
    recipe.py      the options every peer must share, as the text each `ready` carries
    mailbox.py     validated messages by kind/round/attempt; event-driven waits; who is alive
    ends.py        how an exchange ends when it cannot finish, as values (Aborted, Superseded, ...)
    faultpoints.py the named fault points and the one hook the fault injector is called by
    exchange.py    gather and agree: the one way members combine values, with its fault rules
    group.py       ready, then a group: derived from the readies or proposed by the leader
    butterfly.py   one attempt's scatter, reduce and gather
    secagg.py      secure aggregation's maths and keys: fixed point, X25519, HKDF, AES-CTR masks
    masked.py      secure aggregation's exchange: masked parts, the barrier, seeds, the rollback
    compress.py    the shard codecs (f32, f16, int8 with scales) and error feedback's carried errors (pure)
    stepsync.py    the per-step sums of synchronized BatchNorm over an attempt's members (bnsync)
    allreduce.py   one round, as a value: Averaged, Download or Failed
    outcome.py     those values, and Committed: the one shape of a committed round
    pooling.py     pooled BatchNorm statistics of a committed round (a gather and an agreement)
    download.py    a committed round state from a live peer, digest-verified
    presence.py    waiting for the other peers at start-up; live peers that are ahead of me
    writer.py      the end of a run: the writer's election, reports, waiting for `done`
"""
