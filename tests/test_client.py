"""The stdlib client against small real HTTP servers that misbehave on purpose (unsafe zips, error
bodies, dropped connections, no server at all). The client against the real service: test_server.py."""
from __future__ import annotations

import email.parser
import email.policy
import io
import json
import socket
import stat
import threading
import time
import zipfile
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from cupid_blender.client import (BACKEND_RESTARTED, WRONG_TOKEN, BackendError, BackendUnavailable, CupidClient,
                                  safe_extract)
from helpers.net import QuietHandler, free_port

TOKEN = "s3cret-token"


def _zip(entries: dict[str, bytes], links: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, "/etc/passwd")
    return buf.getvalue()


ZIPS = {
    "ok": _zip({"scene.json": b'{"schema": "cupid.scene/1"}', "sub/object_0.npz": b"npz"}),
    "dotdot": _zip({"scene.json": b"{}", "../escape.txt": b"x"}),
    "absolute": _zip({"/tmp/cupid-abs-escape.txt": b"x"}),
    "backslash": _zip({"..\\escape.txt": b"x"}),
    "drive": _zip({"C:/escape.txt": b"x"}),
    "link": _zip({"scene.json": b"{}"}, links=("object_0.npz",)),
}


PREVIEW = {"camera": {"K": [[100, 0, 50], [0, 100, 40], [0, 0, 1]], "R": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                      "t": [0, 0, 2]}, "width": 100, "height": 80, "res": 4, "voxels": [[0, 1, 2], [3, 3, 3]]}
LABEL_PNG = b"\x89PNG\r\n\x1a\n label bytes"


class Stub(QuietHandler):
    """Answers like the service would, or breaks in the ways a crashed service breaks."""

    received: list[dict] = []
    cancelled: set[str] = set()
    token = TOKEN
    instance = "run-1"
    extra_zips: dict[str, bytes] = {}

    def _authorised(self) -> bool:
        if self.headers.get("Content-Length"):  # read the upload before answering, as the service does
            self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Authorization") != f"Bearer {Stub.token}":
            self._send(401, json.dumps({"error": {"code": "unauthorized", "message": "bad token"}}).encode())
            return False
        return True

    def do_GET(self) -> None:
        if not self._authorised():
            return
        path = self.path
        if path == "/v1/health":
            self._send(200, json.dumps({"version": "stub", "device": "cpu", "dtype": "float32", "model_loaded": False,
                                        "queue_length": 0, "instance": Stub.instance}).encode())
        elif path == "/v1/busy":
            self.send_response(503)
            body = json.dumps({"error": {"code": "busy", "message": "the queue is full"}}).encode()
            self.send_header("Retry-After", "7")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif path == "/v1/plain-500":
            self._send(500, b"Internal Server Error", "text/plain")
        elif path == "/v1/hangup":
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        elif path.startswith("/v1/jobs/") and path.endswith("/result"):
            name = path.split("/")[3]
            if name in ZIPS or name in Stub.extra_zips:
                self._send(200, ZIPS.get(name) or Stub.extra_zips[name], "application/zip")
            elif name == "notzip":
                self._send(200, b"this is not a zip", "application/zip")
            else:
                self._send(404, json.dumps({"error": {"code": "not_found", "message": f"no job {name}"}}).encode())
        elif path.startswith("/v1/jobs/lost"):
            self._send(404, json.dumps({"error": {"code": "not_found", "message": "no job"}}).encode())
        elif path.startswith("/v1/jobs/") and path.endswith("/preview"):
            jid = path.split("/")[3]
            if jid == "early":
                self._send(404, json.dumps({"error": {"code": "not_found", "message": "no preview yet"}}).encode())
            else:
                self._send(200, json.dumps(PREVIEW).encode())
        elif path.startswith("/v1/jobs/"):
            jid = path.split("/")[3]
            state = "cancelled" if jid in self.cancelled else "running"
            self._send(200, json.dumps({"id": jid, "state": state, "stage": "structure", "progress": 0.5,
                                        "message": state}).encode())
        else:
            self._send(404, json.dumps({"error": {"code": "not_found", "message": path}}).encode())

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Authorization") != f"Bearer {Stub.token}":
            self._send(401, json.dumps({"error": {"code": "unauthorized", "message": "bad token"}}).encode())
            return
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + body)
        fields = {}
        for part in msg.iter_parts():
            fields[part.get_param("name", header="content-disposition")] = {
                "filename": part.get_filename(), "data": part.get_payload(decode=True)}
        Stub.received.append(fields)
        if self.path == "/v1/segment":
            prompts = fields.get("prompts", {}).get("data", b"")
            if b"teapot" in prompts:   # the service's answer to a prompt it cannot use
                self._send(422, json.dumps({"error": {"code": "bad_input", "message": "bad prompts"}}).encode())
            elif b"html" in prompts:   # something in between answering with a page
                self._send(200, b"<html>proxy</html>", "text/html")
            else:
                self._send(200, LABEL_PNG, "image/png")
        elif fields.get("from_job", {}).get("data") == b"gone":
            self._send(404, json.dumps({"error": {"code": "not_found", "message": "job gone is not kept any more: "
                                                  "run the reconstruction again"}}).encode())
        else:
            self._send(202, json.dumps({"id": fields.get("job_id", {}).get("data", b"job1").decode(),
                                        "state": "queued"}).encode())

    def do_DELETE(self) -> None:
        if not self._authorised():
            return
        if self.path.startswith("/v1/jobs/lost"):
            self._send(404, json.dumps({"error": {"code": "not_found", "message": "no job"}}).encode())
            return
        Stub.cancelled.add(self.path.split("/")[3])
        self._send(200, json.dumps({"id": self.path.split("/")[3], "state": "running"}).encode())


@pytest.fixture(scope="module")
def stub():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_no_server_is_backend_unavailable_with_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(BackendUnavailable, match=f"CUPID backend is not running at {url}"):
        CupidClient(url, TOKEN, timeout=5).health()


def test_token_file(tmp_path, stub):
    with pytest.raises(BackendUnavailable, match="no token file"):
        CupidClient.from_token_file(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(BackendUnavailable, match="unreadable"):
        CupidClient.from_token_file(tmp_path / "broken.json")
    (tmp_path / "ok.json").write_text(json.dumps({"url": stub + "/", "token": TOKEN}))
    client = CupidClient.from_token_file(tmp_path / "ok.json")
    assert client.url == stub and client.health()["version"] == "stub"


def test_error_bodies_become_backend_errors(stub):
    with pytest.raises(BackendError) as err:
        CupidClient(stub, "wrong").health()
    assert (err.value.code, err.value.status) == (WRONG_TOKEN, 401)
    assert err.value.message.startswith("wrong token: the CUPID backend at") and "preferences" in err.value.message
    client = CupidClient(stub, TOKEN)
    with pytest.raises(BackendError) as err:
        client._json("GET", "/v1/plain-500")
    assert err.value.code == "http_error" and err.value.status == 500


def test_a_connection_dropped_mid_answer_is_backend_unavailable(stub):
    with pytest.raises(BackendUnavailable, match="not running"):
        CupidClient(stub, TOKEN, timeout=5)._json("GET", "/v1/hangup")


def test_proxy_settings_are_ignored(stub, monkeypatch):
    dead = f"http://127.0.0.1:{free_port()}"
    for var in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, dead)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert CupidClient(stub, TOKEN, timeout=5).health()["version"] == "stub"


def test_submit_sends_a_well_formed_multipart_form(stub):
    Stub.received.clear()
    image, mask = bytes(range(256)) * 40 + b"\r\n--not-a-boundary\r\n", b"\x89PNG mask bytes"
    job = CupidClient(stub, TOKEN).submit(image, "dir/my photo.png", mask_bytes=mask, mode="scene",
                                          seed=42, steps=7)
    assert job == "job1"
    f = Stub.received[-1]
    assert f["image"]["data"] == image and f["image"]["filename"] == "my photo.png"
    assert f["mask"]["data"] == mask
    assert (f["mode"]["data"], f["seed"]["data"], f["steps"]["data"]) == (b"scene", b"42", b"7")
    assert f["photo_texture"]["data"] == b"true"
    CupidClient(stub, TOKEN).submit(image, "p.png", photo_texture=False)
    assert Stub.received[-1]["photo_texture"]["data"] == b"false"


def test_refine_sends_the_job_and_the_camera_and_no_image(stub):
    import numpy as np

    Stub.received.clear()
    K = np.array([[500.0, 0, 320], [0, 510, 240], [0, 0, 1]], np.float32)
    job = CupidClient(stub, TOKEN).refine("abc", {"K": K, "R": np.eye(3), "t": (0, 0, 2.5)}, steps=3)
    assert job == "job1"
    f = Stub.received[-1]
    assert set(f) == {"from_job", "camera", "steps", "photo_texture"} and f["from_job"]["data"] == b"abc"
    assert f["photo_texture"]["data"] == b"true"
    camera = json.loads(f["camera"]["data"])
    assert camera == {"K": K.tolist(), "R": np.eye(3).tolist(), "t": [0.0, 0.0, 2.5]}
    assert f["steps"]["data"] == b"3"


def test_refine_of_an_expired_job_says_run_it_again(stub):
    with pytest.raises(BackendError) as err:
        CupidClient(stub, TOKEN).refine("gone", {"K": [[1, 0, 0], [0, 1, 0], [0, 0, 1]], "R": [[1, 0, 0], [0, 1, 0],
                                                                                            [0, 0, 1]], "t": [0, 0, 1]})
    assert err.value.status == 404 and "run the reconstruction again" in err.value.message


def test_preview(stub):
    client = CupidClient(stub, TOKEN)
    assert client.preview("j5") == PREVIEW
    with pytest.raises(BackendError) as err:
        client.preview("early")
    assert err.value.status == 404


def test_segment_sends_the_photo_prompts_and_mode(stub):
    Stub.received.clear()
    client = CupidClient(stub, TOKEN)
    prompts = {"points": [[160, 175]], "boxes": [[292, 112, 388, 208]]}
    assert client.segment(b"photo bytes", "dir/scene.png", prompts) == LABEL_PNG
    f = Stub.received[-1]
    assert f["image"]["data"] == b"photo bytes" and f["image"]["filename"] == "scene.png"
    assert json.loads(f["prompts"]["data"]) == prompts and f["mode"]["data"] == b"scene"
    assert client.segment(b"photo bytes", mode="object") == LABEL_PNG
    assert "prompts" not in Stub.received[-1] and Stub.received[-1]["mode"]["data"] == b"object"
    with pytest.raises(BackendError) as err:
        client.segment(b"photo", prompts={"points": [["teapot"]]})
    assert (err.value.code, err.value.status) == ("bad_input", 422)
    with pytest.raises(BackendError) as err:
        client.segment(b"photo", prompts={"points": [], "boxes": [], "note": "html"})
    assert err.value.code == "bad_answer" and "text/html" in err.value.message


def test_result_unpacks_a_good_bundle(stub, tmp_path):
    out = CupidClient(stub, TOKEN).result("ok", tmp_path / "bundle")
    assert out == (tmp_path / "bundle").resolve()
    assert (out / "scene.json").read_bytes() == b'{"schema": "cupid.scene/1"}'
    assert (out / "sub" / "object_0.npz").read_bytes() == b"npz"


@pytest.mark.parametrize("name", ["dotdot", "absolute", "backslash", "drive", "link"])
def test_result_refuses_unsafe_zips_and_writes_nothing(stub, tmp_path, name):
    dest = tmp_path / "deep" / "bundle"
    with pytest.raises(BackendError) as err:
        CupidClient(stub, TOKEN).result(name, dest)
    assert err.value.code == "bad_bundle" and "unsafe path" in err.value.message
    assert not dest.exists() and not (tmp_path / "deep" / "escape.txt").exists()
    assert not Path("/tmp/cupid-abs-escape.txt").exists()


def test_result_of_a_non_zip_or_unknown_job(stub, tmp_path):
    client = CupidClient(stub, TOKEN)
    with pytest.raises(BackendError, match="not a valid zip") as err:
        client.result("notzip", tmp_path / "a")
    assert err.value.code == "bad_bundle"
    with pytest.raises(BackendError) as err:
        client.result("nosuchjob", tmp_path / "b")
    assert (err.value.code, err.value.status) == ("not_found", 404)


def test_wait_cancels_once_when_asked(stub):
    Stub.cancelled.clear()
    seen: list[dict] = []
    asked = []

    def should_cancel() -> bool:
        asked.append(1)
        return True

    final = CupidClient(stub, TOKEN).wait("j2", poll=0.01, on_progress=seen.append, should_cancel=should_cancel,
                                          timeout=10)
    assert final["state"] == "cancelled" and Stub.cancelled == {"j2"}
    assert [s["state"] for s in seen] == ["running", "cancelled"]


def test_wait_times_out(stub):
    with pytest.raises(BackendError) as err:
        CupidClient(stub, TOKEN).wait("slow", poll=0.01, timeout=0.1)
    assert err.value.code == "timeout"


def test_safe_extract_directly(tmp_path):
    with zipfile.ZipFile(io.BytesIO(ZIPS["ok"])) as z:
        assert (safe_extract(z, tmp_path) / "scene.json").is_file()


def test_a_token_refused_after_it_worked_means_the_backend_restarted(stub, monkeypatch):
    client = CupidClient(stub, TOKEN)
    client.health()
    monkeypatch.setattr(Stub, "token", "the-next-run")
    with pytest.raises(BackendError) as err:
        client.status("j1")
    assert err.value.code == BACKEND_RESTARTED and "run it again" in err.value.message


def test_a_lost_job_after_an_instance_change_means_the_backend_restarted(stub, monkeypatch):
    client = CupidClient(stub, TOKEN)
    client.submit(b"img", "a.png")
    client._job_instance["lost"] = client._job_instance.pop("job1")  # the stub forgets "lost" jobs
    with pytest.raises(BackendError) as err:  # same run: an ordinary 404
        client.status("lost")
    assert err.value.code == "not_found"
    monkeypatch.setattr(Stub, "instance", "run-2")
    for call in (client.status, client.cancel, lambda j: client.result(j, "/nonexistent/never")):
        with pytest.raises(BackendError) as err:
            call("lost")
        assert err.value.code == BACKEND_RESTARTED and "restarted" in err.value.message
    with pytest.raises(BackendError) as err:  # a job this client never submitted: just not found
        client.status("lost-elsewhere")
    assert err.value.code == "not_found"


def test_a_client_from_a_token_file_follows_the_backend_to_its_next_run(stub, tmp_path, monkeypatch):
    path = tmp_path / "server.json"
    path.write_text(json.dumps({"url": stub, "token": TOKEN}))
    client = CupidClient.from_token_file(path)
    assert client.health()["instance"] == "run-1"
    monkeypatch.setattr(Stub, "token", "second-run-token")
    path.write_text(json.dumps({"url": stub, "token": "second-run-token"}))
    assert client.health()["version"] == "stub" and client.token == "second-run-token"


def test_busy_carries_retry_after(stub):
    with pytest.raises(BackendError) as err:
        CupidClient(stub, TOKEN)._json("GET", "/v1/busy")
    assert (err.value.code, err.value.status, err.value.retry_after) == ("busy", 503, 7.0)


def test_result_frees_the_services_copy(stub, tmp_path):
    Stub.cancelled.clear()
    CupidClient(stub, TOKEN).result("ok", tmp_path / "b")
    assert Stub.cancelled == {"ok"}
    CupidClient(stub, TOKEN).result("ok", tmp_path / "c", free=False)
    assert Stub.cancelled == {"ok"}


def _bomb(total: int) -> bytes:
    """A real zip bomb: `total` bytes of zeros deflated into one member (about 1000:1)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        info = zipfile.ZipInfo("scene.json")
        info.compress_type = zipfile.ZIP_DEFLATED
        with z.open(info, "w", force_zip64=True) as f:
            chunk = bytes(1 << 20)
            for _ in range(total >> 20):
                f.write(chunk)
    return buf.getvalue()


@pytest.fixture(scope="module")
def bombs():
    many = io.BytesIO()
    with zipfile.ZipFile(many, "w") as z:
        for k in range(30_000):
            z.writestr(f"m{k}.txt", b"x")
    Stub.extra_zips.update(bomb=_bomb(300 << 20), many=many.getvalue())
    yield
    Stub.extra_zips.clear()


@pytest.mark.parametrize("name, client_kw, message", [
    ("bomb", {}, "zip bomb"),                                # 300 MB from 0.3 MB
    ("many", {}, "30000 files"),                             # 30,000 members
    ("ok", {"max_bundle_members": 1}, "2 files"),
])
def test_zip_bombs_are_refused_before_anything_is_written(stub, tmp_path, bombs, name, client_kw, message):
    t0 = time.monotonic()
    dest = tmp_path / "bundle"
    with pytest.raises(BackendError) as err:
        CupidClient(stub, TOKEN, **client_kw).result(name, dest)
    assert err.value.code == "bad_bundle" and message in err.value.message, err.value.message
    assert not dest.exists()
    assert time.monotonic() - t0 < 10


def test_more_than_the_size_cap_in_all_is_refused(tmp_path):
    with zipfile.ZipFile(io.BytesIO(ZIPS["ok"])) as z:
        with pytest.raises(BackendError, match="would unpack to"):
            safe_extract(z, tmp_path / "b", max_bytes=20)
    assert not (tmp_path / "b").exists()


def test_a_download_past_the_size_cap_is_cut_off(stub, tmp_path):
    with pytest.raises(BackendError, match="larger than") as err:
        CupidClient(stub, TOKEN, max_bundle_bytes=100).result("ok", tmp_path / "b")
    assert err.value.code == "bad_bundle" and not (tmp_path / "b").exists()
