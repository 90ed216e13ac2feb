"""`cupid serve` under load, bounded in count and time, on loopback only: the queue refuses past its
cap with memory flat, connections are capped and idle ones closed, and a cancel takes effect within a
second in every stage of a real (tiny) model."""
from __future__ import annotations

import io
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

from test_server import PHOTO, Server, _inputs

from cupid_blender.client import BackendError

MB = 1024 * 1024


def _big_photo(side: int) -> bytes:
    """An RGBA cut-out of noise: side² × 4 bytes once decoded, and about as large as a PNG."""
    rgba = np.random.default_rng(0).integers(0, 256, (side, side, 4), dtype=np.uint8)
    rgba[..., 3] = 0
    rgba[side // 4: 3 * side // 4, side // 4: 3 * side // 4, 3] = 255
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _wait_running(client, job: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while client.status(job)["stage"] in ("queued", "loading", "starting"):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_the_queue_refuses_past_its_cap_with_memory_flat(tiny_model, tmp_path):
    side, cap = 2000, 12
    decoded = side * side * 4  # 16 MB a photo
    big = _big_photo(side)
    s = Server(tiny_model, tmp_path, "--max-queue", str(cap), "--max-upload-mb", "32")
    try:
        blocker = s.client.submit(PHOTO, "monkey.png", seed=1, steps=500)  # keeps the others waiting
        _wait_running(s.client, blocker)
        # the first two big uploads set the baseline: the allocator's buffers for one upload and its pixels
        waiting = [s.client.submit(big, "big.png", seed=2 + k) for k in range(2)]
        rss0 = s.rss_kb()
        waiting += [s.client.submit(big, "big.png", seed=4 + k) for k in range(cap - 3)]
        rss1 = s.rss_kb()
        refused = []
        for _ in range(8):
            with pytest.raises(BackendError) as err:
                s.client.submit(big, "big.png")
            refused.append(err.value)
        rss2 = s.rss_kb()
        held = (cap - 3) * decoded / 1024  # KB the queued photos would take if they waited in memory
        print(f"rss KB: baseline {rss0}, +{cap - 3} queued {rss1}, +8 refused {rss2}; holding them: +{held:.0f}")
        h = s.client.health()
        monkey = 480 * 360 * 4  # the running blocker's photo, spooled until it ends
        assert h["queue_length"] == cap and h["queued_bytes"] == (cap - 1) * decoded + monkey
        assert all((e.code, e.status) == ("busy", 503) and e.retry_after and e.retry_after >= 1 for e in refused)
        assert "try again" in refused[0].message
        # holding the photos would add all of `held`; half of it leaves room for the allocator's per-thread
        # arenas and the running blocker's own allocations (CI once saw +40 MB of the 140 MB)
        assert rss1 - rss0 < 0.5 * held and rss2 - rss1 < 0.5 * held
        t0 = time.monotonic()
        for job in [*waiting, blocker]:
            s.client.cancel(job)
        assert {s.client.wait(j, poll=0.05, timeout=30)["state"] for j in [*waiting, blocker]} == {"cancelled"}
        assert time.monotonic() - t0 < 10
        assert s.client.health()["queued_bytes"] == 0
        assert list((s.workdir() / "inputs").iterdir()) == []
        s.client.submit(PHOTO, "monkey.png", steps=1)  # room again
    finally:
        s.stop()


def test_idle_connections_give_way_and_are_closed(tiny_model, tmp_path):
    """60 connections that send nothing against a cap of 8: each new one takes the place of the
    longest idle one (closed silently), none waits for a slot, and the idle ones are gone after about
    the idle timeout. (The cap answers 503 busy only when every slot does work: test_server_slow_clients.)"""
    s = Server(tiny_model, tmp_path, "--max-connections", "8", "--idle-timeout", "1")
    try:
        socks = [socket.create_connection(("127.0.0.1", s.port), timeout=10) for _ in range(60)]
        t0 = time.monotonic()
        answers = []
        for sock in socks:
            data = b""
            while chunk := sock.recv(4096):  # until the server closes it
                data += chunk
            answers.append(data)
            sock.close()
        took = time.monotonic() - t0
        assert answers == [b""] * 60, [a[:60] for a in answers if a][:3]
        assert took < 5.0  # the idle ones were closed after about a second, not left open
        assert s.client.health()["version"]
    finally:
        s.stop()


# ------------------------------------------------------------------ cancel in every stage, tiny model
STAGES = ["condition", "structure", "pose", "latent", "decode", "export"]


class CancelIn:
    """The real pipeline; once the job enters `stage`, another thread cancels it `delay` s later
    (as a DELETE would, arriving while that stage works). Records every progress report."""

    def __init__(self, pipe, stage: str, delay: float = 0.01):
        self.pipe, self.stage, self.delay = pipe, stage, delay
        self.jobs = None
        self.job_id: str | None = None
        self.cancelled_at: float | None = None
        self.reports: list[tuple[float, str, float]] = []
        self._timer: threading.Timer | None = None

    def _cancel(self) -> None:
        while self.job_id is None:
            time.sleep(0.001)
        self.cancelled_at = time.monotonic()
        self.jobs.cancel(self.job_id)

    @property
    def export_settings(self):
        return self.pipe.export_settings

    def reconstruct(self, image, *, progress, **kw):
        """`progress` is the job's `cupid.progress.Progress`; its callback (which the export's reports
        reach too) is watched."""
        inner = progress.callback

        def spy(stage: str, fraction: float) -> None:
            self.reports.append((time.monotonic(), stage, fraction))
            if inner is not None:
                inner(stage, fraction)
            if stage == self.stage and self._timer is None:
                self._timer = threading.Timer(self.delay, self._cancel)
                self._timer.start()

        progress.callback = spy
        return self.pipe.reconstruct(image, progress=progress, **kw)


def _stage_times(reports: list[tuple[float, str, float]], end: float) -> dict[str, float]:
    """Seconds each stage took (from its first report to the next stage's first report)."""
    firsts: dict[str, float] = {}
    for t, stage, _ in reports:
        firsts.setdefault(stage, t)
    order = sorted(firsts, key=firsts.get)
    return {st: (firsts[order[i + 1]] if i + 1 < len(order) else end) - firsts[st] for i, st in enumerate(order)}


def _submit_and_settle(jobs, spy: CancelIn, steps: int):
    """Submit the monkey (seed 5) to `jobs`, whose pipeline is `spy`; return the job once it ended."""
    job = jobs.submit(_inputs(), "object", 5, steps)
    spy.job_id = job.id
    deadline = time.monotonic() + 120
    while job.state in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.005)
    return job


@pytest.fixture(scope="module")
def tiny_pipeline(tiny_model, tmp_path_factory):
    """The tiny model, warmed up; with how long each stage takes uncancelled, right now on this machine."""
    from cupid.pipeline import CupidPipeline
    from cupid.run import reconstruct_bundle
    pipe = CupidPipeline.from_pretrained(tiny_model, device="cpu")
    out = tmp_path_factory.mktemp("warm")
    reconstruct_bundle(pipe, PHOTO, out / "a", steps=1)
    timed = CancelIn(pipe, "never")
    reconstruct_bundle(timed, PHOTO, out / "b", steps=25)
    return pipe, _stage_times(timed.reports, time.monotonic())


@pytest.mark.parametrize("stage", STAGES)
def test_cancel_takes_effect_within_a_second_in_every_stage(tiny_pipeline, stage, tmp_path):
    """A cancel arriving while a stage works ends the job at that stage's end (or at the next sampler
    step): no later stage does any work. With the tiny model that is under a second, unless the machine
    is so loaded that the stage itself takes longer (then: within twice the time it takes uncancelled)."""
    from cupid.server import JobQueue
    pipe, stage_s = tiny_pipeline
    spy = CancelIn(pipe, stage)
    jobs = JobQueue(lambda: spy, root=tmp_path)
    spy.jobs = jobs
    try:
        job = _submit_and_settle(jobs, spy, steps=25)
        assert job.state == "cancelled", job.public()
        took = job.finished_at - spy.cancelled_at
        landed = [st for t, st, _ in spy.reports if t <= spy.cancelled_at][-1]
        after = [(st, f) for t, st, f in spy.reports if t > spy.cancelled_at]
        print(f"cancel in {stage} (landed in {landed}, which takes {stage_s[landed] * 1000:.0f} ms): "
              f"{took * 1000:.0f} ms")
        # at most the landing stage's remaining reports, then the next stage's first one (where it stops)
        later = STAGES[STAGES.index(landed) + 1:]
        assert all(st == landed for st, _ in after[:-1]) and all(st not in later[1:] for st, _ in after), after
        assert took < max(1.0, 2 * stage_s[landed] + 0.2)
        assert job.result_zip is None and not list((jobs.directory / "results").rglob("*")), list((jobs.directory / "results").rglob("*"))
    finally:
        jobs.close()


class CancelAtStart(CancelIn):
    """A DELETE that arrives as the job starts (stage `starting`: its photo read and preprocessed)."""

    def reconstruct(self, image, *, progress, **kw):
        self._cancel()
        return super().reconstruct(image, progress=progress, **kw)


@pytest.mark.parametrize("when", ["starting", "packing", "packed"])
def test_a_cancel_while_starting_or_packing_ends_the_job_cancelled(tiny_pipeline, when, tmp_path, monkeypatch):
    """`starting` stops before the first stage reports; a cancel that arrives while the zip is written
    (`packing`), or just after it was (`packed`), ends the job `cancelled` with no file left, not
    `done` (it used to be ignored there)."""
    import cupid.server.jobs as jobs_module
    from cupid.server import JobQueue
    pipe, _ = tiny_pipeline
    spy = (CancelAtStart if when == "starting" else CancelIn)(pipe, "never")
    jobs = JobQueue(lambda: spy, root=tmp_path)
    spy.jobs = jobs
    real_zip = jobs_module.zip_dir

    def zip_with_a_cancel(directory, target, should_cancel=None):
        if when == "packing":
            spy._cancel()                # the DELETE arrives while the files are being packed
        zipped = real_zip(directory, target, should_cancel=should_cancel)
        if when == "packed":
            spy._cancel()                # ... or once the zip is complete, before the job is done
        return zipped

    monkeypatch.setattr(jobs_module, "zip_dir", zip_with_a_cancel)
    try:
        job = _submit_and_settle(jobs, spy, steps=1)
        took = job.finished_at - spy.cancelled_at
        print(f"cancel in {when}: {took * 1000:.0f} ms")
        assert job.state == "cancelled", job.public()
        assert took < 1.0
        if when == "starting":
            assert spy.reports == []      # no stage ran
        assert job.result_zip is None and not list((jobs.directory / "results").rglob("*"))
    finally:
        jobs.close()


def test_cancel_while_the_tiny_model_loads_never_starts_it(tiny_model, tmp_path):
    from cupid.pipeline import CupidPipeline
    from cupid.server import JobQueue
    loading = threading.Event()
    spies = []

    def factory():
        loading.set()
        time.sleep(0.5)  # a real model takes seconds to a minute to load
        spies.append(CancelIn(CupidPipeline.from_pretrained(tiny_model, device="cpu"), "never"))
        return spies[-1]

    jobs = JobQueue(factory, root=tmp_path)
    try:
        job = jobs.submit(_inputs(), "object", 5, 25)
        assert loading.wait(30)
        t0 = time.monotonic()
        jobs.cancel(job.id)
        assert job.state == "cancelled" and time.monotonic() - t0 < 0.1
        deadline = time.monotonic() + 60
        while not spies:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.2)
        assert spies[0].reports == []  # loaded, but the cancelled job never started
    finally:
        jobs.close()
