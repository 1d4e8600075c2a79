"""Wire and sockets: what travels between peers and how. Knows nothing of models, torch or rounds.

    protocol.py    the protocol's constants: limits, value ranges, fixed intervals (seconds)
    clock.py       the protocol's one clock (the simulator's virtual clock replaces it)
    wire.py        messages: a msgpack header + raw buffers; validation of untrusted frames
    transport.py   the one class the rest of p2pfed talks to the network through
    netthread.py   the network thread that owns every socket: heartbeats, validation, answers
    shared.py      what the network thread and the main thread share, behind one lock
    curve.py       CURVE keys and the ZAP allow-list authenticator
    ratelimit.py   the one rate limiter for routine log lines
    outbox.py      messages a down connection refused, retried for a few seconds
    httpserve.py   the one read-only HTTP server (metrics port, `p2pfed watch`)
"""
