"""`cupid batch` on Ray Data: the photos still to do as a dataset, mapped by a fixed pool of actors
that each hold one loaded pipeline (`BundleMaker`), their records streamed back as they end.

Resuming: a photo whose bundle is complete is `skipped` (its files untouched); a photo that failed
with `bad_input` and whose files have not changed since is not tried again either (it is reported
failed with its earlier reason); everything else runs.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import CliError
from . import ledger
from .catalogue import BatchItem
from .runtime import Placement, cluster_placement, connect, disconnect, require_ray, set_threads
from .worker import BatchOptions, BundleMaker


@dataclass(frozen=True)
class ModelSpec:
    """Which model each worker loads, and how."""

    model: str
    dtype: str = "auto"


@dataclass
class Summary:
    total: int = 0
    ok: int = 0
    skipped: int = 0
    failed: int = 0
    flagged: int = 0
    codes: dict[str, int] = field(default_factory=dict)

    def add(self, record: dict) -> None:
        status = record["status"]
        setattr(self, status, getattr(self, status) + 1)
        self.flagged += bool(record.get("flagged"))
        if status == "failed":
            self.codes[record.get("code") or "?"] = self.codes.get(record.get("code") or "?", 0) + 1

    def line(self) -> str:
        why = ", ".join(f"{n} {c}" for c, n in sorted(self.codes.items()))
        return (f"{self.ok} done, {self.skipped} skipped (already done), {self.failed} failed"
                + (f" ({why})" if why else "") + (f", {self.flagged} flagged below --min-fit" if self.flagged else ""))


def _worker_class(spec: ModelSpec, placement: Placement, options: BatchOptions) -> type:
    """A Ray Data actor class: one pipeline, loaded when the actor starts; rows in, records (as JSON)
    out. Its settings live in the class (Ray would otherwise keep constructor arguments in the object
    store, which a restarted actor may not find)."""

    class CupidBatchWorker:
        def __init__(self) -> None:
            from ..pipeline import CupidPipeline

            set_threads(placement)
            self.maker = BundleMaker(lambda: CupidPipeline.from_pretrained(spec.model, device=placement.device,
                                                                            dtype=spec.dtype), options)
            try:
                self.maker.pipeline()
            except Exception:
                pass  # each photo reports the model's error as its own failure

        def __call__(self, row: dict) -> dict:
            return {"record": json.dumps(self.maker.make(json.loads(row["item"])))}

    return CupidBatchWorker


def _input_signature(item: BatchItem) -> list:
    """What a photo's files were when it was last tried (size and modification time of photo and mask)."""
    sig = []
    for path in (item.photo, item.mask):
        try:
            st = Path(path).stat() if path else None
        except OSError:
            st = None
        sig.append(None if st is None else [st.st_size, st.st_mtime_ns])
    return sig


def plan(items: list[BatchItem], book: ledger.Ledger, options: BatchOptions) -> tuple[list[dict], list[dict]]:
    """(records of photos that need no work now, rows of the photos to run)."""
    names = book.names(i.photo for i in items)
    done, todo, seen = [], [], set()
    for item in items:
        if item.photo in seen:
            continue  # listed twice: once is enough
        seen.add(item.photo)
        name = names[item.photo]
        before = book.records.get(item.photo, {})
        scene = ledger.read_scene(options_out(options) / name)
        if scene is not None:
            fit = ledger.fit_of(scene)
            done.append({**before, "photo": item.photo, "status": "skipped", "code": None, "message": None,
                         "bundle": name, "fit": fit, "flagged": ledger.flagged(fit, options.min_fit),
                         "seconds": 0.0})
        elif (before.get("code") == "bad_input" and before.get("status") == "failed"
              and before.get("input") == _input_signature(item)):
            done.append({**before, "seconds": 0.0, "retried": False})  # unchanged since: it would fail again
        else:
            todo.append({**item.to_row(), "name": name})
    return done, todo


def options_out(options: BatchOptions) -> Path:
    return Path(options.out)


def run_batch(items: list[BatchItem], options: BatchOptions, spec: ModelSpec, *, workers: int, address: str | None,
              device: str, report: Callable[[dict, Summary], None] | None = None,
              announce: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> Summary:
    """Run the batch into `options.out`; every record goes to batch.jsonl and to `report` as it ends."""
    out = options_out(options)
    out.mkdir(parents=True, exist_ok=True)
    summary = Summary(total=len({i.photo for i in items}))
    with ledger.OutputLock(out):
        book = ledger.Ledger(out)
        ledger.remove_partials(out)
        done, todo = plan(items, book, options)

        def finish(record: dict) -> None:
            book.append(record)
            summary.add(record)
            if report is not None:
                report(record, summary)

        for record in done:
            finish(record)
        try:
            if todo:
                signature = {i.photo: _input_signature(i) for i in items}
                for record in _ray_records(todo, options, spec, workers=workers, address=address, device=device,
                                           announce=announce):
                    finish({**record, "input": signature[record["photo"]]})
        finally:
            book.compact(i.photo for i in items)
    return summary


def _ray_records(rows: list[dict], options: BatchOptions, spec: ModelSpec, *, workers: int, address: str | None,
                 device: str, announce: Callable[[str], None]) -> Any:
    """The rows mapped on Ray Data by a pool of `workers` actors; yields each record as it ends."""
    require_ray()
    import ray
    import ray.data

    connected = connect(address)
    try:
        placement, count = cluster_placement(device, min(workers, len(rows)))
        if count < min(workers, len(rows)):
            announce(f"the Ray cluster has room for {count} worker{'s' if count != 1 else ''} "
                     f"({'GPUs' if placement.num_gpus else 'CPU cores'}), not {workers}")
        announce(f"{len(rows)} photo{'s' if len(rows) != 1 else ''} to do: {placement.describe(count)}"
                 + ("" if address is None else f", on the Ray cluster at {address}"))
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        ctx.verbose_stats_logs = False
        import logging
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        # one JSON column: rows whose optional fields differ still share one schema
        ds = ray.data.from_items([{"item": json.dumps(r)} for r in rows], override_num_blocks=len(rows))
        ds = ds.map(_worker_class(spec, placement, options),
                    compute=ray.data.ActorPoolStrategy(size=count, max_tasks_in_flight_per_actor=1),
                    **placement.ray_options())
        for row in ds.iter_rows():
            yield json.loads(row["record"])
    finally:
        if connected:
            disconnect()


__all__ = ["ModelSpec", "Summary", "run_batch", "plan"]
