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

from helpers.bad_images import png_header_only
from helpers.bundles import obj, reconstruction

from cupid.models.dtype import dtype_name, resolve_dtype
from cupid.server import ServerSettings
from cupid_blender.client import BACKEND_RESTARTED, WRONG_TOKEN, BackendError, BackendUnavailable, CupidClient

REPO = Path(__file__).resolve().parents[1]
MB = 1024 * 1024
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
def server(tiny_model, tmp_path_factory):
    s = Server(tiny_model, tmp_path_factory.mktemp("srv"), "--max-upload-mb", "2", "--max-queue", "32")
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
    assert h["dtype"] == dtype_name(resolve_dtype("auto", "cpu")) and not h["model_loaded"]  # known before loading
    assert len(h["instance"]) == 16 and h["limits"] == {
        "max_queue": 32, "max_queued_bytes": 1024 * MB, "max_result_bytes": 2048 * MB,
        "max_upload_bytes": 2 * MB, "result_ttl_s": 3600.0}
    assert h["queued_bytes"] == 0


def test_wrong_token_with_a_big_upload_reads_as_wrong_token(server):
    """The refusal is sent at once with `connection: close`, and the connection lingers reading and
    dropping the rest of the body, so a client still uploading sees the answer, not a reset."""
    big = os.urandom(10 * MB)
    wrong = CupidClient(server.client.url, "not-the-token", timeout=30)
    with pytest.raises(BackendError) as err:
        wrong.submit(big, "big.png")
    assert (err.value.code, err.value.status) == (WRONG_TOKEN, 401)
    assert err.value.message.startswith("wrong token")
    status, body = raw(server, "POST", "/v1/jobs", {"Host": f"evil.example:{server.port}",
                                                    "Authorization": f"Bearer {server.client.token}"}, big)
    assert status == 403 and body["error"]["code"] == "forbidden_host"
    assert server.client.health()["queue_length"] == 0


def test_openapi_describes_every_answer(server):
    good = {"Host": f"127.0.0.1:{server.port}", "Authorization": f"Bearer {server.client.token}"}
    status, spec = raw(server, "GET", "/openapi.json", good)
    assert status == 200
    ref = lambda answer: answer["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]  # noqa: E731
    paths = spec["paths"]
    assert ref(paths["/v1/health"]["get"]["responses"]["200"]) == "Health"
    submit = paths["/v1/jobs"]["post"]
    assert ref(submit["responses"]["202"]) == "JobStatus"
    for code in ("401", "403", "413", "422", "503", "507"):
        assert ref(submit["responses"][code]) == "ErrorResponse", code
    fields = spec["components"]["schemas"][submit["requestBody"]["content"]["multipart/form-data"]["schema"]
                                           ["$ref"].rsplit("/", 1)[1]]["properties"]
    assert fields["seed"]["minimum"] == 0 and fields["seed"]["exclusiveMaximum"] == 2 ** 63
    assert fields["mode"]["enum"] == ["object", "scene"] and fields["steps"]["maximum"] == 500
    assert ref(paths["/v1/jobs/{job_id}"]["get"]["responses"]["200"]) == "JobStatus"
    assert ref(paths["/v1/jobs/{job_id}"]["delete"]["responses"]["200"]) == "JobStatus"
    result = paths["/v1/jobs/{job_id}/result"]["get"]["responses"]
    assert "application/zip" in result["200"]["content"]
    assert {ref(result[c]) for c in ("404", "409", "410")} == {"ErrorResponse"}
    health = spec["components"]["schemas"]["Health"]["properties"]
    assert {"instance", "limits", "queued_bytes", "result_bytes", "device", "dtype"} <= set(health)
    assert spec["components"]["schemas"]["JobStatus"]["properties"]["state"]["enum"] == [
        "queued", "running", "done", "failed", "cancelled"]


@pytest.mark.parametrize("seed", ["-1", str(10 ** 30), str(2 ** 63), "1.5"])
def test_seeds_out_of_range_are_refused_at_submit(server, seed):
    good = {"Host": f"127.0.0.1:{server.port}", "Authorization": f"Bearer {server.client.token}"}
    boundary = "s33d"
    form = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="m.png"\r\n\r\n').encode() \
        + PHOTO + (f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="seed"\r\n\r\n{seed}\r\n'
                   f'--{boundary}--\r\n').encode()
    status, body = raw(server, "POST", "/v1/jobs", {**good, "Content-Type": f"multipart/form-data; boundary={boundary}"},
                       form)
    assert status == 422 and body["error"]["code"] == "bad_input" and "'seed'" in body["error"]["message"], body


def test_the_largest_seed_runs(server):
    job = server.client.submit(PHOTO, "monkey.png", seed=2 ** 63 - 1, steps=1)
    st = server.client.wait(job, poll=0.1, timeout=120)
    assert st["state"] == "done" and st["seed"] == 2 ** 63 - 1, st


def test_a_result_gone_at_fetch_is_410_expired_with_no_path(server, tmp_path):
    job = server.client.submit(PHOTO, "monkey.png", seed=7, steps=1)
    assert server.client.wait(job, poll=0.1, timeout=120)["state"] == "done"
    (server.workdir() / "results" / f"{job}.zip").unlink()  # removed behind the server's back
    with pytest.raises(BackendError) as err:
        server.client.result(job, tmp_path / "r")
    assert (err.value.code, err.value.status) == ("expired", 410)
    assert "/" not in err.value.message and "run it again" in err.value.message
    assert not (tmp_path / "r").exists()


def test_delete_on_a_finished_job_frees_its_result(server, tmp_path):
    job = server.client.submit(PHOTO, "monkey.png", seed=8, steps=1)
    assert server.client.wait(job, poll=0.1, timeout=120)["state"] == "done"
    zipped = server.workdir() / "results" / f"{job}.zip"
    held, size = server.client.health()["result_bytes"], zipped.stat().st_size
    assert held >= size > 0
    assert server.client.cancel(job)["state"] == "done"
    assert not zipped.exists() and server.client.health()["result_bytes"] == held - size
    with pytest.raises(BackendError) as err:
        server.client.result(job, tmp_path / "r")
    assert err.value.status == 404
    # fetching frees it too: the client deletes the service's copy once it is unpacked
    job2 = server.client.submit(PHOTO, "monkey.png", seed=9, steps=1)
    assert server.client.wait(job2, poll=0.1, timeout=120)["state"] == "done"
    server.client.result(job2, tmp_path / "r2")
    assert not (server.workdir() / "results" / f"{job2}.zip").exists()


def _mask_png(size: tuple[int, int], value: int = 0, mode: str = "L") -> bytes:
    return _png(Image.new(mode, size, value))


def test_errors_visible_in_the_upload_are_refused_at_submit(server):
    """Found when the request arrives, not after the queue and the model load: answered while
    another job is still running, and nothing is queued."""
    long_job = server.client.submit(PHOTO, "monkey.png", seed=11, steps=500)
    try:
        w, h = Image.open(io.BytesIO(PHOTO)).size
        labels = np.zeros((h, w), np.uint8)
        labels[50:150, 50:150], labels[200:300, 200:300] = 1, 2
        cases = [
            (dict(mask_bytes=_mask_png((w, h), 0)), "mask is empty"),
            (dict(mask_bytes=_mask_png((w + 1, h), 255)), "same size"),
            (dict(mask_bytes=_png(Image.fromarray(labels[:-4])), mode="scene"), "label image is"),
            (dict(mask_bytes=_png(Image.fromarray(np.zeros((h, w), np.uint8))), mode="scene"), "empty"),
            (dict(mask_bytes=b"not an image"), "not a readable image"),
        ]
        for kwargs, message in cases:
            t0 = time.monotonic()
            with pytest.raises(BackendError) as err:
                server.client.submit(PHOTO, "monkey.png", **kwargs)
            assert err.value.status == 422 and message in err.value.message, (kwargs.get("mode"), err.value.message)
            assert time.monotonic() - t0 < 5.0
        faint = np.asarray(Image.open(io.BytesIO(PHOTO)).convert("RGBA")).copy()
        faint[..., 3] = 100  # a cut-out whose alpha is above 80% nowhere
        with pytest.raises(BackendError, match="above 80% nowhere"):
            server.client.submit(_png(Image.fromarray(faint)), "faint.png")
        assert server.client.status(long_job)["state"] == "running"
        assert server.client.health()["queue_length"] == 1
    finally:
        server.client.cancel(long_job)
        server.client.wait(long_job, poll=0.05, timeout=60)


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
    assert "form field 'seed'" in body["error"]["message"]
    form = (f'--{boundary}\r\nContent-Disposition: form-data; name="seed"\r\n\r\n3\r\n--{boundary}--\r\n').encode()
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
    # an opaque photo of nothing: the background remover finds no object, which only the model can tell;
    # the job fails with the pipeline's own code and message, and the next job runs normally
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 90, 90)).save(buf, format="PNG")
    bad = server.client.submit(buf.getvalue(), "grey.png", steps=1)
    st = server.client.wait(bad, poll=0.1, timeout=120)
    assert st["state"] == "failed" and st["error"]["code"] == "bad_input", st
    assert "no object found in the photo" in st["error"]["message"]
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
    if message in ("not a readable image", "too large"):
        assert f"photo {name} (upload)" in err.value.message   # named as its sender named it
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


def test_kill_mid_job_then_restart_is_told_as_a_restart(tiny_model, tmp_path):
    s = Server(tiny_model, tmp_path)
    first_run = s.client.health()["instance"]
    job = s.client.submit(PHOTO, "monkey.png", seed=3, steps=500)
    while s.client.status(job)["state"] != "running":
        time.sleep(0.05)
    own = s.workdir()
    s.stop(signal.SIGKILL)
    assert s.token_file.exists()  # a SIGKILLed server cannot remove its token file
    with pytest.raises(BackendUnavailable, match="not running"):
        s.client.wait(job, poll=0.05, timeout=30)
    s2 = Server(tiny_model, tmp_path, token_file=s.token_file)  # the next start replaces the stale file
    try:
        # same token (a token file's token is reused across restarts), a new address
        assert json.loads(s.token_file.read_text())["url"] == s2.client.url != s.client.url
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
    assert s2.token_file.exists()  # its token was reused, so the file is kept for the next start


# ------------------------------------------------------------------ the job queue with a timed pipeline
# A stand-in pipeline whose steps take a known time, for what needs controlled timing (cancelling
# between steps, queue order against the clock). It honours the pipeline interface for real: it
# reports progress per step, checks should_cancel before each step and returns a real (tiny) Reconstruction,
# which the queue writes as a real bundle.

class SteppedPipeline:
    def __init__(self, step_s: float = 0.02, steps: int = 10):
        self.step_s, self.default_steps = step_s, steps
        self.log: list[tuple[int, int]] = []  # (seed, step) as they ran
        self.pnp: list = []                   # the camera solver each job asked for

    export_settings = {"texture": False, "glb": False, "gaussians": False, "overlay": False, "target_faces": None}

    def reconstruct(self, image, *, mask=None, mode="object", seed=0, steps=None, progress=None,
                    should_cancel=None, pnp=None, prompts=None, on_stage_one=None):
        from cupid.errors import Cancelled
        self.pnp.append(pnp)
        from cupid.preprocess import load_photo
        n = steps or self.default_steps
        for k in range(n):
            if should_cancel is not None and should_cancel():
                raise Cancelled("cancelled")
            time.sleep(self.step_s)
            self.log.append((seed, k))
            if progress is not None:
                progress.report("structure", (k + 1) / n)
        photo = load_photo(image)[..., :3]
        h, w = photo.shape[:2]
        K = [[w, 0, w / 2], [0, w, h / 2], [0, 0, 1]]
        tetra = obj(f"seed_{seed}", [[0, 0, 0], [0.2, 0, 0], [0, 0.2, 0], [0, 0, 0.2]],
                    [[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
        return reconstruction(photo, (K, np.eye(3), [0, 0, 2], w, h), [tetra])


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
            assert json.loads(z.read("scene.json"))["objects"][0]["name"] == "seed_3"
            sent = np.asarray(Image.open(io.BytesIO(PHOTO)).convert("RGB"))
            np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(z.read("input.png")))), sent)
    finally:
        jobs.close()


def test_the_pnp_field_reaches_the_pipeline(server):
    """`pnp` picks the camera solver per job (empty: the model's default); a bad value is a clear 422."""
    from cupid.server import JobQueue
    pipe = SteppedPipeline(step_s=0.0, steps=1)
    jobs = JobQueue(lambda: pipe)
    try:
        ids = [jobs.submit(_inputs(), "object", 1, 0, pnp="dlt").id,
               jobs.submit(_inputs(), "object", 2, 0).id]
        _settle(jobs, ids)
        assert pipe.pnp == ["dlt", None]
    finally:
        jobs.close()
    good = {"Host": f"127.0.0.1:{server.port}", "Authorization": f"Bearer {server.client.token}"}
    boundary = "b0undary"
    form = (f'--{boundary}\r\nContent-Disposition: form-data; name="pnp"\r\n\r\nepnp\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="m.png"\r\n'
            f'Content-Type: image/png\r\n\r\n').encode() + PHOTO + f'\r\n--{boundary}--\r\n'.encode()
    status, body = raw(server, "POST", "/v1/jobs", {**good, "Content-Type": f"multipart/form-data; boundary={boundary}"},
                       form)
    message = body["error"]["message"]
    assert status == 422 and body["error"]["code"] == "bad_input" and "'pnp'" in message and "'dlt'" in message


def test_results_expire_after_fetch_grace_or_ttl():
    from cupid.server import JobQueue
    jobs = JobQueue(lambda: SteppedPipeline(step_s=0.0, steps=1), result_ttl=100.0, fetched_grace=10.0)
    try:
        a = jobs.submit(_inputs(), "object", 1, 0)
        b = jobs.submit(_inputs(), "object", 2, 0)
        _settle(jobs, [a.id, b.id])
        za, zb = a.result_zip, b.result_zip
        assert za.is_file() and zb.is_file()
        assert jobs.usage() == {"queued_bytes": 0, "result_bytes": za.stat().st_size + zb.stat().st_size,
                                "kept_bytes": 0}   # the stand-in pipeline keeps no stage 1
        jobs.open_result(a.id)[0].close()  # fetched
        now = time.monotonic()
        assert jobs.clean(now + 5) == 0                       # fetched, still in its grace period
        assert jobs.clean(now + 11) == 1 and jobs.get(a.id) is None and not za.exists()
        assert jobs.get(b.id) is b                            # never fetched: kept until the TTL
        assert jobs.clean(now + 101) == 1 and not zb.exists()
        assert jobs.usage()["result_bytes"] == 0
    finally:
        jobs.close()


def test_a_fetched_job_keeps_its_stage_one_for_refines_until_the_ttl():
    """An object-mode job's stage 1 outlives the fetch grace (the artist refines minutes later); its zip does not."""
    from cupid.server import JobQueue
    from cupid.server.errors import Expired
    jobs = JobQueue(lambda: SteppedPipeline(step_s=0.0, steps=1), result_ttl=100.0, fetched_grace=10.0)
    try:
        a = jobs.submit(_inputs(), "object", 1, 0)
        _settle(jobs, [a.id])
        kept = object()   # stands for the pipeline's StageOne
        a.stage_one, za = kept, a.result_zip
        jobs.open_result(a.id)[0].close()
        now = time.monotonic()
        assert jobs.clean(now + 11) == 0 and jobs.get(a.id) is a and a.stage_one is kept
        assert not za.exists() and jobs.usage()["result_bytes"] == 0
        with pytest.raises(Expired):
            jobs.open_result(a.id)
        assert jobs.clean(now + 101) == 1 and jobs.get(a.id) is None and a.stage_one is None
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


def test_a_job_cancelled_while_the_model_loads_ends_at_once_and_never_starts():
    from cupid.server import JobQueue
    pipe = SteppedPipeline(step_s=0.01, steps=5)
    loading, release = threading.Event(), threading.Event()

    def slow_factory():
        loading.set()
        release.wait(30)  # the model takes its time to load
        return pipe

    jobs = JobQueue(slow_factory)
    try:
        job = jobs.submit(_inputs(), "object", 1, 0)
        assert loading.wait(30) and job.stage == "loading"
        t0 = time.monotonic()
        assert jobs.cancel(job.id).state == "cancelled"
        assert time.monotonic() - t0 < 0.5 and "loading" in job.message
        release.set()
        nxt = jobs.submit(_inputs(), "object", 2, 0)
        _settle(jobs, [nxt.id])
        assert nxt.state == "done" and {s for s, _ in pipe.log} == {2}  # the cancelled job never sampled
    finally:
        release.set()
        jobs.close()


def test_queue_length_and_waiting_bytes_are_capped_with_retry_after():
    from cupid.server import JobQueue
    from cupid.server.errors import Busy, TooLarge
    one = _inputs().nbytes
    pipe = SteppedPipeline(step_s=0.05, steps=200)
    jobs = JobQueue(lambda: pipe, max_queue=3, max_queued_bytes=int(2.5 * one))
    try:
        first = jobs.submit(_inputs(), "object", 1, 0)
        jobs.submit(_inputs(), "object", 2, 0)
        with pytest.raises(Busy, match="MB of photos are waiting") as err:  # a third photo's bytes do not fit
            jobs.submit(_inputs(), "object", 3, 0)
        assert err.value.http_status == 503 and err.value.headers["Retry-After"].isdigit()
        assert jobs.queue_length() == 2 and jobs.usage()["queued_bytes"] == 2 * one
        assert len(list((jobs.directory / "inputs").iterdir())) == 2  # waiting on disk, not in memory
        jobs.cancel(first.id)
        _settle(jobs, [first.id])
        assert jobs.usage()["queued_bytes"] == one
        small = JobQueue(lambda: pipe, max_queue=1)
        try:
            small.submit(_inputs(), "object", 4, 0)
            with pytest.raises(Busy, match="it holds 1 jobs, queued or running, its limit"):
                small.submit(_inputs(), "object", 5, 0)
        finally:
            small.close()
        with pytest.raises(TooLarge):
            jobs.check_room(3 * one)
    finally:
        jobs.close()


def test_results_past_their_cap_evict_the_oldest_unfetched_first():
    from cupid.server import JobQueue
    from cupid.server.errors import Expired
    pipe = SteppedPipeline(step_s=0.0, steps=1)
    jobs = JobQueue(lambda: pipe)
    try:
        done = []
        for seed in range(3):
            j = jobs.submit(_inputs(), "object", seed, 0)
            _settle(jobs, [j.id])
            done.append(j)
        size = done[0].result_bytes
        jobs.open_result(done[0].id)[0].close()    # the oldest was fetched already: it goes last
        jobs.max_result_bytes = int(3.5 * size)    # room for three and a half
        newest = jobs.submit(_inputs(), "object", 3, 0)
        _settle(jobs, [newest.id])
        assert [j.result_zip is not None for j in done + [newest]] == [True, False, True, True]
        assert jobs.usage()["result_bytes"] <= jobs.max_result_bytes
        with pytest.raises(Expired, match="capped"):
            jobs.open_result(done[1].id)
        fh, _ = jobs.open_result(done[2].id)
        fh.close()
    finally:
        jobs.close()


@pytest.mark.parametrize("error, code, text", [
    (OSError(28, "No space left on device"), "disk_full", "is full"),
    (RuntimeError("boom in /home/someone/secret/path"), "internal_error", "RuntimeError"),
])
def test_a_failed_job_leaves_no_files_and_no_server_paths(error, code, text, tmp_path, monkeypatch):
    from cupid.server import JobQueue, jobs as jobs_module

    def half_written(pipe, image, out_dir, **kw):  # writing the bundle fails half way
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "object_0.ply").write_bytes(b"half a file")
        raise error

    monkeypatch.setattr(jobs_module, "reconstruct_bundle", half_written)
    jobs = JobQueue(lambda: SteppedPipeline(), root=tmp_path)
    try:
        job = jobs.submit(_inputs(), "object", 1, 0)
        _settle(jobs, [job.id])
        assert job.state == "failed" and job.error["code"] == code and text in job.error["message"]
        assert "secret" not in job.error["message"]
        if code == "disk_full":
            assert str(jobs.directory) in job.error["message"]  # it names the directory that is full
        left = [p for p in jobs.directory.rglob("*") if p.is_file() and p.name != "owner.pid"]
        assert left == [] and jobs.usage() == {"queued_bytes": 0, "result_bytes": 0, "kept_bytes": 0}
    finally:
        jobs.close()


def test_an_unexpected_error_answers_without_its_text():
    from starlette.testclient import TestClient

    from cupid.server import ServerSettings, create_app
    settings = ServerSettings(host="127.0.0.1", port=8000, token="t" * 32)
    app = create_app(settings, lambda: SteppedPipeline())
    try:
        def broken(job_id):
            raise RuntimeError(f"cannot read /srv/private/{job_id}")

        app.state.jobs.get = broken
        with TestClient(app, base_url="http://127.0.0.1:8000", raise_server_exceptions=False) as http:
            r = http.get("/v1/jobs/abc", headers={"Authorization": "Bearer " + "t" * 32})
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
        assert "private" not in r.text and "RuntimeError" in r.json()["error"]["message"]
    finally:
        app.state.jobs.close()


@pytest.mark.parametrize("posix", [True, False])
def test_token_file_private_dirs_and_the_portable_branch(tmp_path, posix):
    """~/.cupid is made 0700 whatever the umask; the branch without fchmod (Windows) runs here too."""
    from cupid.commands.serve import write_token_file
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    path = home / ".cupid" / "server.json"
    old = os.umask(0)
    try:
        write_token_file(path, "http://127.0.0.1:1", "first", posix=posix)
        write_token_file(path, "http://127.0.0.1:2", "second", posix=posix)  # replaces a stale file
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(home.stat().st_mode) == 0o755  # an existing directory is left as it is
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"url": "http://127.0.0.1:2", "token": "second"}
    assert [p.name for p in path.parent.iterdir()] == ["server.json"]


@pytest.mark.skipif(not hasattr(os, "symlink") or os.name != "posix",
                    reason=("O_NOFOLLOW and unprivileged symlinks are POSIX; on Windows only an administrator"
                            " can plant a symlink"))
def test_token_file_never_writes_through_a_planted_symlink(tmp_path):
    """Another local user plants a link at the temporary file's name: its target stays untouched and
    the token file is still written (under a fresh name, then renamed)."""
    from cupid.commands.serve import write_token_file
    path = tmp_path / "cupid" / "server.json"
    path.parent.mkdir(mode=0o700)
    target = tmp_path / "victim.txt"
    target.write_text("precious")
    mode = stat.S_IMODE(target.stat().st_mode)
    planted = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    os.symlink(target, planted)
    write_token_file(path, "http://127.0.0.1:1", "t" * 32)
    assert target.read_text() == "precious" and stat.S_IMODE(target.stat().st_mode) == mode
    assert json.loads(path.read_text()) == {"url": "http://127.0.0.1:1", "token": "t" * 32}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and not path.is_symlink()
    assert planted.is_symlink()   # left alone, not followed


def test_stale_dirs_are_swept_by_pid_or_by_heartbeat(tmp_path):
    """The heartbeat branch (used where a pid cannot be asked safely: Windows) runs here too."""
    from cupid.server.storage import OWNER_FILE, TMP_PREFIX, sweep_stale_dirs
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    dirs = {}
    for name, pid, age in [("dead", dead, 0), ("alive-old", str(os.getppid()), 3600), ("alive-new", str(os.getppid()), 0),
                           ("dead-new", dead, 0)]:
        d = tmp_path / f"{TMP_PREFIX}{name}"
        d.mkdir()
        (d / OWNER_FILE).write_text(pid)
        t = time.time() - age
        os.utime(d / OWNER_FILE, (t, t))
        dirs[name] = d
    (tmp_path / f"{TMP_PREFIX}foreign").mkdir()  # not ours: no owner file, never touched
    assert set(sweep_stale_dirs(tmp_path, by_pid=False, stale_after=600)) == {dirs["alive-old"]}
    assert set(sweep_stale_dirs(tmp_path, by_pid=True)) == {dirs["dead"], dirs["dead-new"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{TMP_PREFIX}alive-new", f"{TMP_PREFIX}foreign"]


def _can_mount_a_small_disk(tmp_path: Path) -> bool:
    point = tmp_path / "probe"
    point.mkdir()
    try:
        return subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {point}"],
                              capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _fill(path: Path, leave: int) -> None:
    """Fill the disk `path` lives on, then free `leave` bytes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while os.write(fd, b"\0" * 65536):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    os.truncate(path, max(path.stat().st_size - leave, 0))


def test_disk_full_is_disk_full_naming_the_directory_with_no_partial_files(tiny_model, tmp_path):
    """A real full disk: the server runs with its temp dir on a 6 MB tmpfs of its own (a private mount
    namespace), which the test fills from outside through /proc/PID/root."""
    if not _can_mount_a_small_disk(tmp_path):
        pytest.skip("a real full disk needs `unshare -rm` (unprivileged user namespaces) to mount a 6 MB tmpfs, "
                    "which this kernel or container forbids; ENOSPC handling is then untested here")
    small = tmp_path / "small"
    small.mkdir()
    s = Server(tiny_model, tmp_path, wrap=("unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=6m tmpfs "$0" && exec "$@"',
                                      str(small)), env={"TMPDIR": str(small)})
    try:
        seen = Path(f"/proc/{s.proc.pid}/root") / str(small).lstrip("/")
        work = next(seen.glob("cupid-serve-*"))
        filler = seen / "filler"
        files = lambda: sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.is_file())  # noqa: E731

        _fill(filler, leave=200_000)  # the decoded photo (691 KB) cannot be spooled
        with pytest.raises(BackendError) as err:
            s.client.submit(PHOTO, "monkey.png", steps=1)
        assert (err.value.code, err.value.status) == ("disk_full", 507) and str(small) in err.value.message
        assert files() == ["owner.pid"]

        _fill(filler, leave=900_000)  # spooled, but the bundle does not fit
        job = s.client.submit(PHOTO, "monkey.png", steps=1)
        st = s.client.wait(job, poll=0.1, timeout=120)
        assert st["state"] == "failed" and st["error"]["code"] == "disk_full", st
        assert str(small) in st["error"]["message"] and files() == ["owner.pid"]

        _fill(filler, leave=500_000)  # an upload spooled by the form parser (parts over 1 MB go to disk)
        with pytest.raises(BackendError) as err:
            s.client.submit(os.urandom(2 * MB), "big.png")
        assert (err.value.code, err.value.status) == ("disk_full", 507) and str(small) in err.value.message

        filler.unlink()  # space again: the server carries on
        job = s.client.submit(PHOTO, "monkey.png", steps=1)
        assert s.client.wait(job, poll=0.1, timeout=120)["state"] == "done"
    finally:
        s.stop()


def test_photo_texture_form_field_and_a_refine_reprojects(server, tmp_path):
    """`photo_texture=false` keeps the generated texture alone; a refine of that job (default on) projects
    the photo through the given camera, and says so in its bundle."""
    job = server.client.submit(PHOTO, "monkey.png", seed=3, steps=1, photo_texture=False)
    assert server.client.wait(job, poll=0.1, timeout=120)["state"] == "done"
    plain = json.loads((server.client.result(job, tmp_path / "a", free=False) / "scene.json").read_text())
    assert plain["export"]["photo_texture"] is False
    assert "photo_weight" not in plain["objects"][0] and "mask" in plain["objects"][0]
    camera = {k: np.asarray(plain["camera"][k]) for k in ("K", "R", "t")}
    camera["K"][0, 0] *= 1.05
    refined = server.client.refine(job, camera, steps=1)
    assert server.client.wait(refined, poll=0.1, timeout=120)["state"] == "done"
    scene = json.loads((server.client.result(refined, tmp_path / "b") / "scene.json").read_text())
    obj = scene["objects"][0]
    assert scene["export"]["photo_texture"] is True and {"texture_generated", "photo_weight"} <= set(obj)
    assert obj["photo_texture"]["seen_texels"] > 0
    np.testing.assert_allclose(scene["camera"]["K"], camera["K"], rtol=1e-9)
