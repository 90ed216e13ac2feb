"""`cupid serve`: run the local HTTP service (see cupid.server) until interrupted."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .. import config
from ..errors import CliError

if TYPE_CHECKING:
    from ..server import ServerSettings

MB = 1024 * 1024
NAME = "serve"
HELP = "run the CUPID service the Blender extension talks to (loopback only by default)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=0, help="port (0: pick a free one)")
    p.add_argument("--token-file", default=str(Path.home() / ".cupid" / "server.json"),
                   help="where to write {url, token} (mode 0600)")
    p.add_argument("--model", default=config.CUPID_MODEL_ID, help="Hugging Face id or local model directory")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--max-upload-mb", type=int, default=64, help="largest accepted upload")
    p.add_argument("--result-ttl", type=float, default=3600.0, help="seconds a finished result is kept")
    p.add_argument("--preload", action="store_true", help="load the model at start, not at the first job")
    p.add_argument("--max-queue", type=int, default=16,
                   help="jobs queued or running at once; one more is answered 503 busy (default 16)")
    p.add_argument("--max-queued-mb", type=int, default=1024,
                   help="disk the waiting jobs' decoded photos may take; past it, 503 busy (default 1024)")
    p.add_argument("--max-results-mb", type=int, default=2048,
                   help="disk kept finished results may take; past it the oldest unfetched go (default 2048)")
    p.add_argument("--max-connections", type=int, default=64, help="open connections at once (default 64)")
    p.add_argument("--idle-timeout", type=float, default=5.0,
                   help="seconds a connection may stay open without sending a request (default 5)")


def make_private_dirs(directory: Path) -> None:
    """Create `directory` and its missing parents as 0700 whatever the umask (existing ones are
    left as they are: the user may have pointed us into a shared place on purpose)."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700, exist_ok=True)
        os.chmod(d, 0o700)  # mkdir's mode is filtered through the umask


def write_token_file(path: Path, url: str, token: str, *, posix: bool = os.name == "posix") -> None:
    """Atomically write {url, token}, readable by this user only, replacing any earlier file (a
    server killed with SIGKILL leaves its own behind).

    POSIX: 0600 from creation on, forced with fchmod whatever the umask. Elsewhere (Windows, no
    fchmod there) the file is created with the mode it can take and relies on the private profile
    directory it lives in; `posix=False` runs that branch on any system."""
    make_private_dirs(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o600)
    try:
        if posix:
            os.fchmod(fd, 0o600)
        os.write(fd, json.dumps({"url": url, "token": token}).encode())
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)


def exposure_warning(settings: "ServerSettings") -> str | None:
    """What to tell the user when the service is reachable from other machines."""
    if settings.loopback_only:
        return None
    return (f"warning: listening on {settings.host}, reachable from other machines: anyone who has the token "
            f"can run jobs, and the token and photos travel unencrypted (plain HTTP); bind to 127.0.0.1 "
            f"unless you mean it")


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


def _server_class() -> type:
    import uvicorn

    class QuietExitServer(uvicorn.Server):
        """uvicorn re-raises SIGINT/SIGTERM after shutting down, which would skip our clean-up
        (temp results, token file): here a signal only asks the server to exit."""

        @contextlib.contextmanager
        def capture_signals(self):  # type: ignore[override]
            def ask_exit(*_: object) -> None:
                self.should_exit = True

            previous = {s: signal.signal(s, ask_exit) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, h in previous.items():
                    signal.signal(s, h)

    return QuietExitServer


def run(args: argparse.Namespace) -> int:
    import uvicorn

    _Server = _server_class()

    from ..pipeline import CupidPipeline, resolve_device
    from ..server import ServerSettings, create_app
    from ..server.connections import bounded_protocol

    for flag in ("max_queue", "max_queued_mb", "max_results_mb", "max_connections", "max_upload_mb"):
        if getattr(args, flag) < 1:
            raise CliError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.idle_timeout <= 0:
        raise CliError("--idle-timeout must be positive")
    device = str(resolve_device(args.device))
    sock = bind(args.host, args.port)
    port = sock.getsockname()[1]
    settings = ServerSettings(host=args.host, port=port, token=secrets.token_urlsafe(32), device=device,
                              max_upload_bytes=args.max_upload_mb * MB, result_ttl=args.result_ttl,
                              preload=args.preload, max_queue=args.max_queue,
                              max_queued_bytes=args.max_queued_mb * MB, max_result_bytes=args.max_results_mb * MB)
    app = create_app(settings, lambda: CupidPipeline.from_pretrained(args.model, device=device))
    token_file = Path(args.token_file).expanduser()
    write_token_file(token_file, settings.url, settings.token)
    warning = exposure_warning(settings)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    print(f"CUPID backend listening on {settings.url} (token in {token_file})", flush=True)
    server = _Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                    http=bounded_protocol(args.max_connections),
                                    timeout_keep_alive=args.idle_timeout))  # type: ignore[arg-type]
    try:
        server.run(sockets=[sock])
    finally:
        app.state.intake.shutdown(wait=False)
        app.state.jobs.close()
        try:
            token_file.unlink()
        except OSError:
            pass
    print("CUPID backend stopped", file=sys.stderr)
    return 0
