"""`cupid batch` throughput on this machine: photos per minute with 1 and 2 Ray Data workers, beside
the yardstick measured in the same run (the same photos reconstructed one after another in this
process, model loaded once, torch on every core: what a shell loop over one loaded pipeline gives),
and each worker's peak memory (VmHWM of the Ray actor processes).

Two rates per run: `wall` counts everything from the call to the summary (Ray start, workers
loading the model); `steady` counts from the first finished photo to the last, i.e. what a long
catalogue approaches.

Run: PYTHONPATH=backend:. python bench/bench_cluster_batch.py [--photos 8] [--steps 4] [--model weights/tiny]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))

from cupid.cluster.batch import ModelSpec, run_batch  # noqa: E402
from cupid.cluster.catalogue import list_inputs  # noqa: E402
from cupid.cluster.worker import BatchOptions  # noqa: E402


def _actor_peaks(stop: threading.Event, peaks: dict[int, int]) -> None:
    """Peak resident memory (kB) of every Ray Data actor process seen while the batch runs."""
    while not stop.wait(0.2):
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if b"MapWorker" not in (proc / "cmdline").read_bytes():
                    continue
                for line in (proc / "status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peaks[int(proc.name)] = max(peaks.get(int(proc.name), 0), int(line.split()[1]))
            except OSError:
                continue


def yardstick(photos: list[Path], model: str, steps: int, out: Path) -> float:
    """Seconds per photo, one after another in this process (model loaded once, not counted)."""
    import torch

    from cupid.pipeline import CupidPipeline
    from cupid.run import reconstruct_bundle
    from cupid.server.inputs import decode_inputs

    torch.set_num_threads(2)
    pipe = CupidPipeline.from_pretrained(model, device="cpu", dtype="float32")
    start = time.perf_counter()
    for k, photo in enumerate(photos):
        data = decode_inputs(photo, None, "object")
        reconstruct_bundle(pipe, data.photo, out / f"seq{k}", steps=steps or None)
    return (time.perf_counter() - start) / len(photos)


def batch(photos_dir: Path, model: str, steps: int, workers: int, out: Path) -> dict:
    stamps: list[float] = []
    peaks: dict[int, int] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=_actor_peaks, args=(stop, peaks), daemon=True)
    watcher.start()
    start = time.perf_counter()
    summary = run_batch(list_inputs([str(photos_dir)]), BatchOptions(out=str(out), steps=steps),
                        ModelSpec(model, "float32"), workers=workers, address=None, device="cpu",
                        report=lambda rec, _: stamps.append(time.perf_counter()), announce=lambda _: None)
    wall = time.perf_counter() - start
    stop.set()
    watcher.join()
    assert summary.ok == len(stamps), summary.line()
    steady = (len(stamps) - 1) / (stamps[-1] - stamps[0]) * 60 if len(stamps) > 1 else float("nan")
    return {"wall": len(stamps) / wall * 60, "steady": steady, "peaks_mb": sorted(v / 1024 for v in peaks.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--model", default=str(ROOT / "weights" / "tiny"))
    args = ap.parse_args()
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="cupid-bench-batch-"))
    try:
        photos_dir = tmp / "photos"
        photos_dir.mkdir()
        for k in range(args.photos):
            shutil.copy(ROOT / "examples" / "monkey.png", photos_dir / f"photo{k}.png")
        photos = sorted(photos_dir.iterdir())
        seq = yardstick(photos, args.model, args.steps, tmp / "seq")
        print(f"yardstick (one process, 2 torch threads, model loaded once): {seq:.2f} s/photo = "
              f"{60 / seq:.1f} photos/min")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            for workers in (1, 2):
                r = batch(photos_dir, args.model, args.steps, workers, tmp / f"out{workers}")
                peaks = ", ".join(f"{p:.0f}" for p in r["peaks_mb"])
                print(f"cupid batch --workers {workers}: {r['steady']:.1f} photos/min steady "
                      f"({r['steady'] * seq / 60:.2f}x the yardstick), {r['wall']:.1f} photos/min wall "
                      f"incl. start; peak memory per worker {peaks} MB")
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
