"""A federation from the Slurm step it runs in: `srun -n 8 p2pfed peer --config peers.toml --from-slurm`.

Every task of the step is one peer. Its id is SLURM_PROCID; the peers' hosts are the step's
nodes (SLURM_STEP_NODELIST, expanded as Slurm's hostlist syntax says: `node[01-03,07]`), with as
many peers on each as SLURM_STEP_TASKS_PER_NODE says (`4(x2),3`), numbered as the step's task
distribution numbers its tasks (block, the default: consecutive ids on a node; or cyclic: one per
node in turn); its port is the base port plus its index on its node (SLURM_LOCALID). Every task
computes the same list from the same variables, so no file is written per host. Anything else a
[[peers]] entry of the config with the same id says (data_dir, public_key) is kept; with
security.curve, the public keys come from a shared key directory (`p2pfed keygen --peers N`).
With train.threads = 0, each peer uses SLURM_CPUS_PER_TASK torch threads where srun sets it.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from ...config import Config, ConfigError, PeerSpec, replace_peers

PORT_BASE = 20000           # the default base port is PORT_BASE + PORTS_PER_JOB x (job id mod JOBS) ...
PORTS_PER_JOB = 40          # ... so that the steps of up to JOBS jobs on one node do not collide, and every
JOBS = 300                  # port stays below 32768, where Linux's ephemeral ports (outgoing connections) start


@dataclass(frozen=True)
class Step:
    """What a task knows of its Slurm job step."""
    procid: int
    ntasks: int
    localid: int
    nodes: tuple[str, ...]
    tasks_per_node: tuple[int, ...]
    distribution: str
    job_id: int


def expand_hostlist(text: str) -> list[str]:
    """Slurm's hostlist syntax: 'node[01-03,07],gpu5' -> ['node01', 'node02', 'node03', 'node07', 'gpu5']
    (zero padding kept; several bracket groups in one name expand as a product)."""
    names: list[str] = []
    for part in _split_top(text):
        names += _expand_one(part)
    return names


def _split_top(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text.strip():
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += (ch == "[") - (ch == "]")
        if depth < 0 or depth > 1:
            raise ConfigError(f"SLURM_STEP_NODELIST {text!r} is not a Slurm host list")
        cur += ch
    if depth:
        raise ConfigError(f"SLURM_STEP_NODELIST {text!r} is not a Slurm host list (unclosed '[')")
    parts.append(cur)
    if any(not p for p in parts):
        raise ConfigError(f"SLURM_STEP_NODELIST {text!r} has an empty host name")
    return parts


def _expand_one(name: str) -> list[str]:
    m = re.search(r"\[([^\]]*)\]", name)
    if not m:
        return [name]
    head, tail = name[:m.start()], name[m.end():]
    out = []
    for item in m.group(1).split(","):
        lo, sep, hi = item.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ConfigError(f"SLURM_STEP_NODELIST: {item!r} in {name!r} is not a number or a range of numbers")
        width = len(lo)
        for k in range(int(lo), int(hi if sep else lo) + 1):
            out += [head + str(k).zfill(width) + rest for rest in _expand_one(tail)]
    return out


def expand_counts(text: str) -> list[int]:
    """SLURM_STEP_TASKS_PER_NODE: '4(x2),3' -> [4, 4, 3]."""
    out = []
    for item in text.strip().split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item.strip())
        if not m:
            raise ConfigError(f"SLURM_STEP_TASKS_PER_NODE {text!r} is not a list like 4(x2),3")
        out += [int(m.group(1))] * int(m.group(2) or 1)
    return out


def step_of(env: dict) -> Step:
    """The Slurm step this process is a task of, from its environment; a ConfigError that names
    the variable if one is missing (e.g. run under sbatch but not under srun)."""
    def need(name: str) -> str:
        if name not in env:
            raise ConfigError(f"--from-slurm: {name} is not set: start the peers with srun (e.g. `srun -n 5 p2pfed "
                              f"peer --config peers.toml --from-slurm`), inside an allocation or an sbatch script")
        return env[name]

    def number(name: str) -> int:
        text = need(name)
        if not text.isdigit():
            raise ConfigError(f"--from-slurm: {name}={text!r} is not a number")
        return int(text)

    procid = number("SLURM_PROCID")
    nodes = tuple(expand_hostlist(need("SLURM_STEP_NODELIST")))
    counts = tuple(expand_counts(need("SLURM_STEP_TASKS_PER_NODE")))
    step = Step(procid=procid, ntasks=number("SLURM_STEP_NUM_TASKS") if "SLURM_STEP_NUM_TASKS" in env
                else number("SLURM_NTASKS"), localid=number("SLURM_LOCALID"), nodes=nodes, tasks_per_node=counts,
                distribution=env.get("SLURM_DISTRIBUTION", "") or "block", job_id=number("SLURM_JOB_ID"))
    if len(nodes) != len(counts) or sum(counts) != step.ntasks or not step.procid < step.ntasks:
        raise ConfigError(f"--from-slurm: the step's nodes {list(nodes)}, tasks per node {list(counts)} and "
                          f"{step.ntasks} tasks (task {step.procid}) do not fit together")
    return step


def placement(step: Step) -> list[tuple[str, int]]:
    """(host, index on that host) of every task id, in id order, as the step distributed them."""
    kind = step.distribution.split(":")[0].split(",")[0]
    slots: list[tuple[str, int]] = []
    if kind == "block":
        for node, count in zip(step.nodes, step.tasks_per_node):
            slots += [(node, i) for i in range(count)]
    elif kind == "cyclic":
        placed = [0] * len(step.nodes)
        while len(slots) < step.ntasks:
            for n, node in enumerate(step.nodes):
                if placed[n] < step.tasks_per_node[n]:
                    slots.append((node, placed[n]))
                    placed[n] += 1
    else:
        raise ConfigError(f"--from-slurm: SLURM_DISTRIBUTION={step.distribution!r}: p2pfed knows where each task "
                          f"runs only for block and cyclic distributions; use srun -m block (the default) or -m cyclic")
    return slots


def default_base_port(job_id: int) -> int:
    return PORT_BASE + PORTS_PER_JOB * (job_id % JOBS)


def configure(cfg: Config, env: dict, base_port: int | None = None, keys_dir: str | None = None,
              peer_id: int | None = None) -> tuple[Config, int]:
    """cfg with one [[peers]] entry per task of the step (host, port; bind 0.0.0.0), and this
    task's peer id. base_port: the first port on every node (default from the job id); keys_dir:
    the shared directory of peer-K.key files, for security.curve."""
    step = step_of(env)
    if peer_id is not None and peer_id != step.procid:
        raise ConfigError(f"--id {peer_id} and --from-slurm disagree: this task's SLURM_PROCID is {step.procid}; "
                          f"leave --id out")
    slots = placement(step)
    node = env.get("SLURMD_NODENAME")
    if node and node != slots[step.procid][0]:
        raise ConfigError(f"--from-slurm: task {step.procid} should run on {slots[step.procid][0]} by the "
                          f"{step.distribution} distribution of nodes {list(step.nodes)}, but SLURMD_NODENAME is "
                          f"{node}; use srun -m block (the default) or -m cyclic")
    if slots[step.procid][1] != step.localid:
        raise ConfigError(f"--from-slurm: task {step.procid} should be task {slots[step.procid][1]} on its node by "
                          f"the {step.distribution} distribution, but SLURM_LOCALID is {step.localid}; use srun "
                          f"-m block (the default) or -m cyclic")
    base = base_port if base_port is not None else default_base_port(step.job_id)
    if base + max(step.tasks_per_node) - 1 > 65535:
        raise ConfigError(f"--base-port {base}: the step's {max(step.tasks_per_node)} tasks per node need ports up to "
                          f"{base + max(step.tasks_per_node) - 1}, above 65535; choose a lower --base-port")
    if base_port is None and max(step.tasks_per_node) > PORTS_PER_JOB:
        raise ConfigError(f"--from-slurm: {max(step.tasks_per_node)} tasks on one node need more than the "
                          f"{PORTS_PER_JOB} ports a job gets by default; give --base-port")
    given = {p.id: p for p in cfg.peers}
    peers = []
    for pid, (host, index) in enumerate(slots):
        known = given.get(pid, PeerSpec(id=pid))
        peers.append(dataclasses.replace(known, host=host, port=base + index, bind="0.0.0.0",
                                         public_key=known.public_key or _public_key(cfg, keys_dir, pid)))
    out = dataclasses.replace(cfg, peers=tuple(peers))
    if cfg.security.curve and not cfg.security.secret_key_file:
        if not keys_dir:
            raise ConfigError("security.curve is on: give --keys DIR, the shared directory of the peers' key pairs "
                              "(`p2pfed keygen --peers N --out DIR`), or security.secret_key_file")
        out = dataclasses.replace(out, security=dataclasses.replace(
            out.security, secret_key_file=str(Path(keys_dir) / "peer-{id}.key_secret")))
    extra = sorted(set(given) - set(range(len(slots))))
    if extra:
        raise ConfigError(f"[[peers]] of the config has ids {extra}, but the step has {len(slots)} tasks (ids 0.."
                          f"{len(slots) - 1}); run as many tasks as peers, or remove those entries")
    cpus = env.get("SLURM_CPUS_PER_TASK", "")
    if cfg.train.threads == 0 and cpus.isdigit() and int(cpus) > 0:
        # the task's own cores (srun -c / --cpus-per-task), not the node's divided by its peers
        out = dataclasses.replace(out, train=dataclasses.replace(out.train, threads=int(cpus)))
    return replace_peers(out, out.peers), step.procid       # replace_peers validates the config as a whole


def _public_key(cfg: Config, keys_dir: str | None, pid: int) -> str:
    if not cfg.security.curve:
        return ""
    if not keys_dir:
        raise ConfigError(f"security.curve is on but peer {pid} has no public_key: give --keys DIR, the shared "
                          f"directory of the peers' key pairs (`p2pfed keygen --peers N --out DIR`)")
    from ...net.curve import read_key_file
    path = Path(keys_dir) / f"peer-{pid}.key"
    if not path.is_file():
        raise ConfigError(f"--keys {keys_dir}: {path} is missing (the step has peer {pid}); make the keys for every "
                          f"task with `p2pfed keygen --peers N --out {keys_dir}`")
    return read_key_file(str(path))[0].decode()
