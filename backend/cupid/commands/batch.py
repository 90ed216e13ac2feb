"""`cupid batch INPUT... -o OUT`: a whole catalogue of photos into bundles, on Ray Data (extra `cluster`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import CliError
from .device import add_device_arguments, add_model_argument, announce_model

NAME = "batch"
HELP = "reconstruct many photos (files, folders, CSV/JSONL listings) into bundles with a pool of workers on Ray"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="photos, folders of photos, or CSV/JSONL listings (columns: photo, and optionally mask, "
                        "prompts, seed, mode; paths relative to the listing)")
    p.add_argument("-o", "--output", required=True,
                   help="folder for one bundle per photo (OUT/<photo name>/) and OUT/batch.jsonl")
    p.add_argument("--workers", type=int, default=1,
                   help="workers, each holding one loaded model: one GPU each where the cluster has GPUs, else a "
                        "share of the CPU cores (default 1)")
    p.add_argument("--ray", metavar="ADDRESS", default=None,
                   help="join this Ray cluster (e.g. auto, or HEAD-IP:6379 from 'ray start --head'); "
                        "default: a Ray runtime on this machine for this run")
    p.add_argument("--mode", choices=("object", "scene"), default="object",
                   help="one object per photo, or every object (a listing's 'mode' column wins)")
    p.add_argument("--steps", type=int, default=0, help="sampler steps per stage (0: the model's default)")
    p.add_argument("--seed", type=int, default=0, help="random seed (a listing's 'seed' column wins)")
    p.add_argument("--min-fit", type=float, default=None, metavar="X",
                   help="flag photos whose fit IoU (reconstruction against the photo's outline) is below X, 0..1")
    add_model_argument(p)
    add_device_arguments(p)


class _Report:
    """Progress: a bar (done / total, failures, ETA) on a terminal; a line per photo in a log."""

    def __init__(self, total: int):
        self.live = sys.stderr.isatty()
        self.count = 0
        self.total = total
        self.bar = None
        if self.live:
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="photo", desc="batch", dynamic_ncols=True)

    def __call__(self, record: dict, summary: object) -> None:
        self.count += 1
        failed = getattr(summary, "failed", 0)
        if self.bar is not None:
            self.bar.set_postfix(failed=failed, refresh=False)
            self.bar.update(1)
            if record["status"] == "failed":
                self.bar.write(f"failed: {record['photo']}: {record.get('code')}: {record.get('message')}")
            return
        what = record["status"] if record["status"] != "failed" else f"failed ({record.get('code')}: " \
                                                                     f"{record.get('message')})"
        extra = f" {record['seconds']:.1f} s" if record["status"] == "ok" else ""
        flag = " flagged" if record.get("flagged") else ""
        print(f"[{self.count}/{self.total}] {Path(record['photo']).name}: {what}{extra}{flag}", file=sys.stderr,
              flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(args: argparse.Namespace) -> int:
    from ..cluster.batch import ModelSpec, run_batch
    from ..cluster.catalogue import list_inputs
    from ..cluster.runtime import require_ray
    from ..cluster.worker import BatchOptions
    from ..server.schemas import check_seed

    require_ray()
    if args.workers < 1:
        raise CliError("--workers must be at least 1")
    if args.steps < 0:
        raise CliError("--steps must be 0 (the model's default) or more")
    if args.min_fit is not None and not 0.0 <= args.min_fit <= 1.0:
        raise CliError("--min-fit is an IoU: from 0 to 1")
    check_seed(args.seed, "--seed")
    items = list_inputs(args.inputs)
    model = announce_model(args.model)
    out = Path(args.output).expanduser().resolve()
    options = BatchOptions(out=str(out), mode=args.mode, seed=args.seed, steps=args.steps, min_fit=args.min_fit)
    report = _Report(len({i.photo for i in items}))
    try:
        summary = run_batch(items, options, ModelSpec(model, args.dtype), workers=args.workers, address=args.ray,
                            device=args.device, report=report)
    finally:
        report.close()
    print(f"{summary.line()}; one line per photo in {out / 'batch.jsonl'}", flush=True)
    return 0 if summary.failed == 0 else 1
