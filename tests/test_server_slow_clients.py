"""Slow and hostile clients on real sockets: a request head that trickles in, a body that trickles in,
a body declared 10^20 bytes long and never sent, a reader that stops reading, and 64 such sockets at
once, none of which may lock out a legitimate call. The app runs under uvicorn with the bounded
protocol, in this process on a free port (small limits, so each test takes seconds), and one test
runs a real `cupid serve`."""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any, Iterator

import pytest

from bench.probe_hostile import PART, legit_call, post_head, read_all
from test_server import Server, SteppedPipeline

TOKEN = "t" * 32
FAST = dict(max_connections=16, idle_timeout=5.0, header_timeout=1.0, body_timeout=1.0, min_body_rate=1024,
            write_timeout=1.0)


@contextlib.contextmanager
def serving(app: Any = None, **limits: Any) -> Iterator[Any]:
    """The CUPID app (or `app`) under uvicorn with `bounded_protocol`, on a free loopback port;
    yields the settings (their `port` is the one bound)."""
    import uvicorn

    from cupid.commands.serve import bind
    from cupid.server import ServerSettings, create_app
    from cupid.server.connections import bounded_protocol
    sock = bind("127.0.0.1", 0)
    settings = ServerSettings(host="127.0.0.1", port=sock.getsockname()[1], token=TOKEN, **{**FAST, **limits})
    own = app is None
    if own:
        app = create_app(settings, lambda: SteppedPipeline(step_s=0.0, steps=1))
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical", access_log=False, lifespan="off",
                                           http=bounded_protocol(settings),
                                           timeout_keep_alive=settings.idle_timeout))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        yield settings
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        if own:
            app.state.intake.shutdown(wait=False)
            app.state.jobs.close()


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _health(port: int, token: str = TOKEN) -> tuple[int, float]:
    """(status, seconds) of GET /v1/health on a fresh connection."""
    status, took = legit_call("127.0.0.1", port, token)
    return int(status) if status.isdigit() else 0, took


def _post_head(port: int, length: int | str, token: str = TOKEN) -> bytes:
    return post_head("127.0.0.1", port, token, str(length))


def test_a_trickled_request_head_is_cut_at_its_deadline():
    with serving() as s:
        with _connect(s.port) as sock:
            t0 = time.monotonic()
            sock.sendall(b"GET /v1/health HTTP/1.1\r\n")
            sock.settimeout(0.2)
            answer = b""
            for k in range(40):   # one header byte every 0.1 s: each one used to restart the idle timer
                try:
                    sock.sendall(b"X")
                    answer += sock.recv(4096)
                except (socket.timeout, TimeoutError):
                    continue
                except OSError:
                    break
                if answer:
                    break
            took = time.monotonic() - t0
        assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer, answer
        assert took < s.header_timeout + 1.0, took


@pytest.mark.parametrize("token", [TOKEN, "wrong-token"])
def test_a_huge_declared_body_never_sent_is_answered_at_once(token):
    from cupid.server.connections import LINGER_S
    with serving() as s:
        with _connect(s.port) as sock:
            t0 = time.monotonic()
            sock.sendall(_post_head(s.port, "99999999999999999999", token))
            sock.settimeout(5)
            answer = sock.recv(65536)
            took = time.monotonic() - t0
            answer += read_all(sock, timeout=LINGER_S + 3)
            closed = time.monotonic() - t0
        status = 413 if token == TOKEN else 401
        assert answer.startswith(f"HTTP/1.1 {status}".encode()) and b"connection: close" in answer, answer
        assert took < 1.0, took                  # answered at once, not after a body that never comes
        assert closed < LINGER_S + 2.0, closed   # and closed after the linger


def test_a_trickled_body_is_cut_below_the_minimum_rate():
    with serving() as s:
        with _connect(s.port) as sock:
            sock.sendall(_post_head(s.port, 100_000) + PART)
            t0 = time.monotonic()
            sock.settimeout(0.3)
            answer = b""
            while time.monotonic() - t0 < 6 and not answer:
                try:
                    sock.sendall(b"x" * 10)   # 30 bytes a second: far under 1024
                    answer = sock.recv(4096)
                except (socket.timeout, TimeoutError):
                    continue
                except OSError:
                    break
            took = time.monotonic() - t0
        assert answer.startswith(b"HTTP/1.1 408") and b"too slowly" in answer, answer
        assert took < 2 * s.body_timeout + 1.0, took


def test_a_reader_that_stops_reading_is_dropped_after_the_write_timeout():
    ended: list[float] = []

    async def endless(scope: dict, receive: Any, send: Any) -> None:
        """A large answer (256 MB in 1 MB pieces); records when its sending stopped."""
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(256 << 20).encode())]})
        chunk = b"z" * (1 << 20)
        for k in range(256):
            await send({"type": "http.response.body", "body": chunk, "more_body": k < 255})
        ended.append(time.monotonic())

    with serving(endless) as s:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", s.port))
        t0 = time.monotonic()
        sock.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{s.port}\r\n\r\n".encode())
        deadline = t0 + 15
        while not ended and time.monotonic() < deadline:   # this client reads nothing
            time.sleep(0.05)
        sock.close()
        assert ended, "the server still waits on a reader that stopped reading"
        assert ended[0] - t0 < s.write_timeout + 5.0


def test_a_refusal_does_not_wait_for_the_body_yet_an_uploader_reads_it():
    """A client still sending a 10 MB upload with a wrong token reads the 401 (not a reset), and the
    answer was sent before the body arrived."""
    with serving() as s:
        with _connect(s.port) as sock:
            sock.sendall(_post_head(s.port, 10 << 20, "wrong-token"))
            sock.settimeout(5)
            first = sock.recv(4096)   # before a byte of the body was sent
            sent = 0
            with contextlib.suppress(OSError):
                while sent < 10 << 20:
                    sent += sock.send(b"y" * 65536)
            rest = read_all(sock, timeout=5)
        assert first.startswith(b"HTTP/1.1 401") and b"wrong or missing token" in first + rest, first


def test_the_cap_answers_busy_only_when_every_slot_works():
    import asyncio

    async def slow(scope: dict, receive: Any, send: Any) -> None:
        await asyncio.sleep(2.0)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    with serving(slow, max_connections=4) as s:
        working = [_connect(s.port) for _ in range(4)]
        for sock in working:
            sock.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{s.port}\r\nConnection: close\r\n\r\n".encode())
        time.sleep(0.3)
        with _connect(s.port) as extra:
            t0 = time.monotonic()
            answer = read_all(extra, timeout=5)
        assert answer.startswith(b"HTTP/1.1 503") and b'"busy"' in answer and time.monotonic() - t0 < 1.0
        assert all(read_all(sock, timeout=5).startswith(b"HTTP/1.1 200") for sock in working)  # none was taken
        for sock in working:
            sock.close()


def test_sixty_four_slow_sockets_do_not_lock_out_a_legitimate_call(tiny_model, tmp_path):
    """Against a real `cupid serve` at its default 64 connections: 64 sockets that send half a request
    line, a head one byte at a time, or a body one byte at a time; every legitimate call gets through,
    at once, while they are held, and the slow ones are answered 408 or closed."""
    s = Server(tiny_model, tmp_path, "--header-timeout", "2", "--body-timeout", "2", "--idle-timeout", "30")
    try:
        port, token = s.port, s.client.token
        slow = []
        for k in range(64):
            sock = _connect(port)
            if k % 3 == 0:
                sock.sendall(b"GET /v1/hea")
            elif k % 3 == 1:
                sock.sendall(b"GET /v1/health HTTP/1.1\r\nX-Slow: ")
            else:
                sock.sendall(_post_head(port, 1 << 20, token) + PART)
            slow.append(sock)
        stop = threading.Event()

        def trickle() -> None:
            while not stop.wait(0.5):
                for sock in slow:
                    with contextlib.suppress(OSError):
                        sock.send(b"x")

        feeder = threading.Thread(target=trickle, daemon=True)
        feeder.start()
        try:
            calls = []
            for _ in range(6):
                calls.append(_health(port, token))
                time.sleep(0.3)
        finally:
            stop.set()
            feeder.join()
        print("legitimate calls (status, s) while 64 slow sockets are held:", calls)
        assert all(status == 200 for status, _ in calls), calls
        assert max(t for _, t in calls) < 1.0, calls
        answers = [read_all(sock, timeout=8) for sock in slow]
        for sock in slow:
            sock.close()
        assert all(a == b"" or a.startswith(b"HTTP/1.1 408") or a.startswith(b"HTTP/1.1 503") for a in answers), \
            [a[:60] for a in answers if a][:5]
        assert sum(a.startswith(b"HTTP/1.1 408") for a in answers) >= 32, [a[:40] for a in answers]
        assert s.client.health()["version"]
    finally:
        s.stop()
