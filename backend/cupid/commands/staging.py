"""The output folder of `cupid reconstruct`: refused when it holds something else, written whole or not at all.

The bundle is written into a hidden sibling (``.NAME.partial-PID``) and renamed to NAME when it is
complete, so an error or Ctrl-C leaves nothing behind (no folder holding only preview.json), and
`--overwrite` replaces an earlier bundle only once the new one is there.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

from ..errors import CliError

BUNDLE_MARKERS = ("scene.json", "preview.json")   # what makes a folder a CUPID bundle --overwrite may replace


def check_output(out_dir: Path, overwrite: bool) -> None:
    """Refuse, before any work, an output that is a file, or a non-empty folder without --overwrite (and,
    with it, one that holds no CUPID bundle: --overwrite replaces a bundle, never someone's other files)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CliError(f"the output {out_dir} is a file; -o names a folder")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise CliError(f"the output folder {out_dir} is not empty: name a new folder, or add --overwrite to "
                       f"replace the bundle in it")
    if not any((out_dir / name).is_file() for name in BUNDLE_MARKERS):
        raise CliError(f"the output folder {out_dir} holds no CUPID bundle (no scene.json), so --overwrite "
                       f"leaves it alone: name a new or empty folder")


def _missing_parents(directory: Path) -> list[Path]:
    """The folders above and including `directory` that do not exist yet, innermost first."""
    missing = []
    while not directory.exists() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    return missing


@contextlib.contextmanager
def staging(out_dir: Path) -> Iterator[Path]:
    """A fresh folder to write the bundle into: renamed to `out_dir` (replacing what is there) when the
    block ends, removed with the parent folders it made when the block raises (an error, Ctrl-C)."""
    out_dir = Path(os.path.abspath(out_dir))
    made = _missing_parents(out_dir.parent)
    work = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)   # a SIGKILLed run's, by a process of the same number
        work.mkdir()
        yield work
        _replace(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        for directory in made:
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise


def _replace(work: Path, out_dir: Path) -> None:
    """`work` becomes `out_dir`; an existing `out_dir` goes only after that succeeded."""
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    if not out_dir.exists():
        os.replace(work, out_dir)
        return
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out_dir, old)
    try:
        os.replace(work, out_dir)
    except BaseException:
        os.replace(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)
