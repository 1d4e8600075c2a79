"""The invariants, checked as the simulation runs (../shared/DESIGN.md, docs/security.md).

After every commit, adoption and delivered message:

    one digest      no round has two committed digests, at any peer, ever
    exact           a round committed by averaging has the digest of the exact weighted mean of
                    its members' round states (secure aggregation: of their fixed-point sum), with
                    the integer buffers of its lowest member; or, under secure aggregation, the
                    digest of the round before (a rollback)
    verified        every state a peer adopts (averaged, downloaded, resumed) hashes to its digest
    one update      secure aggregation: no round commits a mean of fewer than SECURE_MIN_MEMBERS
                    members, and no peer can compute one other member's update of a round: from a
                    sum over itself and one other, or from two sums it knows: the sums of the round that it could unmask (a process
                    of it held every other member's part and seed of an attempt) and the round's
                    committed mean (unless rolled back). What a process knew counts for the peer
                    after a restart too (the seal must survive it).

At the end of a run (runner.py), after the faults: every live peer finished the last round with
the same digest (nothing hangs, the survivors agree). As it runs: a peer whose links healed
or whose process restarted is a member again within HEAL_ROUNDS rounds that it trains.
"""
from __future__ import annotations

from ..config import SECURE_MIN_MEMBERS
from ..consensus.outcome import Committed
from ..net import wire
from . import model
from .peer import state_ok
from .process import Life

HEAL_ROUNDS = 3
ROUND_ONE_ROLLBACK = "a round without an anchor cannot be rolled back"     # allreduce.py's words


class Checks:
    def __init__(self, sim):
        self.sim = sim
        self.digests: dict[int, str] = {}                   # round -> its committed digest
        self.commit_at: dict[int, float] = {}               # round -> when it was first committed
        self.verified: set[tuple[int, str]] = set()
        self.states: dict[tuple[int, int], dict] = {}       # (peer, round) -> its latest round state
        self.members: dict[int, tuple[int, ...]] = {}       # round -> members of its (first) commit
        self.rolled_back: set[int] = set()
        self.known: dict[tuple[int, int], set[tuple[int, ...]]] = {}   # (round, peer) -> member sets of sums
        self._group: dict[tuple[int, int], tuple[int, ...]] = {}
        self._held: dict[tuple, dict[str, set[int]]] = {}   # (round, attempt, peer, life) -> senders
        self.stops: list[tuple[int, int, str]] = []         # (peer, life, why) of peers that stopped
        self.limits: list[tuple[int, int, str]] = []        # stops that docs/security.md documents
        self.finishes: dict[int, str] = {}                  # peer -> digest of its last round
        self.commits = 0
        self.healed: dict[int, int] = {}                    # peer -> rounds trained since it healed, not a member

    def _fail(self, what: str) -> None:
        self.sim.world.fail(what)

    # ------------------------------------------------------------------ as it runs
    def trained(self, life: Life, rnd: int, state: dict) -> None:
        self.states[(life.peer, rnd)] = state
        if life.peer in self.healed:
            self.healed[life.peer] += 1
            if self.healed[life.peer] > HEAL_ROUNDS:
                self._fail(f"peer {life.peer} trained {self.healed[life.peer]} rounds since its links healed or it "
                           f"restarted, and was a member of none (at most {HEAL_ROUNDS})")

    def cut(self, peers) -> None:
        """Links of these peers were cut: the count for a peer that healed or restarted before waits
        until the cut heals (a peer cannot be a member of rounds it cannot reach)."""
        for p in peers:
            self.healed.pop(p, None)

    def heal(self, peer: int) -> None:
        """The peer's links healed or its process restarted: it must be a member of one of the
        next HEAL_ROUNDS rounds it trains (rounds, not seconds: a slow peer's rounds are slow)."""
        self.healed[peer] = 0

    def committed(self, life: Life, c: Committed, how: str) -> None:
        self.commits += 1
        self.sim.world.trace.add(self.sim.world.now, f"{how} {life.name} round {c.round} {c.digest[:12]} "
                                                     f"members {list(c.members)}")
        if not state_ok(c):
            return self._fail(f"{life.name} adopted ({how}) a state of round {c.round} whose digest is not "
                              f"{c.digest[:12]}")
        self.commit_at.setdefault(c.round, self.sim.world.now)
        first = self.digests.setdefault(c.round, c.digest)
        if first != c.digest:
            return self._fail(f"round {c.round} has two committed digests: {first[:12]} and {c.digest[:12]} "
                              f"({how} by {life.name})")
        rollback = self.sim.secure and c.round - 1 in self.digests and c.digest == self.digests[c.round - 1]
        if rollback:
            self.rolled_back.add(c.round)
        else:
            self._knows(life.peer, c.round, tuple(c.members))      # the committed mean: a sum it now holds
        if self.sim.secure and how == "averaged" and not rollback and len(c.members) < SECURE_MIN_MEMBERS:
            return self._fail(f"round {c.round} committed the mean of {list(c.members)} under secure aggregation: "
                              f"fewer than {SECURE_MIN_MEMBERS} members")
        if how == "averaged":
            self.members.setdefault(c.round, tuple(c.members))
            if life.peer in c.members:
                self.healed.pop(life.peer, None)
        if how != "averaged" or rollback or (c.round, c.digest) in self.verified:
            return
        self.verified.add((c.round, c.digest))
        missing = [m for m in c.members if (m, c.round) not in self.states]
        if missing:
            return self._fail(f"round {c.round} committed with members {list(c.members)}, but {missing} never "
                              f"trained it")
        states = {m: self.states[(m, c.round)] for m in c.members}
        weights = {m: self.sim.specs[m].n_samples for m in c.members}
        if model.reference(states, weights, self.sim.secure) != c.digest:
            return self._fail(f"round {c.round}: committed {c.digest[:12]} is not the exact weighted mean of "
                              f"members {list(c.members)}")

    def observe(self, receiver: int, msg: wire.Message) -> None:
        """Every delivered message (secure aggregation: which process can unmask which sum). A
        process can unmask its slice's sum of an attempt once it holds every other member's
        part and seed of that attempt; a restarted process holds none of its last life's."""
        if not self.sim.secure or msg.kind not in ("part", "seed"):
            return
        life = self.sim.lives[receiver].number
        rnd, attempt = msg.header.get("round", 0), msg.header.get("attempt", -1)
        got = self._held.setdefault((rnd, attempt, receiver, life), {"part": set(), "seed": set()})
        got[msg.kind].add(msg.sender)
        if msg.kind == "part":
            self._group[(rnd, attempt)] = tuple(msg["members"])
        members = self._group.get((rnd, attempt))
        others = set(members or ()) - {receiver}
        if members and receiver in members and got["part"] >= others and got["seed"] >= others:
            self._knows(receiver, rnd, members)

    def _knows(self, peer: int, rnd: int, members: tuple[int, ...]) -> None:
        """peer knows a sum of round rnd over members: fail if, with another sum it knows, one
        other member's update follows."""
        if not self.sim.secure:
            return
        partners = set(members) - {peer}
        if peer in members and len(partners) == 1:
            return self._fail(f"round {rnd}: peer {peer} knows the sum over {list(members)}: less its own update, "
                              f"it is peer {partners.pop()}'s")
        known = self.known.setdefault((rnd, peer), set())
        for other in known:
            alone = (set(other) ^ set(members)) - {peer}
            if len(alone) == 1:
                return self._fail(f"round {rnd}: peer {peer} knows sums over {list(other)} and {list(members)}: "
                                  f"their difference is peer {alone.pop()}'s update")
        known.add(members)

    def stopped(self, life: Life, why: str) -> None:
        if self.sim.secure and ROUND_ONE_ROLLBACK in why and life.round == 1:
            # docs/security.md: a round 1 whose sums were seen cannot be rolled back, so the run stops
            self.limits.append((life.peer, life.number, why))
        else:
            self.stops.append((life.peer, life.number, why))
        self.sim.world.trace.add(self.sim.world.now, f"stop {life.name}: {why}")

    def finished(self, life: Life, c: Committed | None) -> None:
        if c is not None:
            self.finishes[life.peer] = c.digest
