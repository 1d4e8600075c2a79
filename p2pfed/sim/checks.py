"""The invariants, checked as the simulation runs (../shared/DESIGN.md, docs/security.md).

After every commit, adoption and delivered message:

    one digest      no round has two committed digests, at any peer, ever
    exact           a round committed by averaging has the digest of the exact weighted mean of
                    its members' round states (secure aggregation: of their fixed-point sum), with
                    the integer buffers of its lowest member; or, under secure aggregation, the
                    digest of the round before (a rollback)
    verified        every state a peer adopts (averaged, downloaded, resumed) hashes to its digest
    one sum         secure aggregation: the sums a member can unmask in one round (it holds every
                    other member's seed of an attempt) and the round's committed mean are all over
                    one member set: no two sums that differ by a member's update

At the end of a run (runner.py), after the faults: every live peer finished the last round with
the same digest (nothing hangs, the survivors agree), and a peer whose links healed or whose
process restarted was a member again within HEAL_ROUNDS rounds of the first round it trained
after that.
"""
from __future__ import annotations

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
        self.verified: set[tuple[int, str]] = set()
        self.states: dict[tuple[int, int], dict] = {}       # (peer, round) -> its latest round state
        self.members: dict[int, tuple[int, ...]] = {}       # round -> members of its (first) commit
        self.rolled_back: set[int] = set()
        self.revealed: dict[int, set[tuple[int, ...]]] = {}  # round -> member sets of unmaskable sums
        self._group: dict[tuple[int, int], tuple[int, ...]] = {}
        self._held: dict[tuple, dict[str, set[int]]] = {}   # (round, attempt, peer, life) -> senders
        self.stops: list[tuple[int, int, str]] = []         # (peer, life, why) of peers that stopped
        self.limits: list[tuple[int, int, str]] = []        # stops that docs/security.md documents
        self.finishes: dict[int, str] = {}                  # peer -> digest of its last round
        self.commits = 0
        self.healed: dict[int, int | None] = {}             # peer -> the last committed round when it
        #                                                     first trained after healing (None: not yet)

    def _fail(self, what: str) -> None:
        self.sim.world.fail(what)

    # ------------------------------------------------------------------ as it runs
    def trained(self, life: Life, rnd: int, state: dict) -> None:
        self.states[(life.peer, rnd)] = state
        if self.healed.get(life.peer, 0) is None:
            self.healed[life.peer] = max(self.digests, default=0)

    def heal(self, peer: int) -> None:
        """The peer's links healed or its process restarted: the rounds it may take to be a member
        again count from the first round it trains after that (a slow peer's first round is slow)."""
        self.healed[peer] = None

    def committed(self, life: Life, c: Committed, how: str) -> None:
        self.commits += 1
        self.sim.world.trace.add(self.sim.world.now, f"{how} {life.name} round {c.round} {c.digest[:12]} "
                                                     f"members {list(c.members)}")
        if not state_ok(c):
            return self._fail(f"{life.name} adopted ({how}) a state of round {c.round} whose digest is not "
                              f"{c.digest[:12]}")
        first = self.digests.setdefault(c.round, c.digest)
        if first != c.digest:
            return self._fail(f"round {c.round} has two committed digests: {first[:12]} and {c.digest[:12]} "
                              f"({how} by {life.name})")
        if how != "averaged" or (c.round, c.digest) in self.verified:
            return
        self.verified.add((c.round, c.digest))
        if self.sim.secure and c.round - 1 in self.digests and c.digest == self.digests[c.round - 1]:
            self.rolled_back.add(c.round)
            self.members.setdefault(c.round, tuple(c.members))
            return
        missing = [m for m in c.members if (m, c.round) not in self.states]
        if missing:
            return self._fail(f"round {c.round} committed with members {list(c.members)}, but {missing} never "
                              f"trained it")
        states = {m: self.states[(m, c.round)] for m in c.members}
        weights = {m: self.sim.specs[m].n_samples for m in c.members}
        if model.reference(states, weights, self.sim.secure) != c.digest:
            return self._fail(f"round {c.round}: committed {c.digest[:12]} is not the exact weighted mean of "
                              f"members {list(c.members)}")
        self.members.setdefault(c.round, tuple(c.members))
        self._one_sum(c.round)

    def observe(self, receiver: int, msg: wire.Message) -> None:
        """Every delivered message (secure aggregation: which process can unmask which sum). A
        process can unmask its slice's sum of an attempt once it holds every other member's
        part and seed of that attempt; a restarted process lost what its last life held."""
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
            self.revealed.setdefault(rnd, set()).add(members)
            self._one_sum(rnd)

    def _one_sum(self, rnd: int) -> None:
        sets = set(self.revealed.get(rnd, ()))
        if rnd in self.members and rnd not in self.rolled_back:
            sets.add(self.members[rnd])
        if len(sets) > 1:
            self._fail(f"round {rnd}: sums over member sets {sorted(map(list, sets))} were revealed "
                       f"(their difference is a member's update)")

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
