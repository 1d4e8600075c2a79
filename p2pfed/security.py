"""CURVE keys and the ZAP authenticator: only peers whose public key is listed get in."""
from __future__ import annotations

import ipaddress
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


def _set_key(lines: list[str], key: str, value: str) -> list[str]:
    """The lines of one TOML table with `key = value` replaced, or added after the table header."""
    for i, ln in enumerate(lines):
        if ln.split("=", 1)[0].strip() == key:
            rest = ln.split("=", 1)[1].strip()
            after = rest[rest.index('"', 1) + 1:] if rest.startswith('"') and rest.count('"') >= 2 else rest
            comment = after[after.index("#"):] if "#" in after else ""
            lines[i] = f"{key} = {value}" + (f"  {comment}" if comment else "")
            return lines
    return lines[:1] + [f"{key} = {value}"] + lines[1:]


def keygen_for_config(config_path: str, out_dir: str) -> dict[int, str]:
    """A key pair per peer of the config (peer-K.key, peer-K.key_secret; existing pairs are kept),
    and the config rewritten in place with each peer's public_key, security.curve = true and
    security.secret_key_file. Comments and other keys are left as they are. Returns id -> key."""
    from . import atomic
    from .config import load
    cfg = load(config_path)
    keys = {}
    for p in cfg.peers:
        public = Path(out_dir) / f"peer-{p.id}.key"
        if not (public.exists() and Path(f"{public}_secret").exists()):
            public, _ = keygen(out_dir, f"peer-{p.id}")
        keys[p.id] = zmq.auth.load_certificate(public)[0].decode()
    tables: list[list[str]] = [[]]
    for line in Path(config_path).read_text().splitlines():
        if line.strip().startswith("["):
            tables.append([])
        tables[-1].append(line)
    if not any(t[0].strip() == "[security]" for t in tables[1:]):
        tables.insert(1, ["[security]", ""])
    for i, t in enumerate(tables[1:], start=1):
        head = t[0].split("#", 1)[0].strip()
        if head == "[security]":
            t = _set_key(t, "curve", "true")
            tables[i] = _set_key(t, "secret_key_file", f'"{Path(out_dir) / "peer-{id}.key_secret"}"')
        elif head == "[[peers]]":
            ids = [ln.split("=", 1)[1].split("#", 1)[0].strip() for ln in t if ln.split("=", 1)[0].strip() == "id"]
            if ids and ids[0].isdigit() and int(ids[0]) in keys:
                tables[i] = _set_key(t, "public_key", f'"{keys[int(ids[0])]}"')
    atomic.write_text(config_path, "\n".join(ln for t in tables for ln in t) + "\n")
    check = load(config_path)           # the rewritten file must load, with CURVE on and every key listed
    if not (check.security.curve and all(p.public_key == keys[p.id] for p in check.peers)):
        raise ConfigError(f"{config_path}: could not write the keys into it (unusual layout?); add them by hand "
                          f"from {out_dir}/peer-K.key (docs/security.md)")
    return keys


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:          # a host name: it may resolve anywhere
        return False


def exposure_warning(cfg: Config) -> str | None:
    """A warning when CURVE is off but some peer listens on, or is reached at, a non-loopback
    address: then anyone who can reach those ports can join and send frames."""
    if cfg.security.curve:
        return None
    exposed = sorted({h for p in cfg.peers for h in (p.host, p.bind or p.host) if not _loopback(h)})
    if not exposed:
        return None
    return (f"SECURITY: security.curve is off but peers listen on or are reached at {', '.join(exposed)}: anyone "
            f"who can reach these ports can join the run and send frames. Turn CURVE on: `p2pfed keygen --config "
            f"peers.toml --out keys` writes a key pair per peer and their public keys into the config "
            f"(docs/security.md)")


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
