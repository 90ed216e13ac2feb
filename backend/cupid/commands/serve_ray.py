"""`cupid serve --ray [ADDRESS]`: the service on Ray Serve (model replicas, autoscaling, shared job
state); see cupid.cluster.service. The plain `cupid serve` (one worker in one process) is serve.py."""
from __future__ import annotations

import argparse
import secrets
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Callable, NamedTuple

from ..errors import CliError

MB = 1024 * 1024


def add_ray_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("on a Ray cluster (the backend's 'cluster' extra)")
    g.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="serve through Ray Serve: on a Ray runtime started for this run, or on the cluster at "
                        "ADDRESS (auto, or HEAD-IP:6379 from 'ray start --head')")
    g.add_argument("--replicas", type=int, default=None,
                   help="model replicas, each with one loaded model (one GPU each where the cluster has GPUs; "
                        "default 1)")
    g.add_argument("--min-replicas", type=int, default=None, help="autoscale from this many replicas (0 allowed) ...")
    g.add_argument("--max-replicas", type=int, default=None, help="... up to this many, on the jobs queued per replica")
    g.add_argument("--results-dir", default=None,
                   help="where inputs and results wait: a folder every machine of the cluster reaches (shared "
                        "storage); default: a private folder in this machine's temp dir (one machine only)")
    g.add_argument("--retry", action="store_true",
                   help="run a job once more when its replica dies mid-job (default: it fails with worker_lost)")


def _options(args: argparse.Namespace):
    from ..cluster.service import ServiceOptions

    autoscale = args.min_replicas is not None or args.max_replicas is not None
    if autoscale and args.replicas is not None:
        raise CliError("give either --replicas N or --min-replicas A --max-replicas B, not both")
    if autoscale:
        low = 1 if args.min_replicas is None else args.min_replicas
        high = max(low, 1) if args.max_replicas is None else args.max_replicas
        if low < 0 or high < 1 or low > high:
            raise CliError("autoscaling needs 0 <= --min-replicas <= --max-replicas and --max-replicas >= 1")
        return ServiceOptions(model=args.model, device=args.device, dtype=args.dtype, replicas=None,
                              min_replicas=low, max_replicas=high, retry=args.retry, results_dir=args.results_dir)
    replicas = 1 if args.replicas is None else args.replicas
    if replicas < 1:
        raise CliError("--replicas must be at least 1")
    return ServiceOptions(model=args.model, device=args.device, dtype=args.dtype, replicas=replicas,
                          retry=args.retry, results_dir=args.results_dir)


class TokenFile(NamedTuple):
    """serve.py's own port and token-file helpers (handed in: this module is imported by serve.py)."""

    bind: Callable[[str, int], socket.socket]
    existing_token: Callable[[Path], str | None]
    write_token_file: Callable[[Path, str, str], None]


def run_if_ray(args: argparse.Namespace, helpers: TokenFile) -> int | None:
    """Serve on Ray when --ray was given (the exit status), else None (the Ray-only flags refused)."""
    if args.ray is not None:
        return run_on_ray(args, helpers)
    given = [f for f in ("replicas", "min_replicas", "max_replicas", "results_dir") if getattr(args, f) is not None]
    if given or args.retry:
        flag = given[0] if given else "retry"
        raise CliError(f"--{flag.replace('_', '-')} belongs to a Ray service: add --ray")
    return None


def run_on_ray(args: argparse.Namespace, helpers: TokenFile) -> int:
    from ..cluster.runtime import connect, disconnect, require_ray
    from ..cluster.service import RayService
    from ..server import ServerSettings
    from ..server.settings import LOOPBACK, WILDCARD

    require_ray()
    options = _options(args)
    sock = helpers.bind(args.host, args.port)   # the port is free (or one is picked); Serve's proxy takes it over
    port = sock.getsockname()[1]
    sock.close()
    token_file = Path(args.token_file).expanduser()
    token = helpers.existing_token(token_file)
    keep_token_file = token is not None or args.port != 0
    settings = ServerSettings(host=args.host, port=port, token=token or secrets.token_urlsafe(32), device=args.device,
                              dtype=args.dtype, max_upload_bytes=args.max_upload_mb * MB, result_ttl=args.result_ttl,
                              preload=True, max_queue=args.max_queue, max_queued_bytes=args.max_queued_mb * MB,
                              max_result_bytes=args.max_results_mb * MB, max_objects=args.max_objects,
                              max_prompts=args.max_prompts)
    if args.ray and options.results_dir is None:
        print("note: without --results-dir, inputs and results live in this machine's temp dir: replicas on other "
              "machines cannot reach them (give a folder on shared storage)", file=sys.stderr, flush=True)
    connected = connect(args.ray or None, worker_logs=True)
    service = RayService(settings, options)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        service.start()
        wildcard = args.host in WILDCARD
        local_url = f"http://{'[::1]' if args.host == '::' else '127.0.0.1'}:{port}" if wildcard else settings.url
        helpers.write_token_file(token_file, local_url, settings.token)
        print(f"CUPID backend on Ray Serve listening on {local_url} (token in {token_file}): {service.describe()}",
              flush=True)
        if args.host not in LOOPBACK:
            print(f"reachable from other machines at port {port} of every Ray node, with the token in {token_file}; "
                  f"the token and the photos travel unencrypted (see cupid serve --help)", file=sys.stderr, flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        # a second Ctrl-C or SIGTERM while stopping is ignored: the cleaning up must finish (the token
        # file, the results folder, the application on a shared cluster)
        service.close()
        if connected:
            disconnect()
        if not keep_token_file:
            try:
                token_file.unlink()
            except OSError:
                pass
        for s, h in previous.items():
            signal.signal(s, h)
    print("CUPID backend stopped", file=sys.stderr)
    return 0
