"""The options every peer of a run must share, as one canonical string sent in `ready`.

Peers on several hosts each read their own copy of peers.toml. If one copy differs in an option
that changes what a round averages or how a peer trains (the optimizer, the round state's extras,
the schedule, the model, the partition), its rounds would be wrong in ways the protocol catches
only indirectly: shards of another length, an outvoted digest, or silently overlapping data. So
every `ready` carries this string. A peer's mailbox files no message of a peer whose recipe
differs from its own (but its bye), so that peer takes no part in its rounds, downloads or
writer choice; and a peer stops with an error naming the keys when the live peers with other
recipes are not fewer than those sharing its own (Mailbox.judge_recipes, group.py). A recipe is
at most protocol.RECIPE_MAX_CHARS long on the wire. Options
that may differ per host are not in it: paths, threads, device and precision, evaluation batch size, timeouts,
security, output.

Format: `section.key=value` pairs joined by ";" in sorted key order, values as in TOML (lists
comma-separated). Pure: no sockets, no torch.

Compatibility (docs/protocol.md, "The recipe"): the keys of protocol 1 are always in the text. An
option added since (ADDED, with the protocol number that added it) enters the text only when it is
set away from its default, so a peer that predates it, whose text lacks it, still agrees while it
is at its default, and one that sets it excludes every peer that does not share the setting, with
the key named (differences()).
"""
from __future__ import annotations

from dataclasses import fields

START_DIGEST = "model.start_digest"    # not a config key: the digest of the starting weights (with_start)
# This peer's protocol number, sent in `ready` (absent there = 1). Protocol 2 added the options
# below (the keys of protocol 1 are the other keys of the sections that `of` reads).
PROTOCOL = 4
# options added since protocol 1 -> the protocol that added them: in the text only away from
# their default, so that a peer that predates them agrees while they are at their default
ADDED = {
    "data.shards_per_peer": 2, "model.norm": 2, "train.agc_clip": 2, "train.auto_steps": 2, "train.batchnorm": 2,
    "train.compression": 2, "train.freeze_bn_at": 2, "train.round_deadline_s": 2, "train.round_target": 2,
    "security.secure_aggregation": 2, "train.small_input": 2, "train.small_until": 2,
    "data.classes": 3, "data.site_images": 3, "data.loader": 3,
    "security.mask_degree": 4,
}
_PER_HOST = {"data.data_dir", "data.cache_dir", "data.workers", "model.weights_file", "train.threads", "train.eval_batch_size",
             "train.device", "train.precision"}


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(_text(v) for v in value)
    return str(value)


def of(cfg) -> str:
    """The recipe of a config."""
    pairs = []
    for section in ("data", "model", "train", "security"):
        table = getattr(cfg, section)
        for f in fields(table):
            key, value = f"{section}.{f.name}", getattr(table, f.name)
            if section == "security" and key not in ADDED or key in _PER_HOST:
                continue
            if key in ADDED and value == f.default:
                continue
            pairs.append(f"{key}={_text(value)}")
    return ";".join(sorted(pairs))


def with_start(recipe: str, start_digest: str) -> str:
    """The recipe of a peer that starts from weights (model.weights_file or model.pretrained): its
    starting model's digest (the first 16 hex digits) joins the options every partner must share,
    so a peer whose file differs is named like any other differing option."""
    pairs = [p for p in recipe.split(";") if p] + [f"{START_DIGEST}={start_digest[:16]}"]
    return ";".join(sorted(pairs))


def parse(recipe: str) -> dict[str, str]:
    """key -> value text; malformed pairs are kept under their whole text (for messages only)."""
    out: dict[str, str] = {}
    for pair in recipe.split(";") if recipe else []:
        key, sep, value = pair.partition("=")
        out[key if sep else pair] = value
    return out


def differences(mine: str, theirs: str, limit: int = 6) -> str:
    """'train.scaffold: true here, false there; ...' for the first `limit` keys that differ."""
    a, b = parse(mine), parse(theirs)
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    text = "; ".join(f"{k}: {a.get(k, _absent(k))} here, {b.get(k, _absent(k))} there" for k in keys[:limit])
    return text + (f"; and {len(keys) - limit} more" if len(keys) > limit else "") if keys else "none"


def _absent(key: str) -> str:
    if key == START_DIGEST:
        return "(absent: the seed's random weights)"
    return "(absent: at its default)" if key in ADDED else "(absent)"
