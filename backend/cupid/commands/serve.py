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

from .. import config
from ..errors import CliError

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


def write_token_file(path: Path, url: str, token: str) -> None:
    """Atomically write {url, token}, readable by this user only (0600 from creation on)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, json.dumps({"url": url, "token": token}).encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


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

    device = str(resolve_device(args.device))
    sock = bind(args.host, args.port)
    port = sock.getsockname()[1]
    settings = ServerSettings(host=args.host, port=port, token=secrets.token_urlsafe(32), device=device,
                              max_upload_bytes=args.max_upload_mb * 1024 * 1024, result_ttl=args.result_ttl,
                              preload=args.preload)
    app = create_app(settings, lambda: CupidPipeline.from_pretrained(args.model, device=device))
    token_file = Path(args.token_file).expanduser()
    write_token_file(token_file, settings.url, settings.token)
    print(f"CUPID backend listening on {settings.url} (token in {token_file})", flush=True)
    server = _Server(uvicorn.Config(app, log_level="warning", access_log=False))
    try:
        server.run(sockets=[sock])
    finally:
        app.state.jobs.close()
        try:
            token_file.unlink()
        except OSError:
            pass
    print("CUPID backend stopped", file=sys.stderr)
    return 0
