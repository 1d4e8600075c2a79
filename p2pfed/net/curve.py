"""CURVE for the transport: a peer's key pair, key files, and the ZAP allow-list authenticator.

Only peers whose public key is listed get in, and each connection's User-Id is the peer id that
owns its key, so the transport can check that a frame's routing id belongs to its key. Which
keys a run uses is the config's business (run/node/keys.py); this module knows only keys.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger("p2pfed.net.curve")


@dataclass(frozen=True)
class CurveKeys:
    public: bytes                       # this peer's Z85 public key
    secret: bytes                       # this peer's Z85 secret key
    peers: dict[int, bytes]             # peer id -> Z85 public key (the allow list)


def keygen(out_dir: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Write NAME.key (public, shareable) and NAME.key_secret (mode 0600) into out_dir."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(out_dir), name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def read_key_file(path: str | os.PathLike) -> tuple[bytes, bytes | None]:
    """(public, secret or None) from a key file written by keygen."""
    return zmq.auth.load_certificate(str(path))


class _PeerKeys:
    """Credentials provider: allow only listed keys."""
    def __init__(self, allowed: dict[bytes, int]):
        self.allowed = allowed

    def callback(self, domain, key: bytes) -> bool:
        ok = key in self.allowed
        if not ok:
            log.warning("CURVE: refused a connection with unlisted key %s", key.decode(errors="replace"))
        return ok


class _Authenticator(ThreadAuthenticator):
    """Sets each connection's User-Id to the peer id that owns its key."""
    def __init__(self, context, allowed: dict[bytes, int]):
        super().__init__(context)
        self._peer_keys = allowed          # not "_allowed": the base class uses that for IP addresses

    def curve_user_id(self, client_public_key: bytes) -> str:
        return str(self._peer_keys[zmq.utils.z85.encode(client_public_key)])


def start_authenticator(ctx: zmq.Context, peers: dict[int, bytes]) -> ThreadAuthenticator:
    allowed = {key: pid for pid, key in peers.items()}
    auth = _Authenticator(ctx, allowed)
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=_PeerKeys(allowed))
    return auth
