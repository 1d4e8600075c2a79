"""The main thread's view of the network: validated messages filed by (kind, round, attempt),
and the one definition of which peers are alive.

The transport's network thread queues every valid inbound message; `pump` blocks until the
next one arrives (or a deadline passes) and files it here, so waiting loops are driven by
messages, never by fixed sleeps. Heartbeats do not wake the main thread: they only refresh
`Transport.last_seen`, and `next_expiry` says when a silent peer would turn dead. Routine drops
(a late message of a round already done) are logged at DEBUG; rejected ones at WARNING, each
kind at most once every LOG_EVERY_S.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from typing import Callable, Iterable

from ..net import clock, protocol, wire
from ..net.ratelimit import RateLimitedLog
from . import recipe

log = logging.getLogger("p2pfed.consensus.mailbox")


class Mailbox:
    """Keeps the current round and the next two; older rounds are dropped as stale, except
    `report`, `done` and `bye`, which the writer collects for the whole run."""
    KEEP_ALL = ("report", "done", "bye")          # kept for the whole run (small)
    ANY_ROUND = KEEP_ALL + ("model",)              # a downloaded model may be of any round
    AHEAD_OK = ANY_ROUND + ("commit",)             # commits far ahead tell me I am behind

    def __init__(self, transport, dead_after_s: float, validate: Callable[[wire.Message], None] = lambda msg: None,
                 recipe_text: str = ""):
        self.transport = transport
        self.me: int = transport.id
        self.peers: list[int] = [self.me, *transport.peer_ids]
        self.recipe = recipe_text         # recipe.py: the options every partner must share with me
        self.foreign: dict[int, str] = {}  # peers whose last ready carried another recipe
        self.outnumbered: tuple[list[int], str] | None = None   # (foreign peers, their recipe), once they were
        #                                  at least as many as the live peers sharing mine
        self.dead_after_s = dead_after_s
        self.validate = validate          # schema check against the local model; raises WireError
        self.round = 0
        self._box: dict[tuple, dict[int, wire.Message]] = defaultdict(dict)
        self._departed: set[int] = set()
        self._suspects: dict[int, float] = {}   # peer -> when a member reported it dead
        self._reborn_noted: dict[int, float] = {}   # peer -> the restart of it I logged last
        self._ready_at: dict[int, float] = {}   # peer -> when (monotonic) its last ready was filed
        self._log = RateLimitedLog(log, protocol.LOG_EVERY_S)
        self.last_round = 0               # the run's last round: a claim to have committed beyond it is false
        self._distrusted: set[int] = set()  # peers whose claims to be ahead proved false
        self.mask_keys: dict[int, str] = {}  # peer -> the mask key of its latest ready (secure aggregation)
        self.protocols: dict[int, int] = {}  # peer -> the protocol number of its latest ready (absent = 1)
        self.on_report: Callable[[wire.Message], None] | None = None   # told of each report filed (status board)
        self.watchers: list[Callable[[wire.Message], None]] = []   # told of every message filed (the seal)

    # ------------------------------------------------------------------ receiving
    def pump(self, timeout_s: float) -> int:
        """Wait up to timeout_s for one message, then file whatever else is queued. Returns how
        many messages were filed (0: the timeout passed)."""
        n = 0
        msg = self.transport.recv(timeout_s)
        while msg is not None:
            self.file(msg)
            n += 1
            msg = self.transport.recv(0)
        return n

    def wait(self, deadline: float, watch: Iterable[int] = (), since: float | None = None) -> None:
        """Block until a message arrives, `deadline` (monotonic) passes, or a watched peer may
        have turned dead (counting from `since` at the earliest): whichever comes first."""
        until = min(deadline, self.next_expiry(watch, since))
        self.pump(max(0.0, until - clock.now()))

    def file(self, msg: wire.Message) -> None:
        if msg.kind == "hb":      # only the heartbeat that shows a peer restarted comes here: a wake-up
            return
        r = msg.header.get("round", 0)
        if msg.kind == "bye":
            self._departed.add(msg.sender)
        else:
            self._departed.discard(msg.sender)
        try:
            self.validate(msg)
        except Exception as e:    # WireError, or anything a hostile but well-typed message provokes
            self._log.log(("rejected", msg.sender, msg.kind), logging.WARNING, "rejected %s from peer %s: %s",
                          msg.kind, msg.sender, str(e)[:300])
            return
        if msg.kind == "ready":
            self._note_protocol(msg.sender, msg.header.get("protocol", 1))
            if msg["recipe"] != self.recipe:
                if self.foreign.get(msg.sender) != msg["recipe"]:
                    log.error("peer %d trains with other options (%s); it takes no part in my rounds until it "
                              "shares mine. Fix its config and restart it", msg.sender,
                              recipe.differences(self.recipe, msg["recipe"]))
                self.foreign[msg.sender] = msg["recipe"]
                # judged now, while the sender is surely alive: if it stops first, its bye must not
                # make me the majority of one
                self.judge_recipes(alive=msg.sender)
                return
            if self.foreign.pop(msg.sender, None) is not None:
                log.info("peer %d now shares my options; it takes part again", msg.sender)
            # when the network thread received it: a ready of a restarted peer's last life that
            # waited in the inbox was received before the new life's first heartbeat
            self._ready_at[msg.sender] = msg.received or clock.now()
            if "mask_key" in msg.header:
                self.mask_keys[msg.sender] = msg["mask_key"]
        elif msg.sender in self.foreign and msg.kind != "bye":
            self._drop(msg, f"dropped {msg.kind} from peer {msg.sender}, which trains with other options",
                       logging.INFO)
            return
        if msg.kind == "abort":
            for d in msg["dead"]:
                if not isinstance(d, int) or isinstance(d, bool):
                    continue
                if d != self.me:
                    # only a peer I hear now: a report about one I do not hear (e.g. an abort of my
                    # last life's attempt, queued while I restarted) would keep it out when it comes back
                    if self._heard(d, None):
                        self._suspects[d] = clock.now()
                else:
                    # it cannot hear me while I hear it: my link to it is stuck; open a new one
                    self.transport.reset_link(msg.sender)
        if r < self.round and msg.kind not in self.ANY_ROUND:
            self._drop(msg, f"dropped stale {msg.kind} from peer {msg.sender}: round {r} < current round {self.round}")
            return
        if r > self.round + 2 and msg.kind not in self.AHEAD_OK:
            self._drop(msg, f"dropped {msg.kind} from peer {msg.sender} for round {r}, too far ahead of round "
                            f"{self.round}")
            return
        self._box[_key(msg)][msg.sender] = msg
        if msg.kind == "report":
            self._tell(msg)
        for watch in self.watchers:
            watch(msg)

    def _note_protocol(self, peer: int, number: int) -> None:
        """Another protocol number is no reason to refuse a peer: every feature added since
        protocol 1 is switched on by an option in the recipe, so an equal recipe means that we
        both use only what both know (docs/protocol.md, "The recipe"). Said once per peer and
        number, so that an operator knows that versions are mixed."""
        if self.protocols.get(peer) != number and number != recipe.PROTOCOL:
            log.info("peer %d speaks protocol %d, I speak %d: it takes part while its recipe equals mine "
                     "(an option it does not know must stay at its default)", peer, number, recipe.PROTOCOL)
        self.protocols[peer] = number

    def _drop(self, msg: wire.Message, text: str, level: int = logging.DEBUG) -> None:
        """Log a dropped message (late messages of the previous round are normal when rounds are
        short: DEBUG), at most once every LOG_EVERY_S per sender and kind."""
        self._log.log((msg.sender, msg.kind), level, "%s", text)

    # ------------------------------------------------------------------ queries
    def get(self, kind: str, rnd: int, attempt: int = -1, seq: int = -1) -> dict[int, wire.Message]:
        """sender -> message of this kind, round and attempt (-1: kinds without attempts)."""
        return self._box.get((kind, rnd, attempt, seq), {})

    def filed(self, kind: str, rnd: int) -> bool:
        """Is any message of this kind and round filed (any attempt)?"""
        return any(k == kind and r == rnd and d for (k, r, _, _), d in self._box.items())

    def drop(self, kind: str, rnd: int, attempt: int = -1, seq: int = -1) -> None:
        """Forget the messages of one exchange that has been used (bnsync: hundreds per round)."""
        self._box.pop((kind, rnd, attempt, seq), None)

    def all_of(self, kind: str) -> list[wire.Message]:
        return [m for (k, _, _, _), d in self._box.items() if k == kind for m in d.values()]

    def by_round(self, kind: str) -> dict[int, dict[int, wire.Message]]:
        """round -> sender -> message, for kinds kept for the whole run (reports)."""
        out: dict[int, dict[int, wire.Message]] = {}
        for (k, r, _, _), d in self._box.items():
            if k == kind:
                out.setdefault(r, {}).update(d)
        return out

    def commits(self, min_round: int) -> list[wire.Message]:
        return [m for (k, r, _, _), d in self._box.items() if k == "commit" and r >= min_round for m in d.values()]

    def groups(self, rnd: int, after_attempt: int) -> list[tuple[int, wire.Message]]:
        """(attempt, message) of group proposals for rnd newer than after_attempt, newest first."""
        out = [(a, m) for (k, r, a, _), d in self._box.items() if k == "group" and r == rnd and a > after_attempt
               for m in d.values()]
        return sorted(out, key=lambda am: am[0], reverse=True)

    def max_attempt(self, rnd: int) -> int:
        """The highest attempt of round rnd I know of: filed messages of attempts, and the attempts
        that peers say in their `ready` (`tried`) they have seen."""
        filed = max((a for (_, r, a, _) in self._box if r == rnd and a >= 0), default=0)
        tried = [m.header.get("tried", 0) for m in self.get("ready", rnd).values()]
        return max([filed, *(t for t in tried if isinstance(t, int) and not isinstance(t, bool))])

    def put(self, msg: wire.Message) -> None:
        """File one of my own messages (e.g. my report), without validation."""
        self._box[_key(msg)][msg.sender] = msg
        if msg.kind == "report":
            self._tell(msg)

    def _tell(self, msg: wire.Message) -> None:
        if self.on_report is not None:
            try:
                self.on_report(msg)
            except Exception as e:      # an observer's bug must not lose the message or end the run
                self._log.log(("observer",), logging.WARNING, "the report observer failed: %s: %s",
                              type(e).__name__, e)

    def discard(self, msg: wire.Message) -> None:
        self._box.get(_key(msg), {}).pop(msg.sender, None)

    def advance(self, rnd: int) -> None:
        """Round rnd starts: drop what belongs to earlier rounds (except KEEP_ALL)."""
        self.round = rnd
        for key in [k for k in self._box if k[1] < rnd and k[0] not in self.KEEP_ALL]:
            del self._box[key]

    # ------------------------------------------------------------------ liveness: the one definition
    def alive(self, peer: int, since: float | None = None) -> bool:
        """Heard from within dead_after_s, has not said bye, and not reported dead by a member
        since it was last heard from. I am always alive. `since` (monotonic) gives a peer that
        another member put into my exchange the benefit of the doubt: it counts as heard at that
        moment (a peer just back from a partition may reach others before it reaches me). A peer
        reported dead counts as dead for at least SUSPECT_HOLD_S, even if I hear it. A peer heard
        from a new process of it (it restarted: its heartbeats carry a new life id) is dead to
        exchanges that began before, and until its new life sends a ready."""
        if peer == self.me:
            return True
        reborn = self.transport.reborn_at(peer)
        if reborn is not None:
            # a new process of it (it restarted): what its last life was doing is lost, so it is dead
            # to every exchange that began before, and until it says `ready` again (a ready of its
            # last life must not put it into a group)
            if reborn > self._reborn_noted.get(peer, -float("inf")):
                self._reborn_noted[peer] = reborn
                self._log.log(("reborn", peer), logging.INFO, "peer %s restarted (a new process); the attempts "
                              "of its last life are lost", peer)
            # to an exchange that began after the restart, the member's new life is in the group on the
            # proposer's word, even if its new `ready` has not reached me yet
            if (since is not None and reborn > since) or \
                    (since is None and self._ready_at.get(peer, -float("inf")) < reborn):
                return False
            if self._suspects.get(peer, float("inf")) < self._ready_at.get(peer, -float("inf")):
                # a death reported before its new life said ready was (most likely) its last life's
                del self._suspects[peer]
        if not self._heard(peer, since):
            return False
        seen = self._seen(peer, since)
        suspected = self._suspects.get(peer)
        # a member that cannot hear it may still be cut off from it although I hear it again: it
        # stays out of groups for SUSPECT_HOLD_S, so the round goes on without it (it downloads)
        return suspected is None or (seen > suspected and clock.now() - suspected >= protocol.SUSPECT_HOLD_S)

    def mask_key(self, peer: int) -> str | None:
        """The mask key of the peer's latest `ready` (secure aggregation), unless that ready came
        from a process before its last restart (a new process has a new key)."""
        key = self.mask_keys.get(peer)
        reborn = self.transport.reborn_at(peer)
        if key is None or (reborn is not None and self._ready_at.get(peer, -float("inf")) < reborn):
            return None
        return key

    def live(self, peers: Iterable[int]) -> list[int]:
        """The alive peers I can work with: those with another recipe are left out."""
        return sorted(p for p in peers if self.alive(p) and p not in self.foreign)

    def reachable(self, peers: Iterable[int]) -> list[int]:
        """The peers I hear (within dead_after_s, no bye) and share my recipe with, whatever the
        rules for groups say: a peer that just restarted, or one another member cannot hear,
        still answers a fetch."""
        return sorted(p for p in peers if p != self.me and p not in self.foreign and self._heard(p, None))

    def live_foreign(self) -> dict[int, str]:
        """Alive peers whose last ready carried another recipe -> that recipe."""
        return {p: r for p, r in self.foreign.items() if self.alive(p)}

    def judge_recipes(self, alive: int | None = None) -> tuple[list[int], str] | None:
        """(peers, their recipe) once the live peers with other recipes were at least as many as
        the configured peers not known to differ, me included (a tie counts: no side can claim
        the run); the verdict stays. Counted against the config, not against the peers heard so
        far: a peer that hears one odd peer before the others at start-up must not stop.
        `alive`: a peer to count as live whatever its heartbeat says."""
        if self.outnumbered is None:
            foreign = {p: r for p, r in self.foreign.items() if p == alive or self.alive(p)}
            if foreign and len(foreign) >= len([p for p in self.peers if p not in self.foreign]):
                recipes = list(foreign.values())
                self.outnumbered = (sorted(foreign), max(set(recipes), key=recipes.count))
        return self.outnumbered

    def _heard(self, peer: int, since: float | None) -> bool:
        """Heard from within dead_after_s (`since`: counted as heard then at the latest), no bye."""
        seen = self._seen(peer, since)
        return seen is not None and peer not in self._departed and clock.now() - seen < self.dead_after_s

    def _seen(self, peer: int, since: float | None) -> float | None:
        seen = self.transport.last_seen(peer)
        return seen if since is None else max(seen if seen is not None else since, since)

    def next_expiry(self, peers: Iterable[int], since: float | None = None) -> float:
        """The monotonic time at which the first of these live peers turns dead if it stays silent."""
        times = [self._seen(p, since) + self.dead_after_s for p in peers if p != self.me and self.alive(p, since)]
        return min(times, default=float("inf"))

    def committed(self, peer: int) -> int:
        """The last round this peer says (by heartbeat) it has committed; 0 if unknown, if the
        claim is beyond the run's last round, or if an earlier claim of this peer proved false."""
        value = self.transport.heartbeat(peer).get("committed", 0)
        if peer in self._distrusted or peer in self.foreign or not isinstance(value, int) or isinstance(value, bool):
            return 0
        if self.last_round and not 0 <= value <= self.last_round:
            self._log.log(("claim", peer), logging.WARNING, "peer %s claims to have committed round %s, but the run "
                          "has %d rounds; ignored", peer, value, self.last_round)
            return 0
        return value

    def distrust(self, peer: int) -> None:
        """Ignore this peer's claims to have committed rounds (it could not back one up)."""
        self._distrusted.add(peer)


def _key(msg: wire.Message) -> tuple:
    """Where a message is filed: (kind, round, attempt, seq); -1 for the fields a kind lacks."""
    h = msg.header
    return msg.kind, h.get("round", 0), h.get("attempt", -1), h.get("seq", -1)
