"""Background mode as `blender -b --python script.py` runs it: a folder reconstructed by
`bpy.ops.cupid.reconstruct_batch`, then a long job that the test interrupts with Ctrl-C (SIGINT).

    python background.py CONFIG_JSON

CONFIG_JSON: {"zip", "python", "photo", "batch_dir", "results_dir", "result"}. Markers on stdout
("LONG JOB START") tell the test when to press Ctrl-C.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import bpy

from common import JobWatcher, call, install, run_driver, snapshot  # noqa: E402


def main(cfg: dict) -> dict:
    name, prefs = install(cfg["zip"], cfg["python"])
    operators = sys.modules[name + ".operators"]
    prefs.results_dir = cfg["results_dir"]  # the .blend is not saved: results go to the preference's folder
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj)
    out: dict = {"background": bpy.app.background}

    print("BATCH START", flush=True)
    out["batch"] = call("reconstruct_batch", directory=cfg["batch_dir"])
    out["batch"]["collections"] = sorted(c.name for c in bpy.context.scene.collection.children
                                         if c.name.startswith("CUPID"))
    out["batch"]["kept"] = sorted(p.name for p in Path(cfg["results_dir"]).iterdir())
    print("BATCH END", flush=True)

    before = snapshot()
    watcher = JobWatcher(operators)
    print("LONG JOB START", flush=True)
    t0 = time.monotonic()
    res = call("reconstruct", filepath=cfg["photo"], steps=500)
    seconds = time.monotonic() - t0
    print("LONG JOB END", flush=True)
    job = watcher.join()
    client = operators.MANAGER.client(operators.backend_config(bpy.context))
    server_state = None
    if "job_id" in job:
        try:
            server_state = client.status(job["job_id"])["state"]
        except sys.modules[name + ".client"].BackendError as exc:   # the add-on deletes a job it cancelled once it ended
            server_state = "gone" if "no job" in str(exc) else f"error: {exc}"
    out["interrupted"] = {**res, "seconds": seconds, "before": before, "after": snapshot(),
                          "server_state": server_state}
    operators.MANAGER.stop()
    return out


if __name__ == "__main__":
    run_driver(main)
