"""The run's CURVE keys: a key pair per peer written into a config, loading this peer's keys,
and the warning when peers are exposed without CURVE. The keys themselves and the ZAP
authenticator are the transport's (net/curve.py)."""
from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path

from ...config import Config, ConfigError
from ...net.curve import CurveKeys, keygen, read_key_file

log = logging.getLogger("p2pfed.security")


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
    from ...config import load
    from ...outputs import atomic
    cfg = load(config_path)
    keys = {}
    for p in cfg.peers:
        public = Path(out_dir) / f"peer-{p.id}.key"
        if not (public.exists() and Path(f"{public}_secret").exists()):
            public, _ = keygen(out_dir, f"peer-{p.id}")
        keys[p.id] = read_key_file(public)[0].decode()
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


def keygen_for_peers(n: int, out_dir: str) -> int:
    """Key pairs peer-0 .. peer-(n-1) in out_dir (existing pairs are kept; the directory is made
    private). Returns how many were made."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    os.chmod(out_dir, 0o700)
    made = 0
    for k in range(n):
        public = Path(out_dir) / f"peer-{k}.key"
        if not (public.exists() and Path(f"{public}_secret").exists()):
            keygen(out_dir, f"peer-{k}")
            made += 1
    return made


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


def load_keys(cfg: Config, peer_id: int) -> CurveKeys | None:
    """CurveKeys for this peer from config, or None when CURVE is off."""
    if not cfg.security.curve:
        return None
    path = cfg.security.secret_key_file.replace("{id}", str(peer_id))
    if not path or not os.path.isfile(path):
        raise ConfigError(f"security.secret_key_file {path!r} for peer {peer_id} does not exist; "
                          f"run `p2pfed keygen --out keys --name peer-{peer_id}`")
    public, secret = read_key_file(path)
    if secret is None:
        raise ConfigError(f"{path} holds no secret key; point security.secret_key_file at the .key_secret file")
    listed = cfg.peer(peer_id).public_key.encode()
    if public != listed:
        raise ConfigError(f"the public key in {path} does not match peers.public_key of peer {peer_id}")
    return CurveKeys(public=public, secret=secret, peers={p.id: p.public_key.encode() for p in cfg.peers})
