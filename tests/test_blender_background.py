"""`blender -b --python` with the installed zip (issue #16, point 9): a folder of photos becomes one
collection each through `bpy.ops.cupid.reconstruct_batch(directory=...)`, with a stage-and-percent
line printed while each job runs; Ctrl-C during a job cancels it on the backend and leaves the
scene as it was, and the script goes on to its end."""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("bpy", reason="needs Blender as a Python module (bpy 4.5)")
pytestmark = [pytest.mark.blender, pytest.mark.slow]

from tests.blender_scripts import launch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "examples" / "monkey.png"
DRIVER = REPO / "tests" / "blender_scripts" / "background.py"
PROGRESS = re.compile(r"^CUPID: (\S[^\n]*?) (\d+)%$", re.M)


def _wait(log: Path, proc: subprocess.Popen, pattern: re.Pattern, start: int, timeout: float) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = pattern.search(log.read_text(errors="replace"), start)
        if m:
            return m
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        time.sleep(0.05)
    raise AssertionError(f"no {pattern.pattern!r} in:\n{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("blender_background")
    model, zip_path = launch.tiny_zip(tmp)
    batch = tmp / "photos"
    batch.mkdir()
    shutil.copy(PHOTO, batch / "monkey.png")
    shutil.copy(PHOTO, batch / "teapot.png")
    w, h = Image.open(PHOTO).size
    mask = np.where(launch.ellipse(w, h, 240, 170, 80, 100), 255, 0).astype(np.uint8)
    Image.fromarray(mask).save(batch / "teapot_mask.png")   # the mask of teapot.png, not a photo
    (batch / "notes.txt").write_text("not a photo")
    cfg = {"zip": str(zip_path), "python": sys.executable, "photo": str(PHOTO), "batch_dir": str(batch),
           "results_dir": str(tmp / "results"), "result": str(tmp / "result.json")}
    proc, log = launch.start(DRIVER, cfg, tmp)
    try:
        start = _wait(log, proc, re.compile(r"LONG JOB START"), 0, 600).end()
        # a progress line of the long job's sampler, past 0 %, while it runs: press Ctrl-C
        seen = _wait(log, proc, re.compile(r"^CUPID: structure [1-9]\d*%$", re.M), start, 300).group(0)
        running_when_seen = proc.poll() is None
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return {"result": launch.result(cfg, proc, log), "log": log.read_text(errors="replace"), "seen": seen,
            "running_when_seen": running_when_seen, "tmp": tmp}


def test_a_folder_becomes_one_collection_per_photo(run):
    batch = run["result"]["batch"]
    assert run["result"]["background"]
    assert batch["ret"] == ["FINISHED"], batch
    assert batch["collections"] == ["CUPID monkey", "CUPID teapot"]   # teapot_mask.png and notes.txt are not photos
    assert batch["kept"] == ["monkey", "teapot"]
    kept = json.loads((run["tmp"] / "results" / "teapot" / "scene.json").read_text())
    assert kept["objects"]


def test_progress_lines_are_printed_while_jobs_run(run):
    log = run["log"]
    batch = log[log.index("BATCH START"):log.index("BATCH END")]
    assert "CUPID: [1/2] monkey.png" in batch and "CUPID: [2/2] teapot.png" in batch
    backend_stages = {"loading", "condition", "structure", "pose", "latent", "decode", "export", "packing"}
    for k, photo in enumerate(batch.split("CUPID: [")[1:]):  # each job: from the start to the download
        lines = [(m.group(1), int(m.group(2))) for m in PROGRESS.finditer(photo)]
        first = "starting backend" if k == 0 else "uploading"   # the second job finds the backend up (#24)
        assert lines[0] == (first, 0) and lines[-1] == ("downloading result", 100), lines
        assert {stage for stage, _ in lines} & backend_stages, lines
    # the long job printed its sampler's percent while it ran: the test saw it before Ctrl-C
    assert run["running_when_seen"] and re.fullmatch(r"CUPID: structure [1-9]\d*%", run["seen"])


def test_ctrl_c_cancels_cleanly(run):
    case = run["result"]["interrupted"]
    assert case["ret"] == ["CANCELLED"] and case["message"] == "Reconstruction cancelled"
    # the backend stopped the job too, and the add-on deleted it there once it ended
    assert case["server_state"] in ("cancelled", "gone"), case["server_state"]
    assert case["before"] == case["after"]                  # the scene is as it was
    assert case["seconds"] < 120                            # 500 steps would take far longer
    long_job = run["log"][run["log"].index("LONG JOB START"):]
    assert "CUPID: Ctrl-C: cancelling the reconstruction" in long_job and "LONG JOB END" in long_job
    assert "Traceback" not in run["log"] and "KeyboardInterrupt" not in run["log"]
