"""`cupid serve` as a user's machine runs it: a real server process with the tiny model on loopback."""
from __future__ import annotations

import http.client
import io
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bad_images import png_header_only

from cupid.server import ServerSettings
from cupid.tiny import make_tiny_model
from cupid_blender.client import BACKEND_RESTARTED, BackendError, BackendUnavailable, CupidClient

REPO = Path(__file__).resolve().parents[1]
PHOTO = (REPO / "examples" / "monkey.png").read_bytes()


class Server:
    """A `python -m cupid serve` subprocess; stops by itself at the end of the module."""

    def __init__(self, model: Path, tmp: Path, *extra: str, token_file: Path | None = None,
                 wrap: tuple[str, ...] = (), env: dict | None = None):
        self.token_file = token_file or tmp / f"token-{time.monotonic_ns()}.json"
        before = self.token_file.read_text() if self.token_file.exists() else None
        env = {**os.environ, "PYTHONPATH": str(REPO / "backend"), "HF_HUB_OFFLINE": "1", **(env or {})}
        self.proc = subprocess.Popen([*wrap, sys.executable, "-m", "cupid", "serve", "--port", "0", "--token-file",
                                      str(self.token_file), "--model", str(model), "--device", "cpu", *extra],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        # a token file left by a killed server is replaced, not reused
        while not self.token_file.exists() or self.token_file.read_text() == before:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {self.proc.stdout.read() if self.proc.stdout else ''}")
            time.sleep(0.1)
        self.client = CupidClient.from_token_file(self.token_file, timeout=30)
        self.port = int(self.client.url.rsplit(":", 1)[1])

    def workdir(self) -> Path:
        """The server's private directory (inputs/ and results/)."""
        own = [d for d in Path(tempfile.gettempdir()).glob("cupid-serve-*")
               if (d / "owner.pid").is_file() and (d / "owner.pid").read_text() == str(self.proc.pid)]
        assert len(own) == 1, own
        return own[0]

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
    s = Server(model, tmp_path_factory.mktemp("srv"), "--max-upload-mb", "2", "--max-queue", "32")
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
    assert h["version"] and h["device"] == "cpu" and h["queue_length"] == 0 and h["model_error"] is None


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


def test_framework_errors_use_the_error_envelope(server):
    good = {"Host": f"127.0.0.1:{server.port}", "Authorization": f"Bearer {server.client.token}"}
    status, body = raw(server, "GET", "/v1/nowhere", good)
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = raw(server, "PUT", "/v1/health", good, b"")
    assert status == 405 and body["error"]["code"] == "method_not_allowed"
    status, body = raw(server, "GET", "/v1/jobs/0123456789abcdef", good)
    assert status == 404 and body["error"]["code"] == "not_found"
    # no image field at all, then a seed that is not a number: clear 422s, not FastAPI's "detail" lists
    boundary = "b0undary"
    form = (f'--{boundary}\r\nContent-Disposition: form-data; name="seed"\r\n\r\nabc\r\n--{boundary}--\r\n').encode()
    status, body = raw(server, "POST", "/v1/jobs",
                       {**good, "Content-Type": f"multipart/form-data; boundary={boundary}"}, form)
    assert status == 422 and body["error"]["code"] == "bad_input"
    assert "'image' is required" in body["error"]["message"]
    with pytest.raises(BackendError) as err:
        server.client.submit(PHOTO, "monkey.png", mode="panorama")
    assert err.value.status == 422 and "mode" in err.value.message
    assert raw(server, "GET", "/docs", good)[0] == 404  # no CDN-backed docs page; /openapi.json only


def test_chunked_upload_over_the_limit_is_413(server):
    """A body with no Content-Length is counted as it streams in."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    boundary = "chunky"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n'
            f"Content-Type: image/png\r\n\r\n").encode()
    blob = os.urandom(256 * 1024)
    chunks = [head] + [blob] * 12 + [f"\r\n--{boundary}--\r\n".encode()]  # 3 MB > the 2 MB cap
    conn.request("POST", "/v1/jobs", body=iter(chunks), encode_chunked=True,
                 headers={"Authorization": f"Bearer {server.client.token}", "Transfer-Encoding": "chunked",
                          "Content-Type": f"multipart/form-data; boundary={boundary}"})
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    assert resp.status == 413 and body["error"]["code"] == "upload_too_large", body
    assert "larger than 2 MB" in body["error"]["message"]
    assert server.client.health()["version"]


def test_a_failing_job_leaves_the_worker_serving(server):
    # scene mode without masks needs segment-anything, which the test install lacks: the job fails
    # with the pipeline's own code and message, and the next job runs normally
    bad = server.client.submit(PHOTO, "monkey.png", mode="scene", steps=1)
    st = server.client.wait(bad, poll=0.1, timeout=120)
    assert st["state"] == "failed" and st["error"]["code"] and st["error"]["message"], st
    assert st["error"]["code"] != "internal_error"
    good = server.client.submit(PHOTO, "monkey.png", seed=5, steps=1)
    assert server.client.wait(good, poll=0.1, timeout=120)["state"] == "done"


@pytest.mark.parametrize("bound, host, ok", [
    ("127.0.0.1", "127.0.0.1:8000", True), ("127.0.0.1", "localhost:8000", True),
    ("127.0.0.1", "[::1]:8000", True), ("127.0.0.1", "127.0.0.1:8001", False),
    ("127.0.0.1", "127.0.0.1", False), ("127.0.0.1", "evil.example:8000", False),
    ("127.0.0.1", "192.168.1.5:8000", False), ("::1", "[::1]:8000", True), ("::1", "::1:8000", False),
    ("0.0.0.0", "192.168.1.5:8000", True), ("0.0.0.0", "localhost:8000", True),
    ("0.0.0.0", "[fe80::1]:8000", True), ("0.0.0.0", "rebind.evil.example:8000", False),
    ("0.0.0.0", "192.168.1.5:9", False), ("192.168.1.5", "192.168.1.5:8000", True),
    ("192.168.1.5", "10.0.0.1:8000", False), ("192.168.1.5", "localhost:8000", False),
    ("127.0.0.1", "127.0.0.1:8000:1", False), ("127.0.0.1", ":8000", False), ("127.0.0.1", "", False),
])
def test_host_rules_per_bind_address(bound, host, ok):
    assert ServerSettings(host=bound, port=8000, token="t").host_allowed(host) is ok


def test_origin_must_be_the_requested_server():
    s = ServerSettings(host="127.0.0.1", port=8000, token="t")
    assert s.origin_allowed("http://127.0.0.1:8000", "127.0.0.1:8000")
    assert s.origin_allowed("http://localhost:8000", "localhost:8000")
    assert not s.origin_allowed("http://localhost:8000", "127.0.0.1:8000")  # another origin, same machine
    assert not s.origin_allowed("null", "127.0.0.1:8000")
    assert not s.origin_allowed("https://127.0.0.1:8000", "127.0.0.1:8000")
    assert not s.origin_allowed("http://evil.example:8000", "evil.example:8000")


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
    ("bomb.png", png_header_only(40000, 40000), 422, "too large"),
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


def test_kill_mid_job_then_restart_is_told_as_a_restart(model, tmp_path):
    s = Server(model, tmp_path)
    first_run = s.client.health()["instance"]
    job = s.client.submit(PHOTO, "monkey.png", seed=3, steps=500)
    while s.client.status(job)["state"] != "running":
        time.sleep(0.05)
    own = s.workdir()
    s.stop(signal.SIGKILL)
    assert s.token_file.exists()  # a SIGKILLed server cannot remove its token file
    with pytest.raises(BackendUnavailable, match="not running"):
        s.client.wait(job, poll=0.05, timeout=30)
    s2 = Server(model, tmp_path, token_file=s.token_file)  # the next start replaces the stale file
    try:
        assert json.loads(s.token_file.read_text())["token"] == s2.client.token != s.client.token
        # the first client follows the token file to the new run, which never heard of its job
        with pytest.raises(BackendError) as err:
            s.client.wait(job, poll=0.05, timeout=30)
        assert err.value.code == BACKEND_RESTARTED and "restarted" in err.value.message
        assert "run it again" in err.value.message
        assert s.client.instance == s2.client.health()["instance"] != first_run
        j = s2.client.submit(PHOTO, "monkey.png", seed=4, steps=1)
        assert s2.client.wait(j, poll=0.2, timeout=120)["state"] == "done"
        assert not own.exists()  # the killed server's directory was swept by the new one
    finally:
        s2.stop()
    assert not s2.token_file.exists()  # a clean stop removes its token file


# ------------------------------------------------------------------ the job queue with a timed pipeline
# A stand-in pipeline whose steps take a known time, for what needs controlled timing (cancelling
# between steps, queue order against the clock). It honours the pipeline interface for real: it
# reports progress per step, checks should_cancel before each step and writes a real bundle.

class SteppedPipeline:
    def __init__(self, step_s: float = 0.02, steps: int = 10):
        self.step_s, self.default_steps = step_s, steps
        self.log: list[tuple[int, int]] = []  # (seed, step) as they ran

    def reconstruct(self, image, *, mask=None, mode="object", seed=0, steps=None, out_dir, progress=None,
                    should_cancel=None):
        from cupid.errors import Cancelled
        n = steps or self.default_steps
        for k in range(n):
            if should_cancel is not None and should_cancel():
                raise Cancelled("cancelled")
            time.sleep(self.step_s)
            self.log.append((seed, k))
            if progress is not None:
                progress("sampling", (k + 1) / n)
        out = Path(out_dir)
        out.mkdir(parents=True)
        (out / "scene.json").write_text(json.dumps({"schema": "cupid.scene/1", "seed": seed}))
        np.save(out / "photo.npy", image)
        return out


def _inputs(photo: bytes = PHOTO):
    from cupid.server.inputs import decode_inputs
    return decode_inputs(photo, None, "object")


def _settle(jobs, ids, timeout=30.0):
    deadline = time.monotonic() + timeout
    while any(jobs.get(i).state in ("queued", "running") for i in ids):
        assert time.monotonic() < deadline, [jobs.get(i).public() for i in ids]
        time.sleep(0.01)


def test_cancel_stops_within_one_step_and_a_queued_job_never_runs():
    from cupid.server import JobQueue
    pipe = SteppedPipeline(step_s=0.05, steps=200)
    jobs = JobQueue(lambda: pipe)
    try:
        running = jobs.submit(_inputs(), "object", 1, 0)
        queued = jobs.submit(_inputs(), "object", 2, 0)
        after = jobs.submit(_inputs(), "object", 3, 5)
        deadline = time.monotonic() + 30
        while sum(1 for s, _ in pipe.log if s == 1) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert jobs.cancel(queued.id).state == "cancelled"  # at once, before it ever starts
        steps_at_cancel = sum(1 for s, _ in pipe.log if s == 1)
        jobs.cancel(running.id)
        _settle(jobs, [running.id, queued.id, after.id])
        assert running.state == "cancelled" and queued.state == "cancelled" and after.state == "done"
        # the step under way when the flag was raised may finish; no further step starts
        assert sum(1 for s, _ in pipe.log if s == 1) <= steps_at_cancel + 1
        assert not any(s == 2 for s, _ in pipe.log)
        assert [k for s, k in pipe.log if s == 3] == list(range(5))
        with zipfile.ZipFile(after.result_zip) as z:
            assert json.loads(z.read("scene.json"))["seed"] == 3
            # the worker handed the pipeline the photo decoded at submit, pixel for pixel
            from cupid.preprocess import load_photo
            assert np.array_equal(np.load(io.BytesIO(z.read("photo.npy"))), load_photo(PHOTO))
    finally:
        jobs.close()


def test_results_expire_after_fetch_grace_or_ttl():
    from cupid.server import JobQueue
    jobs = JobQueue(lambda: SteppedPipeline(step_s=0.0, steps=1), result_ttl=100.0, fetched_grace=10.0)
    try:
        a = jobs.submit(_inputs(), "object", 1, 0)
        b = jobs.submit(_inputs(), "object", 2, 0)
        _settle(jobs, [a.id, b.id])
        za, zb = a.result_zip, b.result_zip
        assert za.is_file() and zb.is_file()
        assert jobs.usage() == {"queued_bytes": 0, "result_bytes": za.stat().st_size + zb.stat().st_size}
        jobs.mark_fetched(a)
        now = time.monotonic()
        assert jobs.clean(now + 5) == 0                       # fetched, still in its grace period
        assert jobs.clean(now + 11) == 1 and jobs.get(a.id) is None and not za.exists()
        assert jobs.get(b.id) is b                            # never fetched: kept until the TTL
        assert jobs.clean(now + 101) == 1 and not zb.exists()
        assert jobs.usage()["result_bytes"] == 0
    finally:
        jobs.close()


def test_a_model_that_fails_to_load_fails_the_job_and_is_retried():
    from cupid.errors import CheckpointError
    from cupid.server import JobQueue
    attempts = []

    def factory():
        attempts.append(1)
        if len(attempts) == 1:
            raise CheckpointError("ckpts/ss_flow.safetensors is missing")
        return SteppedPipeline(step_s=0.0, steps=1)

    jobs = JobQueue(factory)
    try:
        first = jobs.submit(_inputs(), "object", 1, 0)
        _settle(jobs, [first.id])
        assert first.state == "failed" and first.error["code"] == "bad_checkpoint"
        assert "ss_flow" in jobs.model_error and not jobs.model_loaded
        second = jobs.submit(_inputs(), "object", 2, 0)
        _settle(jobs, [second.id])
        assert second.state == "done" and jobs.model_loaded and jobs.model_error is None
    finally:
        jobs.close()
