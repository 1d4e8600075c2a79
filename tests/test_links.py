"""Links that come back: a reconnecting peer takes over its routing id at once (ROUTER_HANDOVER),
a peer told that a member cannot hear it rebuilds its link to that member, and a peer reported
dead stays out of groups for SUSPECT_HOLD_S even if I hear it (docs/protocol.md, "Sockets" and
step 2 of "One round r")."""
from __future__ import annotations

import time

import zmq

from p2pfed import config
from p2pfed.consensus.mailbox import Mailbox
from p2pfed.net import protocol, wire
from p2pfed.net.transport import Transport
from p2pfed.run.launch.preflight import free_ports


def _ready(sender: int, rnd: int) -> list:
    return wire.encode("ready", sender, round=rnd, n_samples=5, recipe="")


def _recv_kind(t: Transport, kind: str, timeout_s: float) -> wire.Message | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        msg = t.recv(deadline - time.monotonic())
        if msg is not None and msg.kind == kind:
            return msg
    return None


def test_a_reconnecting_peer_takes_over_its_routing_id_and_a_reset_link_carries_messages_again():
    peers = config.local_peers(2, free_ports(2))
    a = Transport(peers[0], peers, max_message_bytes=1 << 20, heartbeat_interval_s=0.1)
    b = Transport(peers[1], peers, max_message_bytes=1 << 20, heartbeat_interval_s=0.1)
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    try:
        a.start()
        b.start()
        a.send(1, _ready(0, 1))
        assert _recv_kind(b, "ready", 10.0) is not None            # a's link to b is up
        # a second connection with routing id "0" while a's is up: without ROUTER_HANDOVER the
        # router parks it until the old one closes, and what it sends is never read
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.ROUTING_ID, b"0")
        s.connect(f"tcp://127.0.0.1:{peers[1].port}")
        time.sleep(0.3)
        s.send_multipart(_ready(0, 7))
        got = _recv_kind(b, "ready", 5.0)
        assert got is not None and got["round"] == 7, got
        s.close(linger=0)
        # a rebuilds its link to b (as when b's abort names a dead): messages flow again
        a.reset_link(1)
        deadline = time.monotonic() + 10
        got = None
        while got is None and time.monotonic() < deadline:
            a.send(1, _ready(0, 9))
            msg = _recv_kind(b, "ready", 0.5)
            got = msg if msg is not None and msg["round"] == 9 else None
        assert got is not None, "no message arrived over the rebuilt link within 10 s"
    finally:
        s.close(linger=0)
        a.close()
        b.close()
        ctx.term()


class _FakeTransport:
    id = 0
    peer_ids = [1, 2]

    def __init__(self):
        self.seen: dict[int, float] = {}
        self.reborn: dict[int, float] = {}
        self.resets: list[int] = []
        self.queue: list[wire.Message] = []

    def reborn_at(self, peer):
        return self.reborn.get(peer)

    def recv(self, timeout_s):
        return self.queue.pop(0) if self.queue else None

    def last_seen(self, peer):
        return self.seen.get(peer)

    def heartbeat(self, peer):
        return {}

    def reset_link(self, peer):
        self.resets.append(peer)


def _abort(sender: int, dead: list[int]) -> wire.Message:
    return wire.Message("abort", sender, {"round": 1, "attempt": 0, "reason": "silent", "dead": dead})


def test_an_abort_naming_me_rebuilds_my_link_and_a_reported_peer_stays_out_for_the_hold(monkeypatch):
    monkeypatch.setattr(protocol, "SUSPECT_HOLD_S", 0.5)
    t = _FakeTransport()
    mb = Mailbox(t, dead_after_s=5.0)
    mb.advance(1)
    now = time.monotonic()
    t.seen = {1: now, 2: now}
    assert mb.live([0, 1, 2]) == [0, 1, 2]
    t.queue = [_abort(1, [0, 2])]            # peer 1 cannot hear me (0) nor peer 2
    mb.pump(0)
    assert t.resets == [1]                   # I rebuild my link to peer 1
    t.seen[2] = time.monotonic() + 0.01      # I hear peer 2 again right after the abort...
    assert mb.live([0, 1, 2]) == [0, 1]      # ...but it stays out of groups for SUSPECT_HOLD_S
    time.sleep(0.55)
    t.seen = {1: time.monotonic(), 2: time.monotonic()}
    assert mb.live([0, 1, 2]) == [0, 1, 2]   # heard after the hold: back in


def test_a_heartbeat_from_a_new_process_marks_the_peer_reborn():
    from p2pfed.net.shared import SharedState
    st = SharedState()
    hb = lambda life: wire.Message("hb", 1, {"round": 3, "phase": "train", "committed": 2, "life": life})  # noqa: E731
    st.heard(hb("aaaa"))
    st.heard(hb("aaaa"))
    assert st.reborn_at(1) is None                   # the first life, heard twice
    st.heard(hb("bbbb"))
    assert st.reborn_at(1) is not None               # a restart
    assert len(st.heartbeat_frames(0)) == 1 and st._status["life"] != SharedState()._status["life"]


def test_a_restarted_peer_is_dead_to_its_old_exchanges_and_out_of_groups_until_it_is_ready():
    """Its last life's part of an exchange is lost: it must not be waited for until the
    exchange's deadline (a restart can be faster than dead_after_s)."""
    t = _FakeTransport()
    mb = Mailbox(t, dead_after_s=5.0, recipe_text="r")
    mb.advance(3)
    began = time.monotonic()                       # an exchange with peers 1 and 2 begins
    t.seen = {1: began, 2: began}
    assert mb.alive(1, began) and mb.alive(2, began)
    mb.file(_abort(2, [1]))                        # a member saw its last life die
    t.reborn[1] = t.seen[1] = time.monotonic()     # peer 1 is heard from a new process
    assert not mb.alive(1, began) and mb.alive(2, began)
    assert not mb.alive(1)                         # and out of groups until its new life is ready
    stale = wire.Message("ready", 1, {"round": 3, "n_samples": 10, "recipe": "r"}, received=began)
    mb.file(stale)                                 # its last life's ready, still queued: no
    assert not mb.alive(1)
    mb.file(wire.Message("ready", 1, {"round": 3, "n_samples": 10, "recipe": "r"}, received=time.monotonic()))
    assert mb.alive(1) and not mb.alive(1, began)  # ready: in groups again, never in the old exchange
    assert mb.reachable([1, 2]) == [1, 2]          # and always a peer to download from
