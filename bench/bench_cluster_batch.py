"""`cupid batch` throughput on this machine: photos per minute with 1 and 2 Ray Data workers, the
1-worker run being the yardstick (one pipeline on every core, one photo after another), measured in
the same run, and each worker's peak memory (VmHWM of the Ray actor processes).

Two rates per run: `wall` counts everything from the call to the summary (workers starting and
loading the model); `steady` counts from the first finished photo to the last, i.e. what a long
catalogue approaches. `start` is the time to the first finished photo.

Run: PYTHONPATH=backend:. python bench/bench_cluster_batch.py [--photos 12] [--steps 4] [--model weights/tiny]
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


def _actor_pids() -> set[int]:
    pids = set()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"MapWorker" in (proc / "cmdline").read_bytes():
                pids.add(int(proc.name))
        except OSError:
            continue
    return pids


def _actor_peaks(stop: threading.Event, peaks: dict[int, int]) -> None:
    """Peak resident memory (kB) of every Ray Data actor process that starts while the batch runs."""
    earlier = _actor_pids()   # an earlier run's actors, still exiting
    while not stop.wait(0.2):
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) in earlier:
                continue
            try:
                if b"MapWorker" not in (proc / "cmdline").read_bytes():
                    continue
                for line in (proc / "status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peaks[int(proc.name)] = max(peaks.get(int(proc.name), 0), int(line.split()[1]))
            except OSError:
                continue


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
    return {"wall": len(stamps) / wall * 60, "steady": steady, "start": stamps[0] - start,
            "peaks_mb": sorted(v / 1024 for v in peaks.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=12)
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
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            base = None
            for workers in (1, 2):
                r = batch(photos_dir, args.model, args.steps, workers, tmp / f"out{workers}")
                base = base or r
                peaks = ", ".join(f"{p:.0f}" for p in r["peaks_mb"])
                print(f"cupid batch --workers {workers}: {r['steady']:.1f} photos/min steady "
                      f"({r['steady'] / base['steady']:.2f}x 1 worker), {r['wall']:.1f} photos/min wall "
                      f"({r['wall'] / base['wall']:.2f}x), first photo after {r['start']:.1f} s; peak memory per "
                      f"worker process {peaks} MB", flush=True)
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
