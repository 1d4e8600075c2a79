"""The `p2pfed` command line (click). Each command is a thin shell over one module."""
from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import click

from .. import config as config_mod
from ..config import ConfigError
from ..consensus.faultpoints import FaultPoint
from .exitcodes import ExitCode


def _fail(msg: str, code: int = ExitCode.USAGE) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)


def _load(path: str | None, placed_later: bool = False) -> config_mod.Config:
    try:
        return config_mod.load(path, placed_later) if path else config_mod.Config()
    except ConfigError as e:
        _fail(str(e))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """p2pfed: serverless federated learning over ZeroMQ."""


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(), help="peers.toml")
@click.option("--id", "peer_id", type=int, default=None, help="this peer's id in [[peers]] (--from-slurm: SLURM_PROCID)")
@click.option("--run-dir", default=None, help="overrides output.run_dir")
@click.option("--resume", is_flag=True, help="reload this peer's checkpoint and rejoin the run")
@click.option("--crash-at", multiple=True, help="fault injection: ROUND:PHASE ("
              + "|".join(p.value for p in FaultPoint) + ")")
@click.option("--quiet", is_flag=True, help="log to the run dir only, not to stderr")
@click.option("--device", default=None, help="overrides train.device for this peer: auto, cpu, cuda or cuda:K")
@click.option("--checkpoint-dir", default=None,
              help="where this peer keeps its checkpoint (default RUN_DIR/checkpoints), e.g. a node-local disk")
@click.option("--supervise", is_flag=True,
              help="run the peer as a child process and restart it with --resume when it crashes (killed by a "
                   "signal, out of memory, an abort in libzmq), with a back-off (docs/deploy.md)")
@click.option("--max-restarts", type=click.IntRange(min=0), default=5, show_default=True,
              help="--supervise: restarts before the peer is left dead")
@click.option("--spare", is_flag=True,
              help="--supervise: keep a warm spare process that has imported torch, so that a restart skips "
                   "the interpreter's start (2-3 s; costs one idle process of a few hundred MB per peer)")
@click.option("--from-slurm", is_flag=True,
              help="under srun: the id from SLURM_PROCID, the peers' hosts from the step's nodes, their ports from "
                   "--base-port and the task's place on its node (docs/deploy.md)")
@click.option("--base-port", type=click.IntRange(1, 65535), default=None,
              help="--from-slurm: the first port on every node (default 20000 + 40 x (job id mod 300))")
@click.option("--keys", "keys_dir", default=None,
              help="--from-slurm with security.curve: the shared directory of peer-K.key files (p2pfed keygen --peers N)")
@click.option("--life", type=click.IntRange(min=1), default=1, hidden=True, help="supervisors: which start this is")
@click.option("--last-exit", type=int, default=None, hidden=True, help="supervisors: how the last life ended")
def peer(config_path, peer_id, run_dir, resume, crash_at, quiet, device, checkpoint_dir, supervise, max_restarts,
         spare, from_slurm, base_port, keys_dir, life, last_exit) -> None:
    """Run one peer (one OS process)."""
    cfg = _load(config_path, placed_later=from_slurm)
    note = ""
    try:
        if from_slurm:
            import os
            from .launch import slurm
            cfg, peer_id = slurm.configure(cfg, dict(os.environ), base_port, keys_dir, peer_id)
            note = f"from the Slurm step of job {os.environ.get('SLURM_JOB_ID')}: peers " + ", ".join(
                f"{p.id}@{p.host}:{p.port}" for p in cfg.peers)
        elif peer_id is None:
            raise ConfigError("--id is required: this peer's id in [[peers]] (or --from-slurm, under srun)")
        elif base_port is not None or keys_dir is not None:
            raise ConfigError("--base-port and --keys are for --from-slurm; without it, [[peers]] gives each peer's "
                              "port and public_key")
        if crash_at:
            extra = tuple(config_mod.parse_fault(f"{peer_id}@{spec}") for spec in crash_at)
            cfg = config_mod.replace_faults(cfg, cfg.faults + extra)
        cfg.peer(peer_id)
    except ConfigError as e:
        _fail(str(e))
    run_dir = Path(run_dir or cfg.output.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if supervise:
        from .launch.supervise import RestartPolicy, Supervisor
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format=f"%(asctime)s p2pfed supervisor of peer {peer_id}: %(message)s")
        argv = ["--config", config_path, "--run-dir", str(run_dir)]
        argv += ["--from-slurm"] + (["--base-port", str(base_port)] if base_port is not None else []) \
            + (["--keys", keys_dir] if keys_dir else []) if from_slurm else ["--id", str(peer_id)]
        for spec in crash_at:
            argv += ["--crash-at", spec]
        argv += (["--quiet"] if quiet else []) + (["--device", device] if device else []) \
            + (["--checkpoint-dir", checkpoint_dir] if checkpoint_dir else []) + (["--resume"] if resume else [])
        sys.exit(Supervisor([sys.executable, "-m", "p2pfed", "peer", *argv], peer_id, run_dir / f"metrics-{peer_id}.jsonl",
                            RestartPolicy(max_restarts=max_restarts), spare=spare).run())
    _run_peer(cfg, peer_id, run_dir, resume, quiet, device, checkpoint_dir, life, last_exit, note)


def _stop_once(signum, frame) -> None:
    """SIGINT or SIGTERM: stop cleanly (the finally blocks say bye and close the sockets), and
    ignore further ones, which a terminal's Ctrl-C and a supervisor passing the signal on, or
    scancel signalling every process of a step, would otherwise send into that clean-up."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    sys.exit(ExitCode.TERMINATED)


def _run_peer(cfg, peer_id: int, run_dir: Path, resume: bool, quiet: bool, device, checkpoint_dir, life: int,
              last_exit, note: str = "") -> None:
    from ..consensus.outcome import RoundError
    from ..learning.datasets import DataError
    from ..learning.model import ModelError
    from ..net.transport import BindError, TransportDown
    from ..outputs import logs
    from ..consensus.presence import NoPeers
    ctx = logs.setup(str(peer_id), str(run_dir / f"peer-{peer_id}.log"), stream=None if quiet else sys.stderr,
                     level=logging.DEBUG if cfg.output.log_level == "debug" else logging.INFO)
    if note:
        logging.getLogger("p2pfed.run.cli").info("%s", note)
    from .node.peer import Peer
    signal.signal(signal.SIGTERM, _stop_once)    # run the finally blocks
    signal.signal(signal.SIGINT, _stop_once)     # even where SIGINT was inherited as ignored
    try:
        code = Peer(cfg, peer_id, run_dir, resume=resume, log_ctx=ctx, device=device, checkpoint_dir=checkpoint_dir,
                    life=life, last_exit=last_exit).run()
    except (ConfigError, DataError, ModelError, RoundError, BindError) as e:
        logging.getLogger("p2pfed.run.peer").error("%s", e)
        _fail(f"peer {peer_id}: {e}" if not str(e).startswith("peer ") else str(e),
              ExitCode.USAGE if isinstance(e, ConfigError) else ExitCode.NO_PEERS if isinstance(e, NoPeers)
              else ExitCode.FAILED)
    except TransportDown as e:
        logging.getLogger("p2pfed.run.peer").error("%s", e)
        _fail(str(e), ExitCode.NETWORK_DOWN)
    except KeyboardInterrupt:
        logging.getLogger("p2pfed.run.peer").warning("interrupted")
        sys.exit(ExitCode.INTERRUPTED)
    except Exception:       # a bug: logged with its traceback, and an exit code a supervisor restarts
        logging.getLogger("p2pfed.run.peer").exception("peer %d crashed on an unexpected error", peer_id)
        sys.exit(ExitCode.CRASHED)
    sys.exit(code)


@main.command(hidden=True)
def spare() -> None:
    """A warm spare for a supervisor: imports, then becomes the peer it is told to be (spare.py)."""
    from .launch.spare import serve
    sys.exit(serve(lambda argv: main.main(args=argv, prog_name="p2pfed")))


@main.command()
@click.option("--out", default="keys", show_default=True, help="directory for the key files")
@click.option("--name", default="peer", show_default=True, help="file name stem: NAME.key and NAME.key_secret")
@click.option("--config", "config_path", default=None, type=click.Path(exists=True, dir_okay=False),
              help="make a key pair for every peer of this config and write the public keys, curve = true and "
                   "secret_key_file into it (comments are kept)")
@click.option("--peers", "n_peers", type=click.IntRange(min=1), default=None,
              help="make key pairs peer-0 .. peer-(N-1) in --out, for `p2pfed peer --from-slurm --keys OUT`")
def keygen(out, name, config_path, n_peers) -> None:
    """Write a CURVE key pair and print its public key, or (--config) one per peer of a config,
    or (--peers N) N pairs for a Slurm step."""
    from ..net.curve import keygen as _keygen, read_key_file
    from .node.keys import keygen_for_config, keygen_for_peers
    if n_peers:
        made = keygen_for_peers(n_peers, out)
        click.echo(f"{out}: key pairs for peers 0..{n_peers - 1} ({made} new, {n_peers - made} kept). Put {out} on "
                   f"storage every node reads and no other user can (it holds every peer's secret key), then run "
                   f"`srun p2pfed peer --config CONFIG --from-slurm --keys {out}` with security.curve = true.")
        return
    if config_path:
        try:
            keys = keygen_for_config(config_path, out)
        except ConfigError as e:
            _fail(str(e))
        for pid, key in keys.items():
            click.echo(f"peer {pid}: {out}/peer-{pid}.key  public_key = \"{key}\"")
        click.echo(f"{config_path}: security.curve = true and every peer's public_key written. Copy each "
                   f"peer-K.key_secret to the host of peer K only (mode 0600); the .key files may be shared.")
        return
    public, secret = _keygen(out, name)
    pub, _ = read_key_file(public)
    click.echo(f"public key file: {public}\nsecret key file: {secret} (keep it private)\n"
               f"public_key = \"{pub.decode()}\"")


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def launch(ctx) -> None:
    """Start N local peers (same options as launch.py)."""
    from .launch.launcher import main as launcher_main
    sys.exit(launcher_main(ctx.args))


@main.command()
@click.option("--config", "config_path", default=None, type=click.Path(), help="peers.toml (data/model/train)")
@click.option("--run-dir", required=True, help="where metrics-central.jsonl and central.pt go")
@click.option("--epochs", type=float, default=None, help="overrides train.epochs")
@click.option("--batch-size", type=int, default=0, help="default: the federation's global batch (peers x batch_size)")
@click.option("--dataset", type=click.Choice(["cifar10", "folder", "synthetic"]), default=None)
@click.option("--data-dir", default=None)
@click.option("--width-mult", type=float, default=None)
@click.option("--train-limit", type=int, default=None, help="use only N training images")
def centralized(config_path, run_dir, epochs, batch_size, dataset, data_dir, width_mult, train_limit) -> None:
    """Train one model on the union of all partitions: the reference for a federated run."""
    from ..outputs import logs
    from . import centralized as central
    cfg = _load(config_path)
    try:
        cfg = config_mod.override(cfg, train={"epochs": epochs},
                                  data={"dataset": dataset, "data_dir": data_dir, "train_limit": train_limit},
                                  model={"width_mult": width_mult})
    except ConfigError as e:
        _fail(str(e))
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    logs.setup("central", str(Path(run_dir) / "central.log"))
    from ..learning.datasets import DataError
    from ..learning.model import ModelError
    try:
        result = central.run(cfg, Path(run_dir), batch_size)
    except (ConfigError, DataError, ModelError) as e:
        _fail(str(e), ExitCode.FAILED)
    click.echo(f"centralized: final accuracy {100 * result['accuracy']:.2f}%; metrics in {run_dir}")


@main.command()
@click.argument("model_file", type=click.Path())
@click.option("--onnx", "onnx_path", default=None, help="output .onnx (default: beside the input)")
@click.option("--data-dir", default=None, help="images to check ONNX against PyTorch (default: from the config)")
def export(model_file, onnx_path, data_dir) -> None:
    """Export a consensus.pt to fp32 ONNX and check it against PyTorch."""
    from ..outputs import export as exp, logs
    logs.setup("export")
    try:
        out, diff = exp.export_file(model_file, onnx_path, data_dir=data_dir)
    except (exp.ExportError, FileNotFoundError) as e:
        _fail(str(e), ExitCode.FAILED)
    click.echo(f"wrote {out}; max |logit difference| ONNX Runtime vs PyTorch = {diff:.2e}")


@main.command()
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--top", type=click.IntRange(min=1), default=3, show_default=True, help="classes shown per image")
def predict(model, images, top) -> None:
    """Classify photos with an exported ONNX model (MODEL: a .onnx file or a run dir), by ONNX
    Runtime alone, from the class names, input size and resize rule in the model's metadata."""
    from ..outputs import predict as pred
    try:
        results = pred.predict(model, list(images), top)
    except pred.PredictError as e:
        _fail(str(e), ExitCode.FAILED)
    for r in results:
        click.echo(f"{r['image']}: " + ", ".join(f"{name} {100 * p:.1f}%" for name, p in r["top"]))


@main.command()
@click.option("--data-dir", required=True, type=click.Path(exists=True), help="one image folder (or archive) to cut")
@click.option("--out", required=True, type=click.Path(), help="a new folder: OUT/site0, OUT/site1, ... are written")
@click.option("--sites", "n_sites", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--partition", type=click.Choice(["iid", "dirichlet", "shards"]), default="dirichlet",
              show_default=True, help="how the images are dealt to the sites")
@click.option("--alpha", type=float, default=0.5, show_default=True, help="dirichlet: smaller = more skewed")
@click.option("--shards", "shards_per_site", type=int, default=2, show_default=True,
              help="shards: label-sorted shards per site")
@click.option("--seed", type=int, default=0, show_default=True)
def sites(data_dir, out, n_sites, partition, alpha, shards_per_site, seed) -> None:
    """Write N demo site folders from one data set (train/ by the partition, test/ following each
    site's class mix), to rehearse a deployment: then `launch.py --data-dir OUT/site0 ...`."""
    from ..learning.folders import DataError
    from .launch import sites as site_mod
    try:
        manifest = site_mod.make_sites(data_dir, out, n_sites, partition, alpha, seed, shards_per_site)
    except (ConfigError, DataError) as e:
        _fail(str(e))
    classes = manifest["classes"]
    click.echo(f"wrote {n_sites} sites under {out} ({partition}{f', alpha {alpha:g}' if partition == 'dirichlet' else ''}"
               f"); images per class ({', '.join(classes)}):")
    for site in manifest["sites"]:
        train = [site["train"].get(c, 0) for c in classes]
        click.echo(f"  {site['folder']}: train {sum(train):>6} {train}  test {sum(site['test'].values()):>5}")
    click.echo(f"run them: python launch.py --preset photos --peers {n_sites} "
               + " ".join(f"--data-dir {Path(out) / s['folder']}" for s in manifest["sites"]))


@main.command()
@click.argument("target", type=click.Path())
@click.option("--calibration-images", type=int, default=None, help="images used for calibration")
def quantize(target, calibration_images) -> None:
    """Static INT8 quantization of RUN_DIR/consensus.pt (or a consensus .pt file), with a comparison."""
    from ..learning.datasets import DataError
    from ..outputs import comparison as q, logs
    from ..outputs.export import ExportError
    logs.setup("quantize")
    try:
        result = q.run_target(target, calibration_images=calibration_images)
    except (ExportError, FileNotFoundError, DataError) as e:
        _fail(f"{e} (data paths in the run's config are relative to the directory the run was started from)"
              if isinstance(e, DataError) else str(e), ExitCode.FAILED)
    click.echo(q.format_table(result))


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--reference", default=None, type=click.Path(), help="a centralized run dir to compare with")
def report(run_dir, reference) -> None:
    """Render RUN_DIR/plots/*.png and RUN_DIR/summary.md."""
    from ..outputs import report as rep
    out = rep.render(Path(run_dir), Path(reference) if reference else None)
    click.echo(f"wrote {out}")


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
def status(run_dir) -> None:
    """Summarise a run from its files, running or finished."""
    from ..outputs import report as rep
    click.echo(rep.status_text(Path(run_dir)))


@main.command()
@click.argument("run_dir", required=False, type=click.Path())
@click.option("--peer", "peer_address", default=None, metavar="HOST:PORT",
              help="watch through one peer's metrics port (output.metrics_port) instead of a local run dir")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="port of the page (0: any free port)")
@click.option("--bind", default="127.0.0.1", show_default=True,
              help="address of the page; 0.0.0.0 shows it to the network (read-only; docs/security.md)")
def watch(run_dir, peer_address, port, bind) -> None:
    """A live page of a federation: its peers, rounds, accuracy and faults."""
    import time

    from .observe import watch as watch_mod
    if (run_dir is None) == (peer_address is None):
        _fail("give a RUN_DIR or --peer HOST:PORT (one of them)")
    try:
        source = watch_mod.PeerSource(peer_address) if peer_address else watch_mod.RunDirSource(run_dir)
        server = watch_mod.serve(source, port, bind)
    except watch_mod.WatchError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"--port {port}: cannot serve on {bind}:{port} ({e.strerror or e}); choose another port, or 0 for any")
    click.echo(f"p2pfed watch: {server.url}/  (Ctrl-C stops)", err=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


if __name__ == "__main__":
    main()
