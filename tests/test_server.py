"""`cupid serve` as a user's machine runs it: a real server process with the tiny model on loopback."""
from __future__ import annotations

import http.client
import json
import os
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cupid.tiny import make_tiny_model
from cupid_blender.client import BackendError, BackendUnavailable, CupidClient

REPO = Path(__file__).resolve().parents[1]
PHOTO = (REPO / "examples" / "monkey.png").read_bytes()


class Server:
    """A `python -m cupid serve` subprocess; stops by itself at the end of the module."""

    def __init__(self, model: Path, tmp: Path, *extra: str):
        self.token_file = tmp / f"token-{time.monotonic_ns()}.json"
        env = {**os.environ, "PYTHONPATH": str(REPO / "backend"), "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "cupid", "serve", "--port", "0", "--token-file",
                                      str(self.token_file), "--model", str(model), "--device", "cpu", *extra],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        while not self.token_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {self.proc.stdout.read() if self.proc.stdout else ''}")
            time.sleep(0.1)
        self.client = CupidClient.from_token_file(self.token_file, timeout=30)
        self.port = int(self.client.url.rsplit(":", 1)[1])

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "m")


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    s = Server(model, tmp_path_factory.mktemp("srv"), "--max-upload-mb", "2")
    yield s
    s.stop()


def raw(server: Server, method: str, path: str, headers: dict, body: bytes | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for k, v in headers.items():
        conn.putheader(k, v)
    if body is not None:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, (json.loads(data) if data[:1] in (b"{", b"[") else {})


def test_token_file_is_private_and_complete(server):
    mode = stat.S_IMODE(server.token_file.stat().st_mode)
    assert mode == 0o600
    data = json.loads(server.token_file.read_text())
    assert data["url"] == f"http://127.0.0.1:{server.port}" and len(data["token"]) >= 32
    h = server.client.health()
    assert h["version"] and h["device"] == "cpu" and h["queue_length"] == 0


def test_auth_host_and_origin(server):
    good = {"Host": f"127.0.0.1:{server.port}", "Authorization": f"Bearer {server.client.token}"}
    assert raw(server, "GET", "/v1/health", good)[0] == 200
    assert raw(server, "GET", "/v1/health", {**good, "Host": f"localhost:{server.port}"})[0] == 200
    status, body = raw(server, "GET", "/v1/health", {"Host": good["Host"]})
    assert status == 401 and body["error"]["code"] == "unauthorized"
    assert raw(server, "GET", "/v1/health", {**good, "Authorization": "Bearer nope"})[0] == 401
    status, body = raw(server, "GET", "/v1/health", {**good, "Host": f"evil.example:{server.port}"})
    assert status == 403 and body["error"]["code"] == "forbidden_host"
    status, body = raw(server, "GET", "/v1/health", {**good, "Origin": "http://evil.example"})
    assert status == 403 and body["error"]["code"] == "forbidden_origin"
    status, body = raw(server, "GET", "/openapi.json", good)
    assert status == 200 and {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/result",
                              "/v1/health"} <= set(body["paths"])


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_header(w: int, h: int) -> bytes:
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b""))


def _png(img: Image.Image) -> bytes:
    import io
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("name, data, status, message", [
    ("big.png", os.urandom(3 * 1024 * 1024), 413, "larger than"),
    ("cut.png", PHOTO[: len(PHOTO) // 3], 422, "not a readable image"),
    ("notes.png", b"dear diary\n" * 20, 422, "not a readable image"),
    ("one.png", _png(Image.new("RGBA", (1, 1), (1, 2, 3, 255))), 422, "at least"),
    ("bomb.png", _bomb_header(40000, 40000), 422, "too large"),
])
def test_bad_uploads_are_refused_and_the_server_lives(server, name, data, status, message):
    with pytest.raises(BackendError) as err:
        server.client.submit(data, name)
    assert err.value.status == status and message in err.value.message
    assert server.client.health()["version"]


def test_twenty_jobs_at_once_finish_in_order_and_differ_by_seed(server, tmp_path):
    ids: dict[int, str] = {}

    def submit(seed: int) -> None:
        ids[seed] = server.client.submit(PHOTO, "monkey.png", seed=seed, steps=1)

    threads = [threading.Thread(target=submit, args=(s,)) for s in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    finals = {s: server.client.wait(j, poll=0.2, timeout=600) for s, j in ids.items()}
    assert all(st["state"] == "done" for st in finals.values()), finals
    # the worker ran them in the order the server accepted them
    order = sorted(finals, key=lambda s: finals[s]["number"])
    assert [finals[s]["number"] for s in order] == sorted(finals[s]["number"] for s in order)
    meshes = set()
    for s, j in ids.items():
        out = server.client.result(j, tmp_path / str(s))
        scene = json.loads((out / "scene.json").read_text())
        assert {"input.png", "overlay.png", scene["objects"][0]["mesh"], scene["objects"][0]["glb"]} <= \
            {p.name for p in out.iterdir()}
        meshes.add((out / scene["objects"][0]["mesh"]).read_bytes())
    assert len(meshes) == 20


def test_cancel_a_running_job_then_the_next_runs(server):
    job = server.client.submit(PHOTO, "monkey.png", seed=1, steps=500)
    deadline = time.monotonic() + 60
    while server.client.status(job)["stage"] not in ("structure", "latent"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    t0 = time.monotonic()
    server.client.cancel(job)
    st = server.client.wait(job, poll=0.05, timeout=60)
    assert st["state"] == "cancelled" and time.monotonic() - t0 < 5.0  # 500 steps would take far longer
    nxt = server.client.submit(PHOTO, "monkey.png", seed=2, steps=1)
    assert server.client.wait(nxt, poll=0.2, timeout=120)["state"] == "done"
    with pytest.raises(BackendError) as err:
        server.client.result(job, "/nonexistent-never-written")
    assert err.value.code == "not_ready"


def test_fifty_jobs_keep_memory_flat(server):
    rss = []
    for i in range(50):
        j = server.client.submit(PHOTO, "monkey.png", seed=100 + i, steps=1)
        assert server.client.wait(j, poll=0.1, timeout=120)["state"] == "done"
        server.client.result(j, Path(os.environ.get("TMPDIR", "/tmp")) / f"cupid-rss-{os.getpid()}")
        rss.append(server.rss_kb())
    assert rss[-1] <= 1.10 * rss[4], rss


def test_kill_mid_job_then_restart(model, tmp_path):
    s = Server(model, tmp_path)
    job = s.client.submit(PHOTO, "monkey.png", seed=3, steps=500)
    while s.client.status(job)["state"] != "running":
        time.sleep(0.05)
    s.stop(signal.SIGKILL)
    with pytest.raises(BackendUnavailable, match="not running"):
        s.client.wait(job, poll=0.05, timeout=30)
    s2 = Server(model, tmp_path)
    try:
        j = s2.client.submit(PHOTO, "monkey.png", seed=4, steps=1)
        assert s2.client.wait(j, poll=0.2, timeout=120)["state"] == "done"
    finally:
        s2.stop()
    assert not s2.token_file.exists()  # a clean stop removes its token file
