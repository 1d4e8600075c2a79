"""Who averages a round: `ready`, then a group.

    ready   every peer broadcasts `ready(round, n_samples, recipe)` once its local steps are
            done, and leaves it standing with its network thread, which re-sends it to peers
            in the same round that may have missed it (Transport.announce). A peer whose recipe
            (recipe.py) differs from mine takes no part in my rounds; if such peers are not
            fewer than those sharing my recipe, I stop instead.
    group   fast path: once every member of the last committed round is ready, each of them
            but the leader derives the group itself: those members, attempt 0, no extra round
            trip. A peer that was not a member (it restarted, or rejoins after a partition) is
            never derived into a group, since peers may see it come back at different moments:
            the leader (the lowest live member of the last round, leader_of) waits for it to be
            ready (it may still be downloading) and adds it by proposing
            `group(round, attempt >= 1, members, weights)`, which supersedes attempt 0. The leader also proposes after a failure, or without a peer
            still not ready after ready_timeout_s.

While it waits, a peer also watches for the round being done without it: a live peer whose
heartbeat claims the round (Download with a claimant) or a `commit` (Download of that digest).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from ..config import SECURE_MIN_MEMBERS
from ..net import clock, protocol, wire
from . import recipe
from .mailbox import Mailbox
from .outcome import Download, Failed

log = logging.getLogger("p2pfed.consensus.group")

IMPLICIT = 0        # the attempt number of a group every peer derived from the ready messages


def leader_of(live: list[int], members: set[int]) -> int | None:
    """The peer that proposes groups for a round: the lowest live member of the last committed
    round (members), or the lowest live peer if none of them is live. A peer that was not a member
    (rejoining after a partition or a restart, still behind) never leads, even with the lowest id:
    it is not yet in the round the others are in, so it could neither add itself nor hold the
    others for itself. Every peer that committed that round knows its members, so they agree on
    the leader without a heartbeat's delay (docs/protocol.md, step 2)."""
    ours = [p for p in live if p in members]
    return min(ours or live) if live else None


@dataclass(frozen=True)
class Group:
    attempt: int
    members: tuple[int, ...]
    weights: tuple[int, ...]


class GroupFormation:
    def __init__(self, transport, mailbox: Mailbox, acfg, all_peers: list[int], mask_key: str = ""):
        self.t = transport
        self.mask_key = mask_key          # secure aggregation: my public mask key, sent in every ready
        self.mb = mailbox
        self.cfg = acfg
        self.me = mailbox.me
        self.all_peers = sorted(all_peers)
        configured = acfg.min_peers or len(self.all_peers) // 2 + 1
        self.min_members = configured
        if mask_key:                      # secure aggregation: a round of two shows each its partner's update
            self.min_members = max(self.min_members, SECURE_MIN_MEMBERS)
        self.needs = (f"{self.min_members} members (averaging.min_peers, 0 = a majority of the {len(self.all_peers)} "
                      f"peers" + (f"; secure aggregation needs at least {SECURE_MIN_MEMBERS}" if mask_key else "") + ")")
        self.remedy = ("lower averaging.min_peers" if not mask_key else "turn secure aggregation off"
                       + (" and lower averaging.min_peers" if configured >= SECURE_MIN_MEMBERS else ""))
        self._small_logged: set[tuple[int, int]] = set()
        self._quorum_logged = 0.0

    def ready(self, rnd: int, n_samples: int, tried: int = 0) -> None:
        """Say I am ready for round rnd with weight n_samples, and leave it standing. tried: the
        last attempt of the round I took part in (a leader that was cut off while the others
        tried attempts proposes above it, instead of an attempt they ignore as old)."""
        frames = wire.encode("ready", self.me, round=rnd, n_samples=int(n_samples), recipe=self.mb.recipe,
                             protocol=recipe.PROTOCOL, **({"mask_key": self.mask_key} if self.mask_key else {}),
                             **({"tried": int(tried)} if tried > 0 else {}))
        self.t.broadcast(self.all_peers, frames)
        self.t.announce(rnd, frames)

    def withdraw(self) -> None:
        self.t.announce(None)

    def _readies(self, rnd: int, n_samples: int, live: list[int]) -> dict[int, int]:
        """sender -> n_samples of the live ready peers, me included (the mailbox files only
        readies that carry my recipe, with n_samples already range-checked). live: mb.live(),
        computed once per wake-up (with hundreds of peers, once per ready would be quadratic)."""
        alive = set(live)
        ready = {m.sender: int(m["n_samples"]) for m in self.mb.get("ready", rnd).values() if m.sender in alive}
        ready[self.me] = int(n_samples)
        return ready

    def _recipes(self, rnd: int) -> Failed | None:
        """Stop if the live peers with other options are not fewer than those sharing mine (me
        included): the majority keeps the run, and a tie stops both sides."""
        verdict = self.mb.judge_recipes()
        if not verdict:
            return None
        peers, theirs = verdict
        return Failed(f"round {rnd}: peer {self.me} trains with other options than peers {peers} "
                      f"({recipe.differences(self.mb.recipe, theirs)}), and they are not fewer than the peers that "
                      f"share mine. Every peer of a run must use the same [data], [model] and [train] options "
                      f"(docs/configuration.md): fix this peer's config and restart it; stopping")

    def _committed_without_me(self, rnd: int) -> Download | None:
        commits = self.mb.commits(rnd)
        if not commits:
            return None
        c = max(commits, key=lambda m: m["round"])
        return Download(c["round"], f"round {c['round']} was committed by peer {c.sender} without me",
                        digest=c["digest"])

    def _claimed_by_others(self, rnd: int, live: list[int]) -> Download | None:
        for p in live:
            if p != self.me and self.mb.committed(p) >= rnd:
                return Download(rnd, f"peer {p} has committed round {self.mb.committed(p)}", claimant=p)
        return None

    def await_group(self, rnd: int, last_attempt: int, ready_at: float, n_samples: int,
                    expected: set[int]) -> Group | Download | Failed:
        """Block until a group for an attempt > last_attempt includes me (or I derive or propose
        one), or the round turns out to be done without me, or it cannot go on."""
        deadline = ready_at + self.cfg.ready_timeout_s + self.cfg.exchange_timeout_s * self.cfg.max_attempts
        short_since = None          # since when fewer than min_members peers are live (me included)
        while True:
            stop = self._recipes(rnd) or self._committed_without_me(rnd)
            if stop:
                return stop
            for a, msg in self.mb.groups(rnd, last_attempt):
                if self.me in msg["members"]:
                    if self.mask_key and len(msg["members"]) < SECURE_MIN_MEMBERS:
                        if (rnd, a) not in self._small_logged:   # a leader without the floor (another version)
                            self._small_logged.add((rnd, a))
                            log.warning("round %d: not joining attempt %d of peer %d, members %s: under secure "
                                        "aggregation a group needs at least %d", rnd, a, msg.sender,
                                        msg["members"], SECURE_MIN_MEMBERS)
                        continue
                    return Group(a, tuple(msg["members"]), tuple(msg["weights"]))
            live = self.mb.live(self.all_peers)
            claimed = self._claimed_by_others(rnd, live)
            if claimed:
                return claimed
            if len(set(live) | {self.me}) >= self.min_members:
                short_since = None
            elif short_since is None:
                short_since = clock.now()
            elif clock.now() - short_since > self.cfg.startup_timeout_s:
                gone = [p for p in self.all_peers if p not in live and p != self.me]
                return Failed(f"round {rnd}: only peers {sorted(set(live) | {self.me})} are live, and a round needs "
                              f"{self.needs}; none of {gone} came back within "
                              f"averaging.startup_timeout_s={self.cfg.startup_timeout_s:g} s. Start them, or "
                              f"{self.remedy}; stopping")
            ready = self._readies(rnd, n_samples, live)
            members = expected - set(self.mb.foreign)
            leader = leader_of(live, members) == self.me
            # live peers outside the last round's members (back from a restart or a partition, maybe
            # still downloading): the leader waits for them and adds them; nobody derives them in
            newcomers = [p for p in live if p not in members]
            if (last_attempt < IMPLICIT and self.me in members and members <= set(ready)
                    and len(members) >= self.min_members
                    and not (leader and (newcomers or set(ready) - members))):
                return Group(IMPLICIT, tuple(sorted(members)), tuple(ready[m] for m in sorted(members)))
            awaited = [p for p in live if p in members or p in newcomers]
            if leader:
                proposal = self._maybe_propose(rnd, awaited, ready_at, ready)
                if proposal:
                    return proposal
            if clock.now() > deadline:
                foreign = self.mb.live_foreign()
                return Failed(f"round {rnd}: no group formed within {deadline - ready_at:.0f} s (live peers {live}, "
                              f"leader {leader_of(live, members) if live else '?'}"
                              + (f"; peers {sorted(foreign)} train with other options" if foreign else "")
                              + "); check that every peer runs the same config")
            wake = deadline
            if short_since is not None:
                wake = min(wake, short_since + self.cfg.startup_timeout_s + protocol.POLL_S)
            if leader and any(p not in ready for p in awaited):
                wake = min(wake, ready_at + self.cfg.ready_timeout_s)
            self.mb.wait(wake, watch=[p for p in self.all_peers if p not in ready])

    def _maybe_propose(self, rnd: int, awaited: list[int], ready_at: float, ready: dict[int, int]) -> Group | None:
        """As the leader: a group of the ready peers once every awaited peer (a live member of
        the last round, or a newcomer in this round) is ready, or ready_timeout_s has passed."""
        waiting = [p for p in awaited if p not in ready]
        if waiting and clock.now() - ready_at < self.cfg.ready_timeout_s:
            return None
        members = sorted(ready)
        if len(members) < self.min_members:
            if not waiting and clock.now() - self._quorum_logged > 10:
                self._quorum_logged = clock.now()
                log.warning("only %s are live and ready; a round needs %s; waiting", members, self.needs)
            return None
        attempt = max(self.mb.max_attempt(rnd), IMPLICIT) + 1
        weights = [ready[m] for m in members]
        if waiting:
            log.warning("proposing without %s: not ready after ready_timeout_s=%s", waiting, self.cfg.ready_timeout_s)
        log.info("proposing attempt %d: members %s, weights %s", attempt, members, weights)
        self.t.broadcast(self.all_peers, wire.encode("group", self.me, round=rnd, attempt=attempt, members=members,
                                                     weights=weights))
        return Group(attempt, tuple(members), tuple(weights))
