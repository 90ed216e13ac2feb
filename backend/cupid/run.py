"""One reconstruction job as the CLI and the service run it: reconstruct, then write the bundle.

Why here: inference (`cupid.pipeline`) and export (`cupid.export`) do not know each other; the
callers join them, with one progress bar over both and the model's own export defaults.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

from .export import ExportOptions, write_bundle
from .progress import CancelCheck, Progress, ProgressCallback


def reconstruct_bundle(pipe: Any, image: Any, out_dir: str | os.PathLike, *, progress: ProgressCallback | None = None,
                       should_cancel: CancelCheck | None = None, export: Mapping[str, Any] | None = None,
                       **options: Any) -> Path:
    """`pipe.reconstruct(image, **options)` written to `out_dir` (scene.json last); returns `out_dir`.

    `options`: mask, mode, seed, steps as `CupidPipeline.reconstruct` takes them. `export`: export
    options that replace the model's (e.g. {"photo_texture": False}; None values are left out)."""
    job = Progress(progress, should_cancel)
    return _write(pipe, pipe.reconstruct(image, progress=job, **options), out_dir, job, export)


def refine_bundle(pipe: Any, first: Any, camera: Any, out_dir: str | os.PathLike, *, steps: int | None = None,
                  progress: ProgressCallback | None = None, should_cancel: CancelCheck | None = None,
                  export: Mapping[str, Any] | None = None) -> Path:
    """`pipe.refine(first, camera)` (stage 2 from a kept stage 1, with a given camera) written to
    `out_dir`: the photo texture is projected again, through the moved camera."""
    job = Progress(progress, should_cancel)
    return _write(pipe, pipe.refine(first, camera, steps=steps, progress=job), out_dir, job, export)


def export_options(pipe: Any, export: Mapping[str, Any] | None = None) -> ExportOptions:
    """The model's export defaults (pipeline.json "export") with the caller's choices on top."""
    options = ExportOptions.from_settings(getattr(pipe, "export_settings", None))
    chosen = {k: v for k, v in (export or {}).items() if v is not None}
    return dataclasses.replace(options, **chosen).check() if chosen else options


def _write(pipe: Any, reconstruction: Any, out_dir: str | os.PathLike, job: Progress,
           export: Mapping[str, Any] | None = None) -> Path:
    """The bundle with the model's export defaults (and the caller's), on the rest of the job's progress bar."""
    return write_bundle(reconstruction, out_dir, export_options(pipe, export), progress=job.remainder())
