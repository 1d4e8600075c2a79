"""Protocol constants in one place: limits, value ranges and fixed intervals.

Every duration is in seconds (`_s`); the transport converts to ZeroMQ's milliseconds where it
sets a socket option, and nowhere else. Deadlines a user may tune are in config.AveragingConfig;
the values here are fixed parts of the protocol, and docs/protocol.md explains each.
"""
from __future__ import annotations

VERSION = 1                      # "v" of every header

# ------------------------------------------------------------------ sizes and ranges
MAX_HEADER_BYTES = 1 << 20       # a header (names of ~300 tensors) is a few KB
MAX_ARRAYS = 4096                # arrays in one message
MAX_DIMS = 8                     # a tensor of MobileNetV2 has at most 4
DIM_LIMIT = 2**31                # every dimension is below this
INT_LIMIT = 2**63                # every int field of a header is in 0 .. INT_LIMIT - 1
ID_LIMIT = 2**31                 # peer ids are in 0 .. ID_LIMIT - 1
COUNT_LIMIT = 2**53              # sample counts and weights: below this a float64 sum of them is exact
RECIPE_MAX_CHARS = 4096          # ready.recipe (a few hundred characters in practice)
LIFE_MAX_CHARS = 64              # hb.life (16 hex digits in practice); a longer one is ignored
REASON_MAX_CHARS = 200           # abort.reason is cut to this by its sender
ALLOWED_DTYPES = frozenset({"<f4", "<f8", "<f2", "<i8", "<i4", "<i2", "<u8", "|u1", "|i1", "|b1"})
CODECS = ("f32", "f16", "i8", "m64")  # part/reduced "codec": float32 (the default when absent), half, int8 + scales,
#                                  masked fixed point (secure aggregation, parts only)
CODEC_CHUNK = 1024               # values per float32 scale of an i8 shard
INBOX_LIMIT = 10_000             # validated messages queued for the main thread before new ones are dropped


def max_message_bytes(state_bytes: int) -> int:
    """The largest message a peer accepts: a whole round state (`model`) plus headroom."""
    return int(state_bytes * 1.25) + (1 << 20)


# ------------------------------------------------------------------ intervals (seconds)
FETCH_REASKS = 10                # a committer that answered with an older round is asked again at most this often
FETCH_FANOUT = 2                 # a download asks this many live peers at a time (committers of the round first)
FETCH_RETRY_S = 2.0              # ask another live peer for the consensus if no answer came this fast
BACKOFF_S = 0.1                  # after failed attempt t, read aborts for min(BACKOFF_MAX_S, t x this)
BACKOFF_MAX_S = 1.0
READY_RESEND_S = 1.0             # a ready still unanswered is sent again to a peer in the same round this often
RESUME_LISTEN = 4                # a restarted peer listens this many heartbeat intervals before going on without a silent peer
POLL_S = 0.2                     # waits for a change that no message announces (a peer appearing) check this often
REPORT_WAIT_DEAD_AFTER = 2       # the writer waits this many dead_after_s for the last round's reports
BYE_FLUSH_S = 1.0                # a clean exit gives queued messages this long to leave
LOG_EVERY_S = 10.0               # the same routine warning (a dropped or rejected message) at most this often
REJECT_LOG_EVERY_S = 1.0         # the network thread's line per rejected frame, per sender and reason

# ------------------------------------------------------------------ connections (seconds; ZeroMQ options)
RECONNECT_S = 0.1                # first reconnect attempt after a connection breaks
RECONNECT_MAX_S = 0.5            # reconnect attempts back off to at most this (a healed link is used again within it)
CONNECT_TIMEOUT_S = 0.5          # a TCP connect that hangs (a cut link) is abandoned and retried
LINK_PING_S = 1.0                # ZMTP heartbeat on every connection
SUSPECT_HOLD_S = 5.0             # a peer a member reported dead (abort.dead) stays out of groups this long
LINK_TIMEOUT_S = 5.0             # a connection silent this long after a ping is closed and reconnected
QUEUE_MESSAGES = 1000            # ZeroMQ high-water mark per socket (messages)
RETRY_S = 0.05                   # a message a connection refused (it is down) is retried this often ...
UNSENT_KEEP_S = 5.0              # ... for this long, then dropped (outbox.py)

# ------------------------------------------------------------------ rules
MAX_CONSECUTIVE_DISSENT = 3      # a peer outvoted on the digest this many rounds in a row stops
