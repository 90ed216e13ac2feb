"""Probe a running `cupid serve` as a hostile client would (issue #25), and print what a legitimate
client sees meanwhile. Standard library only; nothing is changed on the server but a few refused
requests.

Cases:
  slow     N sockets (default 64, the default --max-connections) that send half a request line, a
           request head one byte at a time, or a request body one byte at a time (the last with the
           token, so it reaches the upload), held for --hold seconds; a legitimate GET /v1/health
           every 0.5 s prints its status and latency; then how each slow socket ended (408, 503,
           closed silently, or still open).
  huge     a POST declaring `Content-Length: 99999999999999999999` that sends nothing, with and
           without the token: how long until an answer (it used to be never).
  reader   (with --result JOB) GET that job's result zip and stop reading: how long the server keeps
           the connection before dropping it (--write-timeout); needs a result larger than the
           kernel's socket buffers to mean anything.

Run:  python bench/probe_hostile.py [--token-file ~/.cupid/server.json] [--slow 64] [--hold 15] [--cases slow,huge]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit


def _connect(host: str, port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect((host, port))
    return sock


def read_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """What the server sends until it closes (or `timeout`)."""
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _status(answer: bytes) -> str:
    return answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/1.1 ") else ("closed" if not answer else "?")


def legit_call(host: str, port: int, token: str) -> tuple[str, float]:
    t0 = time.monotonic()
    try:
        with _connect(host, port) as s:
            s.sendall(f"GET /v1/health HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
                      f"Connection: close\r\n\r\n".encode())
            answer = read_all(s, 30)
    except OSError as exc:
        return f"error {type(exc).__name__}", time.monotonic() - t0
    return _status(answer), time.monotonic() - t0


def post_head(host: str, port: int, token: str, length: str) -> bytes:
    return (f"POST /v1/jobs HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {length}\r\n\r\n").encode()


PART = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'


def probe_slow(host: str, port: int, token: str, n: int, hold: float) -> None:
    kinds = ["half request line", "head byte by byte", "body byte by byte"]
    socks: list[tuple[str, socket.socket, float]] = []
    for k in range(n):
        kind = kinds[k % 3]
        try:
            sock = _connect(host, port)
            if kind == kinds[0]:
                sock.sendall(b"GET /v1/hea")
            elif kind == kinds[1]:
                sock.sendall(b"GET /v1/health HTTP/1.1\r\nX-Slow: ")
            else:
                sock.sendall(post_head(host, port, token, str(1 << 20)) + PART)
        except OSError as exc:
            print(f"slow socket {k}: {type(exc).__name__}")
            continue
        socks.append((kind, sock, time.monotonic()))
    ended: dict[int, tuple[str, float]] = {}
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(1.0):
            for i, (_, sock, t0) in enumerate(socks):
                if i in ended:
                    continue
                try:
                    sock.send(b"x")
                    sock.setblocking(False)
                    try:
                        answer = sock.recv(4096)
                    finally:
                        sock.setblocking(True)
                    ended[i] = (_status(answer), time.monotonic() - t0)
                except BlockingIOError:
                    pass
                except OSError:
                    ended[i] = ("reset", time.monotonic() - t0)

    feeder = threading.Thread(target=trickle, daemon=True)
    feeder.start()
    print(f"{len(socks)} slow sockets held for {hold:.0f} s; legitimate GET /v1/health meanwhile:")
    t_start = time.monotonic()
    while time.monotonic() - t_start < hold:
        status, took = legit_call(host, port, token)
        print(f"  t={time.monotonic() - t_start:5.1f} s  status {status}  {took * 1000:7.1f} ms", flush=True)
        time.sleep(0.5)
    stop.set()
    feeder.join()
    for kind in kinds:
        mine = [i for i, (k, _, _) in enumerate(socks) if k == kind]
        outcomes: dict[str, list[float]] = {}
        for i in mine:
            status, at = ended.get(i, ("still open", hold))
            outcomes.setdefault(status, []).append(at)
        told = (f"{len(v)} {k} (after {min(v):.1f}-{max(v):.1f} s)" for k, v in outcomes.items())
        print(f"  {kind}: " + ", ".join(told))
    for _, sock, _ in socks:
        sock.close()


def probe_huge(host: str, port: int, token: str) -> None:
    for who, tok in (("with the token", token), ("without it", "wrong")):
        t0 = time.monotonic()
        with _connect(host, port) as sock:
            sock.sendall(post_head(host, port, tok, "99999999999999999999"))
            sock.settimeout(30)
            try:
                answer = sock.recv(4096)
            except OSError:
                answer = b""
        print(f"Content-Length 10^20, nothing sent, {who}: {_status(answer) if answer else 'no answer'} "
              f"after {time.monotonic() - t0:.2f} s")


def probe_reader(host: str, port: int, token: str, job: str, wait: float) -> None:
    sock = _connect(host, port, rcvbuf=4096)
    sock.sendall(f"GET /v1/jobs/{job}/result HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
                 f"\r\n".encode())
    time.sleep(wait)   # reading nothing
    t0 = time.monotonic()
    data = read_all(sock, 5)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length")), -1)
    verdict = "dropped by the server" if len(body) < length else "kept open (whole answer still delivered)"
    print(f"stopped reader, after {wait:.0f} s: {verdict}: {len(body)} of {length} bytes "
          f"({time.monotonic() - t0:.1f} s to read)")
    sock.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--token-file", default=str(Path.home() / ".cupid" / "server.json"))
    ap.add_argument("--slow", type=int, default=64, help="slow sockets (default 64)")
    ap.add_argument("--hold", type=float, default=15.0, help="seconds to hold them (default 15)")
    ap.add_argument("--cases", default="slow,huge", help="comma-separated: slow, huge, reader")
    ap.add_argument("--result", default="", help="reader: a finished job's id")
    ap.add_argument("--reader-wait", type=float, default=30.0)
    args = ap.parse_args()
    info = json.loads(Path(args.token_file).expanduser().read_text())
    url = urlsplit(info["url"])
    host, port, token = url.hostname, url.port, info["token"]
    cases = args.cases.split(",")
    if "huge" in cases:
        probe_huge(host, port, token)
    if "slow" in cases:
        probe_slow(host, port, token, args.slow, args.hold)
    if "reader" in cases and args.result:
        probe_reader(host, port, token, args.result, args.reader_wait)


if __name__ == "__main__":
    main()
