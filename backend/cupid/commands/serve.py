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
import threading
from pathlib import Path
from typing import Any, Callable

from .. import config
from ..errors import CliError
from .device import (add_device_arguments, add_model_argument, add_point_map_argument, announce_device,
                     announce_model, point_map_option)

MB = 1024 * 1024
NAME = "serve"
HELP = "run the CUPID service the Blender extension talks to (loopback only by default)"
DEFAULT_PORT = 8765  # the add-on's default remote URL
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port (default {DEFAULT_PORT}, the Blender add-on's default; 0: pick a free one)")
    p.add_argument("--token-file", default=str(Path.home() / ".cupid" / "server.json"),
                   help="where {url, token} is kept (mode 0600); the token of an existing file is reused, so "
                        "clients stay set up across restarts (with --port 0 the file is removed at exit)")
    add_model_argument(p)
    add_device_arguments(p)
    add_point_map_argument(p)
    p.add_argument("--max-upload-mb", type=int, default=64, help="largest accepted upload")
    p.add_argument("--result-ttl", type=float, default=3600.0, help="seconds a finished result is kept")
    p.add_argument("--preload", action="store_true", help="load the model at start, not at the first job")
    p.add_argument("--max-queue", type=int, default=16,
                   help="jobs queued or running at once; one more is answered 503 busy (default 16)")
    p.add_argument("--max-queued-mb", type=int, default=1024,
                   help="disk the waiting jobs' decoded photos may take; past it, 503 busy (default 1024)")
    p.add_argument("--max-results-mb", type=int, default=2048,
                   help="disk kept finished results may take; past it the oldest unfetched go (default 2048)")
    p.add_argument("--max-kept-mb", type=int, default=512,
                   help="memory the stage 1s kept for refines may take; past it the least recently used go, and "
                        "a refine of theirs asks to run the reconstruction again (default 512)")
    p.add_argument("--max-objects", type=int, default=config.MAX_OBJECTS,
                   help=f"objects a scene's label image may hold; more: 422 (default {config.MAX_OBJECTS})")
    p.add_argument("--max-prompts", type=int, default=config.MAX_PROMPTS,
                   help=f"points + boxes one request may pick objects with; more: 422 (default {config.MAX_PROMPTS})")
    p.add_argument("--max-connections", type=int, default=64, help="open connections at once (default 64)")
    p.add_argument("--idle-timeout", type=float, default=5.0,
                   help="seconds a connection may stay open without sending a request (default 5)")
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a request's line and headers may take to arrive; then 408 (default 10)")
    p.add_argument("--body-timeout", type=float, default=10.0,
                   help="a request body must bring --min-body-rate in every window of this many seconds; "
                        "then 408 (default 10)")
    p.add_argument("--min-body-rate", type=int, default=1024,
                   help="bytes a second an upload must bring at least (default 1024)")
    p.add_argument("--write-timeout", type=float, default=20.0,
                   help="seconds an answer may wait on a client that stopped reading; then the connection "
                        "is dropped (default 20)")
    p.add_argument("--watch-stdin", action="store_true",
                   help="shut down cleanly (temporary files removed) when standard input closes: the program that "
                        "started the service with a pipe (the Blender add-on) is gone, even killed or crashed")
    from .serve_ray import add_ray_arguments
    add_ray_arguments(p)


def connection_limits(args: argparse.Namespace) -> dict:
    """The per-connection bounds given on the command line, as ServerSettings fields."""
    return {k: getattr(args, k) for k in ("max_connections", "idle_timeout", "header_timeout", "body_timeout",
                                          "min_body_rate", "write_timeout")}


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
    directory it lives in; `posix=False` runs that branch on any system. The temporary file is always
    a new one (O_EXCL; O_NOFOLLOW where there is one, and O_EXCL alone refuses an existing name,
    symlink included, on Windows too): a link planted at its name is never written through."""
    make_private_dirs(path.parent)
    fd, tmp = _new_private_file(path)
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


def _new_private_file(path: Path) -> tuple[int, Path]:
    """A file created anew beside `path` (0600, never through a link): `.NAME.PID.tmp`, or when
    something already has that name, a random one."""
    flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0))
    names = [f".{path.name}.{os.getpid()}.tmp"] + [f".{path.name}.{secrets.token_hex(8)}.tmp" for _ in range(8)]
    for name in names:
        tmp = path.with_name(name)
        try:
            return os.open(tmp, flags, 0o600), tmp
        except FileExistsError:
            continue
    raise CliError(f"cannot create a temporary file beside {path}: every name tried exists")


def existing_token(path: Path) -> str | None:
    """The token of a token file this user alone can read (a stable token across restarts)."""
    try:
        st = path.stat()
        if hasattr(os, "getuid") and (st.st_uid != os.getuid() or st.st_mode & 0o077):
            return None
        token = json.loads(path.read_text()).get("token")
    except (OSError, ValueError, AttributeError):
        return None
    return token if isinstance(token, str) and len(token) >= 32 else None


def reachable_address() -> str:
    """This machine's address on its network: the source address of the route out (a UDP
    "connect" sends nothing), else what its host name resolves to."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never contacted
            return probe.getsockname()[0]
        except OSError:
            pass
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


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


def watch_stdin(on_eof: Callable[[], None], stream: Any = None) -> threading.Thread:
    """Call `on_eof` once `stream` (standard input) reaches its end: the parent holding the pipe's other
    end has closed it or died (the system closes a dead process's pipes, on Windows as on POSIX), so
    a service it started does not outlive it holding the model's memory. Anything written is ignored."""
    stream = stream if stream is not None else getattr(sys.stdin, "buffer", sys.stdin)

    def watch() -> None:
        try:
            while stream.read(4096):
                pass
        except (OSError, ValueError):   # a closed or unusable stdin: the parent is gone as well
            pass
        on_eof()

    thread = threading.Thread(target=watch, name="cupid-stdin-watch", daemon=True)
    thread.start()
    return thread


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

    from ..pipeline import CupidPipeline
    from ..server import ServerSettings, create_app
    from ..server.connections import bounded_protocol

    for flag in ("max_queue", "max_queued_mb", "max_results_mb", "max_connections", "max_upload_mb", "max_objects",
                 "max_prompts", "max_kept_mb"):
        if getattr(args, flag) < 1:
            raise CliError(f"--{flag.replace('_', '-')} must be at least 1")
    for flag in ("idle_timeout", "header_timeout", "body_timeout", "min_body_rate", "write_timeout"):
        if getattr(args, flag) <= 0:
            raise CliError(f"--{flag.replace('_', '-')} must be positive")
    args.model = announce_model(args.model)
    from .serve_ray import TokenFile, run_if_ray
    if (code := run_if_ray(args, TokenFile(bind, existing_token, write_token_file))) is not None:
        return code
    device, dtype = announce_device(args.device, args.dtype)
    sock = bind(args.host, args.port)
    port = sock.getsockname()[1]
    token_file = Path(args.token_file).expanduser()
    token = existing_token(token_file)
    keep_token_file = token is not None or args.port != 0  # a fixed address keeps its token for the next start
    settings = ServerSettings(host=args.host, port=port, token=token or secrets.token_urlsafe(32), device=device,
                              dtype=dtype, max_upload_bytes=args.max_upload_mb * MB, result_ttl=args.result_ttl,
                              preload=args.preload, max_queue=args.max_queue,
                              max_queued_bytes=args.max_queued_mb * MB, max_result_bytes=args.max_results_mb * MB,
                              max_objects=args.max_objects, max_prompts=args.max_prompts,
                              max_kept_bytes=args.max_kept_mb * MB, **connection_limits(args))
    app = create_app(settings, lambda: CupidPipeline.from_pretrained(args.model, device=device, dtype=dtype,
                                                                     **point_map_option(args)))
    wildcard = args.host in WILDCARD_HOSTS
    local_url = f"http://{'[::1]' if args.host == '::' else '127.0.0.1'}:{port}" if wildcard else settings.url
    write_token_file(token_file, local_url, settings.token)
    print(f"CUPID backend listening on {local_url} (token in {token_file})", flush=True)
    if args.host not in LOOPBACK_HOSTS:
        public = f"http://{reachable_address()}:{port}" if wildcard else settings.url
        print(f"reachable from other machines at {public} with the token in {token_file}", flush=True)
        print("warning: over the network the token and the photos travel unencrypted; outside a trusted LAN "
              f"use an SSH tunnel (ssh -N -L {port}:127.0.0.1:{port} USER@THIS-MACHINE, then "
              f"http://127.0.0.1:{port} in Blender) or a TLS proxy in front of a loopback-only server",
              file=sys.stderr, flush=True)
    server = _Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                    http=bounded_protocol(settings),
                                    timeout_keep_alive=settings.idle_timeout))  # type: ignore[arg-type]
    if args.watch_stdin:
        def parent_gone() -> None:
            print("CUPID backend: standard input closed (the program that started it is gone): stopping",
                  file=sys.stderr, flush=True)
            server.should_exit = True
        watch_stdin(parent_gone)
    try:
        server.run(sockets=[sock])
    finally:
        app.state.intake.shutdown(wait=False)
        app.state.jobs.close()
        if not keep_token_file:
            try:
                token_file.unlink()
            except OSError:
                pass
    print("CUPID backend stopped", file=sys.stderr)
    return 0
