"""A run's faults, drawn from its seed before it starts: the network's behaviour and a list of
faults, each tied to a peer, a round and a point, so that a plan means the same thing however
the timing falls. A plan is plain data: a failing run is shrunk by replaying it with faults
left out (runner.shrink).

    kill      the peer's process dies at a point of a round: a fault point of the real code
              (`exchange`, `seed`, `reveal`), of the peer's loop (`train`, `between-rounds`),
              or `delay_s` after it enters a stage (`in-wait`, `in-exchange`, `in-sync`); it restarts
              `restart_s` later (None: it stays dead)
    cut       when the peer starts training the round, its links to `others` stop carrying
              messages (`one_way`: only from it) for `delay_s`
    dissent   the copies of the round's result of the peer and of `others` are each off by one
              ulp somewhere (as with bad memory): one to four dissenters, so that some rounds
              have no strict majority
    corrupt   from the round on, a `model` the peer sends (a download's answer) may have a
              flipped bit in an array (probability corrupt_p each). Only models: a part or a
              reduced shard corrupted in flight would be summed by every member alike, and
              nothing end to end detects that (TCP's checksum and CURVE's MAC are what protect
              them; docs/testing.md)
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from .world import NetParams

POINTS_PLAIN = ("train", "exchange", "between-rounds")
POINTS_SECURE = POINTS_PLAIN + ("seed", "reveal", "seed", "reveal")   # the barrier's points twice as often
STAGE_POINTS = ("in-wait", "in-exchange", "in-sync")     # delay_s after entering the stage


@dataclass(frozen=True)
class Fault:
    kind: str                       # kill | cut | dissent | corrupt
    peer: int
    round: int
    point: str = ""                 # kill, dissent: where
    delay_s: float = 0.0            # kill at a stage: after entering it; cut: how long
    restart_s: float | None = 1.0   # kill: the process comes back this much later (None: never)
    others: tuple[int, ...] = ()    # cut: the peers on the other side
    one_way: bool = False           # cut: only the peer's outbound links

    def __str__(self) -> str:
        if self.kind == "kill":
            at = f"{self.point}+{self.delay_s:.2f}s" if self.point in STAGE_POINTS else self.point
            back = "stays dead" if self.restart_s is None else f"restarts after {self.restart_s:.2f}s"
            return f"kill peer {self.peer} at {at} of round {self.round}, {back}"
        if self.kind == "cut":
            how = "outbound links" if self.one_way else "links"
            return f"cut peer {self.peer}'s {how} to {list(self.others)} in round {self.round} for {self.delay_s:.2f}s"
        who = f"peers {[self.peer, *self.others]}" if self.others else f"peer {self.peer}"
        return f"{self.kind} at {who} in round {self.round}" + (f" ({self.point})" if self.point else "")


@dataclass(frozen=True)
class Plan:
    net: NetParams
    faults: tuple[Fault, ...] = ()
    train_s: float = 2.0            # mean virtual time of a round's local steps
    speeds: tuple[float, ...] = ()  # per peer: its steps take this many times train_s
    starts: tuple[float, ...] = ()  # per peer: when its first process starts
    corrupt_p: float = 0.0
    notes: dict = field(default_factory=dict)

    def without(self, i: int) -> "Plan":
        return replace(self, faults=self.faults[:i] + self.faults[i + 1:])

    def describe(self) -> list[str]:
        n = self.net
        return ([f"network: latency {n.latency_s * 1e3:.2f} ms + exp({n.jitter_s * 1e3:.2f} ms), drop {n.drop_p}, "
                 f"duplicate {n.dup_p}, reorder {n.reorder_p}"]
                + [str(f) for f in self.faults])


def draw(seed: int, n: int, rounds: int, secure: bool, faults: bool = True, max_faults: int = 4) -> Plan:
    """The plan of one seed: faults in rounds 2 .. rounds - 4, so that the last rounds show the
    survivors agree; at most one peer of a run stays dead, and never a majority."""
    rng = random.Random(f"p2pfed-sim-plan-{seed}")
    net = NetParams(latency_s=rng.choice([0.0002, 0.001, 0.005]), jitter_s=rng.choice([0.0005, 0.002, 0.02]),
                    drop_p=rng.choice([0.0, 0.0, 0.0, 0.002]), dup_p=rng.choice([0.0, 0.0, 0.01]),
                    reorder_p=rng.choice([0.0, 0.0, 0.02]))
    speeds = tuple(rng.choice([1.0, 1.0, 0.7, 1.5, 3.0]) for _ in range(n))
    starts = tuple(rng.uniform(0.0, 2.0) for _ in range(n))
    out: list[Fault] = []
    last = max(2, rounds - 4)
    if faults:
        points = POINTS_SECURE if secure else POINTS_PLAIN
        stays_dead = None
        for _ in range(rng.randint(1, max_faults)):
            peer, rnd = rng.randrange(n), rng.randint(2, last)
            kind = rng.choice(["kill", "kill", "kill", "cut", "cut", "dissent", "corrupt"])
            if kind == "kill":
                if rng.random() < 0.5:
                    point, delay = rng.choice(points), 0.0
                else:
                    point, delay = rng.choice(STAGE_POINTS), rng.uniform(0.0, 0.2)
                restart = rng.choice([0.5, 1.0, 3.0, 8.0])
                if stays_dead is None and rng.random() < 0.2:
                    stays_dead, restart = peer, None
                elif stays_dead == peer:
                    continue
                out.append(Fault("kill", peer, rnd, point, delay, restart))
                if rng.random() < 0.3:      # a second death in the same round: a redo among fewer
                    second = rng.choice([p for p in range(n) if p != peer and p != stays_dead])
                    out.append(Fault("kill", second, rnd, rng.choice(STAGE_POINTS), rng.uniform(0.0, 1.0),
                                     rng.choice([0.5, 3.0, 8.0])))
            elif kind == "cut":
                others = [p for p in range(n) if p != peer]
                side = tuple(sorted(rng.sample(others, rng.randint(1, len(others)))))
                out.append(Fault("cut", peer, rnd, delay_s=rng.choice([0.3, 2.0, 6.0, 15.0]), others=side,
                                 one_way=rng.random() < 0.3))
            elif kind == "dissent":
                others = tuple(sorted(rng.sample([p for p in range(n) if p != peer], min(n - 1, rng.randint(0, 3)))))
                out.append(Fault("dissent", peer, rnd, "exchange", others=others))
            else:
                out.append(Fault("corrupt", peer, rnd))
    return Plan(net, tuple(out), speeds=speeds, starts=starts, corrupt_p=0.5 if any(
        f.kind == "corrupt" for f in out) else 0.0)
