"""CURVE keys and the ZAP authenticator: only peers whose public key is listed get in."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .config import Config, ConfigError

log = logging.getLogger("p2pfed.security")


def keygen(out_dir: str, name: str) -> tuple[Path, Path]:
    """Write NAME.key (public, shareable) and NAME.key_secret (mode 0600) into out_dir."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(out_dir, name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def load_keys(cfg: Config, peer_id: int):
    """CurveKeys for this peer from config, or None when CURVE is off."""
    from .transport import CurveKeys
    if not cfg.security.curve:
        return None
    path = cfg.security.secret_key_file.replace("{id}", str(peer_id))
    if not path or not os.path.isfile(path):
        raise ConfigError(f"security.secret_key_file {path!r} for peer {peer_id} does not exist; "
                          f"run `p2pfed keygen --out keys --name peer-{peer_id}`")
    public, secret = zmq.auth.load_certificate(path)
    if secret is None:
        raise ConfigError(f"{path} holds no secret key; point security.secret_key_file at the .key_secret file")
    listed = cfg.peer(peer_id).public_key.encode()
    if public != listed:
        raise ConfigError(f"the public key in {path} does not match peers.public_key of peer {peer_id}")
    return CurveKeys(public=public, secret=secret, peers={p.id: p.public_key.encode() for p in cfg.peers})


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


def start_authenticator(ctx: zmq.Context, peers: dict[int, bytes]):
    allowed = {key: pid for pid, key in peers.items()}
    auth = _Authenticator(ctx, allowed)
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=_PeerKeys(allowed))
    return auth
