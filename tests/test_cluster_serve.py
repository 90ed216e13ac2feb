"""`cupid serve --ray` as a studio runs it: the real CLI joining a local Ray runtime (2 CPUs), two
model replicas of the tiny model, the add-on's own client and job runner talking to it unchanged."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the backend's cluster extra (Ray) is not installed")

from cupid_blender.client import BackendError, CupidClient  # noqa: E402
from cupid_blender.io.job import JobRequest, ReconstructJob  # noqa: E402
from cupid_blender.io.upload import Upload  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PHOTO = (REPO / "examples" / "monkey.png").read_bytes()


class RayServer:
    """`python -m cupid serve --ray ADDRESS` joined to this test's Ray runtime."""

    def __init__(self, model: Path, tmp: Path, *extra: str):
        self.token_file = tmp / "token.json"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "backend"), str(REPO)]), "HF_HUB_OFFLINE": "1"}
        self.log = (tmp / "serve.log").open("w+")
        address = ray.get_runtime_context().gcs_address
        self.proc = subprocess.Popen([sys.executable, "-m", "cupid", "serve", "--ray", address, "--port", "0",
                                      "--token-file", str(self.token_file), "--model", str(model), "--device", "cpu",
                                      "--dtype", "float32", *extra], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while not self.token_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"cupid serve --ray did not start: {self.output()}")
            time.sleep(0.2)
        self.client = CupidClient.from_token_file(self.token_file, timeout=60)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    s = None
    try:
        s = RayServer(tiny_model, tmp_path_factory.mktemp("ray-serve"), "--replicas", "2", "--max-queue", "4")
        yield s
    finally:
        if s is not None:
            s.stop()
        ray.shutdown()


def _replicas(server: RayServer, count: int = 2, timeout: float = 180) -> list[dict]:
    """The model replicas once `count` of them are up and idle (a killed one is replaced by Serve)."""
    deadline = time.monotonic() + timeout
    while True:
        reps = server.client.health()["replicas"]
        if sum(r["state"] == "idle" for r in reps) >= count:
            return reps
        assert time.monotonic() < deadline, reps
        time.sleep(0.5)


def _running_on_replicas(server: RayServer, jobs: list[str], timeout: float = 60) -> dict[str, str]:
    """job -> replica id, once every job runs (past its model's first stage)."""
    deadline = time.monotonic() + timeout
    while True:
        where = {r["job"]: r["id"] for r in server.client.health()["replicas"] if r["job"] in jobs}
        if len(where) == len(jobs) and all(server.client.status(j)["stage"] in ("structure", "pose", "latent")
                                           for j in jobs):
            return where
        assert time.monotonic() < deadline, server.client.health()
        time.sleep(0.05)


def test_health_lists_the_replicas_and_the_door_is_the_same(server):
    health = server.client.health()
    reps = _replicas(server)
    assert len(reps) == 2 and {(r["device"], r["dtype"]) for r in reps} == {("cpu", "float32")}
    assert (health["device"], health["dtype"], health["model_loaded"]) == ("cpu", "float32", True)
    assert json.loads(server.token_file.read_text())["url"] == server.client.url
    # the same guard: a wrong token is 401, a DNS name in Host is 403 (the client reports both by code)
    with pytest.raises(BackendError) as err:
        CupidClient(server.client.url, "wrong-token-" + "x" * 30).health()
    assert err.value.status == 401
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", int(server.client.url.rsplit(":", 1)[1]), timeout=30)
    conn.request("GET", "/v1/health", headers={"Host": f"evil.example:{server.client.url.rsplit(':', 1)[1]}",
                                               "Authorization": f"Bearer {server.client.token}"})
    resp = conn.getresponse()
    assert resp.status == 403 and json.loads(resp.read())["error"]["code"] == "forbidden_host"
    # a bad upload is answered at the ingress as before: 422 bad_input
    with pytest.raises(BackendError) as err:
        server.client.submit(b"not an image", "broken.png")
    assert (err.value.status, err.value.code) == (422, "bad_input")


def test_concurrent_jobs_from_several_clients_each_get_their_own_result(server, tmp_path):
    _replicas(server)
    busy: set[str] = set()
    ids: dict[int, str] = {}
    watching = threading.Event()

    def watch() -> None:  # which replicas ran something
        while not watching.is_set():
            busy.update(r["id"] for r in server.client.health()["replicas"] if r["state"] == "busy")
            time.sleep(0.05)

    def client_submits(first_seed: int) -> None:
        own = CupidClient.from_token_file(server.token_file, timeout=60)   # one client per "artist"
        for seed in (first_seed, first_seed + 10):
            for _ in range(100):  # --max-queue 4: a busy answer says when to come back
                try:   # the photo texture off for one of them: the form field reaches the replica
                    ids[seed] = own.submit(PHOTO, "monkey.png", seed=seed, steps=3, photo_texture=seed != 0)
                    break
                except BackendError as exc:
                    assert exc.code == "busy" and exc.retry_after and exc.retry_after >= 1
                    time.sleep(0.5)

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=client_submits, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    finals = {s: server.client.wait(j, poll=0.2, timeout=300) for s, j in ids.items()}
    watching.set()
    watcher.join()
    assert len(finals) == 6 and all(st["state"] == "done" for st in finals.values()), finals
    assert len(busy) == 2, busy   # both replicas ran jobs
    meshes = {}
    for seed, job in ids.items():
        out = server.client.result(job, tmp_path / str(seed))
        scene = json.loads((out / "scene.json").read_text())
        meshes[seed] = (out / scene["objects"][0]["mesh"]).read_bytes()
        textured = seed != 0
        assert scene["export"]["photo_texture"] is textured and ("photo_weight" in scene["objects"][0]) is textured
    assert len(set(meshes.values())) == 6   # each job its own result (seeds differ)


def test_the_queue_bound_answers_busy_with_retry_after(server):
    _replicas(server)
    jobs = [server.client.submit(PHOTO, "monkey.png", seed=s, steps=400) for s in range(4)]
    with pytest.raises(BackendError) as err:
        server.client.submit(PHOTO, "monkey.png", seed=9, steps=1)
    assert (err.value.status, err.value.code) == (503, "busy") and err.value.retry_after >= 1
    for job in jobs:
        server.client.cancel(job)
    assert all(server.client.wait(j, poll=0.1, timeout=60)["state"] == "cancelled" for j in jobs)


def test_cancel_works_on_a_job_on_either_replica(server):
    _replicas(server)
    jobs = [server.client.submit(PHOTO, "monkey.png", seed=s, steps=500) for s in (1, 2)]
    where = _running_on_replicas(server, jobs)
    assert len(set(where.values())) == 2   # one on each replica
    t0 = time.monotonic()
    for job in jobs:
        assert server.client.cancel(job)["state"] == "running"   # cancelling at the next step
    finals = [server.client.wait(j, poll=0.05, timeout=60) for j in jobs]
    assert [f["state"] for f in finals] == ["cancelled", "cancelled"] and time.monotonic() - t0 < 10
    nxt = server.client.submit(PHOTO, "monkey.png", seed=3, steps=1)
    assert server.client.wait(nxt, poll=0.2, timeout=120)["state"] == "done"


def test_a_replica_killed_mid_job_fails_it_as_worker_lost(server):
    _replicas(server)
    job = server.client.submit(PHOTO, "monkey.png", seed=4, steps=500)
    replica = _running_on_replicas(server, [job])[job]
    ray.kill(ray.get_actor(f"SERVE_REPLICA::cupid#CupidModel#{replica}", namespace="serve"))
    final = server.client.wait(job, poll=0.1, timeout=60)
    assert final["state"] == "failed" and final["error"]["code"] == "worker_lost", final
    # the service goes on: the other replica (and Serve's replacement) take the next jobs
    nxt = server.client.submit(PHOTO, "monkey.png", seed=5, steps=1)
    assert server.client.wait(nxt, poll=0.2, timeout=120)["state"] == "done"
    assert replica not in {r["id"] for r in _replicas(server)}


def test_the_addon_job_runner_runs_a_job_through_it(server, tmp_path):
    """The add-on's worker-thread job (health, submit, wait, preview, download) as a Remote service."""
    _replicas(server)
    up = Upload(PHOTO, "monkey.png", None, 512, 512, 512, 512)
    job = ReconstructJob(lambda should_cancel: CupidClient.from_token_file(server.token_file),
                         JobRequest(up, "object", 7, 2, tmp_path / "results"))
    job.run()
    progress, outcome = job.poll()
    assert outcome is not None and outcome.state == "done", outcome
    assert (progress.device, progress.dtype) == ("cpu", "float32")
    assert job.take_preview() is not None   # stage 1's camera and voxels came through the board
    scene = json.loads((outcome.bundle / "scene.json").read_text())
    assert scene["objects"] and (outcome.bundle / scene["objects"][0]["glb"]).is_file()
    job.cleanup()


class _FakeModel:
    """Stands in for the model deployment's handle: each call is one replica picking the job up; the
    `plan` says whether that replica dies mid-job or finishes it."""

    def __init__(self, board, plan: list[str]):
        self.board, self.plan, self.calls = board, plan, 0
        self.run = self

    def remote(self, job_id: str):
        from ray.exceptions import ActorDiedError

        async def replica() -> None:
            what = self.plan[self.calls]
            self.calls += 1
            rid = f"r{self.calls}"
            await self.board.register(rid, {"device": "cpu", "dtype": "float32"}, None)
            await self.board.claim(job_id, rid)
            await self.board.progress(job_id, "structure", 0.3)
            if what == "dies":
                raise ActorDiedError()
            await self.board.finish(job_id, rid, "done", "finished", None, None, 0)

        return replica()


@pytest.mark.parametrize("retry,plan,final,calls", [
    (False, ["dies"], ("failed", "worker_lost"), 1),
    (True, ["dies", "finishes"], ("done", None), 2),
    (True, ["dies", "dies"], ("failed", "worker_lost"), 2),   # once more, not forever
])
def test_the_board_fails_a_lost_job_or_retries_it_once(tmp_path, retry, plan, final, calls):
    import asyncio

    from cupid.cluster.board import JobBoard

    async def scenario() -> tuple[dict, int, list]:
        board = JobBoard(instance="i", results_dir=str(tmp_path), app_name="a", model_deployment="m", retry=retry)
        model = board._model = _FakeModel(board, plan)
        inputs = tmp_path / "inputs" / "j1"
        inputs.mkdir(parents=True)
        refusal, public = await board.submit("j1", {"mode": "object", "seed": 0, "inputs_dir": str(inputs)}, 10)
        assert refusal is None and public["state"] == "queued"
        await board.status("j1")
        for _ in range(100):
            await asyncio.sleep(0)
        board._janitor.cancel()
        return await board.status("j1"), model.calls, [inputs.exists(), board._queued_bytes]

    status, n, (inputs_left, queued) = asyncio.run(scenario())
    assert (status["state"], (status["error"] or {}).get("code")) == final and n == calls
    assert not inputs_left and queued == 0   # the spooled photo is freed however the job ends


def test_both_holders_of_jobs_evict_results_in_the_same_order(tmp_path):
    """Past the result cap the oldest unfetched result goes first, then the oldest fetched; the newest stays."""
    from cupid.cluster.board import BoardJob, JobBoard

    board = JobBoard(instance="i", results_dir=str(tmp_path), app_name="a", model_deployment="m")
    board.max_result_bytes = 250
    for n, (finished, fetched) in enumerate([(1.0, 2.0), (3.0, None), (4.0, None), (5.0, None)]):
        zip_path = tmp_path / f"j{n}.zip"
        zip_path.write_bytes(b"z" * 100)
        board._jobs[f"j{n}"] = BoardJob(id=f"j{n}", spec={"mode": "object", "seed": 0}, number=n, result_zip=str(zip_path),
                                        result_bytes=100, finished_at=finished, fetched_at=fetched, state="done")
        board._result_bytes += 100
    board._evict(keep=board._jobs["j3"])
    kept = [jid for jid, job in board._jobs.items() if job.result_zip is not None]
    # 400 bytes held, cap 250: the unfetched j1 (oldest) goes first, then j2; the fetched j0 outlives them
    assert kept == ["j0", "j3"] and board._result_bytes == 200
    assert board._jobs["j1"].gone.startswith("results are capped at 0 MB") and not (tmp_path / "j1.zip").exists()
