"""One photo of a batch, on a worker that holds one loaded pipeline: the photo and its row checked
as the service checks an upload, reconstructed into a partial folder, moved into place when complete,
and described by one batch.jsonl record. A failing photo gives a `failed` record with its error
code and never stops the worker.
"""
from __future__ import annotations

import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import CupidError, InputError
from ..server.errors import DiskFull, is_disk_full
from . import ledger


@dataclass(frozen=True)
class BatchOptions:
    """The command line's choices, the same for every photo (a row may set its own mode and seed)."""

    out: str
    mode: str = "object"
    seed: int = 0
    steps: int = 0                  # 0: the model's default
    min_fit: float | None = None


def failure(exc: BaseException, out: Path) -> tuple[str, str]:
    """(code, message) of an exception: a CupidError's own; a full disk's `disk_full`; anything else
    `internal_error` (its traceback to the worker's log, not into the record)."""
    if isinstance(exc, CupidError):
        return exc.code, exc.message
    if is_disk_full(exc):
        full = DiskFull(out)
        return full.code, full.message
    traceback.print_exception(exc, file=sys.stderr)
    return "internal_error", f"internal error ({type(exc).__name__}): {exc}"


class BundleMaker:
    """Turns one item (a `BatchItem.to_row()` plus its bundle `name`) into a bundle and a record."""

    def __init__(self, pipeline_factory: Callable[[], Any], options: BatchOptions):
        self.options = options
        self._factory = pipeline_factory
        self._pipe: Any = None
        self._load_error: tuple[str, str] | None = None

    def pipeline(self) -> Any:
        """The pipeline, loaded at the first photo; a model that cannot load fails every photo with its code."""
        if self._pipe is None and self._load_error is None:
            try:
                self._pipe = self._factory()
            except Exception as exc:  # a missing or broken model: every photo says so
                code, message = failure(exc, Path(self.options.out))
                self._load_error = (code if code != "internal_error" else "model_load_failed", message)
        if self._load_error is not None:
            raise CupidError(self._load_error[1], code=self._load_error[0])
        return self._pipe

    def make(self, item: dict) -> dict:
        from ..scene.masks import check_prompts, parse_prompts
        from ..server.inputs import decode_inputs
        from ..run import reconstruct_bundle

        opts = self.options
        out = Path(opts.out)
        mode = item.get("mode") or opts.mode
        seed = opts.seed if item.get("seed") is None else int(item["seed"])
        record: dict[str, Any] = {"photo": item["photo"], "status": "failed", "code": None, "message": None,
                                  "bundle": None, "mode": mode, "seed": seed, "fit": None, "seconds": 0.0,
                                  "flagged": False}
        partial = ledger.partial_dir(out, item["name"])
        start = time.perf_counter()
        try:
            if item.get("problem"):
                raise InputError(item["problem"])
            photo = Path(item["photo"])
            if not photo.is_file():
                raise InputError(f"photo not found: {photo}")
            mask = Path(item["mask"]) if item.get("mask") else None
            if mask is not None and not mask.is_file():
                raise InputError(f"mask not found: {mask}")
            picks = parse_prompts(item["prompts"]) if item.get("prompts") else None
            if picks is not None and (mode != "scene" or mask is not None):
                raise InputError("prompts pick objects in scene mode, without a mask")
            inputs = decode_inputs(photo, mask, mode)
            if picks is not None:
                check_prompts(*picks, (inputs.photo.shape[1], inputs.photo.shape[0]))
            pipe = self.pipeline()
            reconstruct_bundle(pipe, inputs.photo, partial, mask=inputs.pipeline_mask(mode), mode=mode, seed=seed,
                               steps=opts.steps or None, prompts=picks)
            scene = ledger.read_scene(partial)
            if scene is None:
                raise CupidError("the bundle was written incompletely", code="internal_error")
            ledger.place(partial, out / item["name"])
            fit = ledger.fit_of(scene)
            record.update(status="ok", bundle=item["name"], fit=fit, flagged=ledger.flagged(fit, opts.min_fit))
        except Exception as exc:  # one photo's failure is its record, never the batch's end
            record["code"], record["message"] = failure(exc, out)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
            record["seconds"] = round(time.perf_counter() - start, 3)
        return record
