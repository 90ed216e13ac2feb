"""Issue #25's object, prompt, decoding and kept-job cases against a real `cupid serve`, with the
server process's resident memory (VmRSS now, VmHWM the peak) printed after each.

It starts the server itself (its pid is what it measures), on loopback with a port of its own:

    PYTHONPATH=backend:. python bench/probe_bombs.py [--model weights/tiny] [--jobs 200] [--max-kept-mb 512]

Cases: the 4 KB label PNG of 300 squares on 1000x1000 (was +2.6 GB), 4000 squares on 2000x2000 (was
10.8 GB and a 500), 2000 prompt points on 256x256 (was +1.2 GB), an EPS upload (ran Ghostscript), one
PNG of 64 MP (peaked at 5 GB while decoding), then `--jobs` tiny jobs kept for refines (was 516 ->
1492 MB after 200). Give `--max-kept-mb 1000000` to see the kept jobs without a cap.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "backend"), str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from cupid_blender.client import BackendError, CupidClient  # noqa: E402
from helpers.bad_images import eps_file, label_squares  # noqa: E402


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


class Served:
    """`python -m cupid serve` on a free loopback port; its memory read from /proc."""

    def __init__(self, model: str, *extra: str):
        self.dir = Path(tempfile.mkdtemp(prefix="probe-bombs-"))
        token = self.dir / "token.json"
        env = {**os.environ, "PYTHONPATH": str(ROOT / "backend"), "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "cupid", "serve", "--port", "0", "--token-file", str(token),
                                      "--model", model, "--device", "cpu", "--max-queue", "64", *extra],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 60
        while not token.exists():
            if self.proc.poll() is not None or time.monotonic() > end:
                raise SystemExit("cupid serve did not start")
            time.sleep(0.1)
        self.client = CupidClient.from_token_file(token, timeout=600)

    def memory(self) -> str:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        rss, hwm = (int(re.search(rf"{f}:\s+(\d+)", status).group(1)) // 1024 for f in ("VmRSS", "VmHWM"))
        return f"RSS {rss:5d} MB, peak {hwm:5d} MB"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def _try(what: str, served: Served, call) -> None:
    t0 = time.monotonic()
    try:
        answer = f"accepted ({call()})"
    except BackendError as exc:
        answer = f"{exc.status} {exc.code}: {exc.message[:90]}"
    print(f"{what:34s} {time.monotonic() - t0:6.2f} s  {served.memory()}  {answer}", flush=True)


def _light_copy(model: Path) -> str:
    """`model` with its checkpoints linked and its pipeline.json exporting only the mesh."""
    copy = Path(tempfile.mkdtemp(prefix="probe-model-"))
    for item in model.iterdir():
        if item.name != "pipeline.json":
            (copy / item.name).symlink_to(item.resolve())
    spec = json.loads((model / "pipeline.json").read_text())
    spec["args"]["export"] = {**spec["args"].get("export", {}), "texture": False, "glb": False, "gaussians": False,
                              "overlay": False}
    (copy / "pipeline.json").write_text(json.dumps(spec))
    return str(copy)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(ROOT / "weights" / "tiny"))
    p.add_argument("--jobs", type=int, default=200, help="tiny jobs kept for refines (0: skip)")
    p.add_argument("--max-kept-mb", type=int, default=None, help="passed on to cupid serve (default: its own)")
    p.add_argument("--light-export", action="store_true",
                   help="a copy of the model whose export writes no texture, GLB, Gaussians or overlay: the same "
                        "stage 1 kept per job, the jobs faster on a busy machine")
    args = p.parse_args()
    extra = ["--max-kept-mb", str(args.max_kept_mb)] if args.max_kept_mb else []
    served = Served(_light_copy(Path(args.model)) if args.light_export else args.model, *extra)
    try:
        c = served.client
        c.health()
        print(f"{'started':34s} {'':8s}  {served.memory()}", flush=True)
        grey = np.full((1000, 1000, 3), 120, np.uint8)
        _try("label PNG, 300 squares, 1 MP", served,
             lambda: c.submit(_png(grey), "room.png", mask_bytes=label_squares(300, 1000), mode="scene"))
        _try("label PNG, 4000 squares, 4 MP", served,
             lambda: c.submit(_png(np.full((2000, 2000, 3), 120, np.uint8)), "room.png",
                              mask_bytes=label_squares(4000, 2000), mode="scene"))
        small = _png(np.full((256, 256, 3), 120, np.uint8))
        _try("2000 prompt points, 256x256", served,
             lambda: c._start_job({"mode": "scene", "prompts": json.dumps({"points": [[5, 5]] * 2000})},
                                  {"image": ("p.png", small)}))
        _try("EPS upload", served, lambda: c.submit(eps_file(), "drawing.eps"))
        big = io.BytesIO()
        Image.new("RGB", (8000, 8000), (100, 150, 200)).save(big, format="PNG")
        _try(f"PNG of 64 MP ({len(big.getvalue()) // 1024} KB), then cancel", served,
             lambda: c.cancel(c.submit(big.getvalue(), "big.png"))["state"])
        if args.jobs:
            photo = (ROOT / "examples" / "monkey.png").read_bytes()
            before = served.memory()
            t0 = time.monotonic()
            for k in range(args.jobs):
                job = c.submit(photo, "monkey.png", seed=k, steps=1)
                c.wait(job, poll=0.05, timeout=600)
                shutil.rmtree(served.dir / "result", ignore_errors=True)
                c.result(job, served.dir / "result", free=False)   # as the add-on fetches an object's result
                if (k + 1) % max(1, args.jobs // 10) == 0:
                    kept = c.health().get("kept_bytes", 0) / 2 ** 20
                    print(f"{k + 1:4d} kept jobs ({time.monotonic() - t0:5.0f} s)   kept stage 1s "
                          f"{kept:6.1f} MB  {served.memory()}", flush=True)
            print(f"kept jobs: before {before}; after {served.memory()}", flush=True)
    finally:
        served.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
