"""OUT/batch.jsonl and the bundle folders beside it: names, what is already done, and moving a
finished bundle into place.

A bundle is written into a hidden `.partial-*` folder and renamed to OUT/<name>/ only once it is
complete, so a run that is killed leaves no half bundle that counts as done (the next run removes
the partial folders). A bundle is complete when its scene.json reads and every file it names is
there. batch.jsonl gets one line per photo as each one ends, and is rewritten at the end of a run
with the latest line of every photo (a killed run's lines are kept, and folded by the next run).
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterable

from ..errors import CliError

LEDGER = "batch.jsonl"
PARTIAL_PREFIX = ".partial-"
LOCK = ".batch.lock"
RESERVED = {LEDGER.lower(), LOCK.lower()}


def bundle_files(scene: dict) -> list[str]:
    """The files a scene.json names (photo, overlay, each object's mesh, texture, GLB and PLY)."""
    names = [scene.get("image", {}).get("file"), scene.get("overlay")]
    for obj in scene.get("objects", []):
        names += [obj.get(k) for k in ("mesh", "texture", "glb", "gaussians")]
    return [n for n in names if isinstance(n, str) and n]


def read_scene(bundle: Path) -> dict | None:
    """The bundle's scene.json when the bundle is complete, else None."""
    try:
        scene = json.loads((bundle / "scene.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(scene, dict) or not isinstance(scene.get("objects"), list):
        return None
    return scene if all((bundle / n).is_file() for n in bundle_files(scene)) else None


def fit_of(scene: dict) -> list[float | None]:
    """Each object's fit IoU (the reconstruction's silhouette against its mask), None where unknown."""
    return [(o.get("fit") or {}).get("iou") for o in scene.get("objects", [])]


def flagged(fit: list[float | None], min_fit: float | None) -> bool:
    return min_fit is not None and any(v is not None and v < min_fit for v in fit)


class Ledger:
    """OUT's batch.jsonl (the latest record of every photo) and the bundle names it assigns."""

    def __init__(self, out: Path):
        self.out = out
        self.path = out / LEDGER
        self.records: dict[str, dict] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a kill
                if isinstance(rec, dict) and isinstance(rec.get("photo"), str):
                    self.records[rec["photo"]] = rec

    def names(self, photos: Iterable[str]) -> dict[str, str]:
        """A folder name per photo: its earlier run's name, else its stem, made unique (stem-2, stem-3, ...)
        among the others (case-insensitively: the folders may live on such a disk)."""
        photos = list(dict.fromkeys(photos))
        named = {p: self.records[p]["bundle"] for p in photos
                 if isinstance(self.records.get(p, {}).get("bundle"), str)}
        taken = set(RESERVED) | {r["bundle"].lower() for r in self.records.values() if isinstance(r.get("bundle"), str)}
        for photo in photos:
            if photo in named:
                continue
            stem = (Path(photo).stem.split("#")[0] or "photo").lstrip(".") or "photo"
            name, k = stem, 1
            while name.lower() in taken or name.startswith(PARTIAL_PREFIX):
                k += 1
                name = f"{stem}-{k}"
            taken.add(name.lower())
            named[photo] = name
        return named

    def append(self, record: dict) -> None:
        """Add one photo's record now (a kill later keeps it)."""
        self.records[record["photo"]] = record
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()

    def compact(self, order: Iterable[str]) -> None:
        """Rewrite batch.jsonl with one line per photo: this run's photos in their order, then photos
        of earlier runs that this run did not list."""
        order = list(dict.fromkeys(order))
        rest = [p for p in self.records if p not in set(order)]
        lines = [json.dumps(self.records[p]) for p in order + rest if p in self.records]
        tmp = self.path.with_name(f".{LEDGER}.{os.getpid()}.tmp")
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        os.replace(tmp, self.path)


def partial_dir(out: Path, name: str) -> Path:
    return out / f"{PARTIAL_PREFIX}{name}-{uuid.uuid4().hex[:8]}"


def place(partial: Path, final: Path) -> None:
    """Move a finished bundle into place (an incomplete folder of the same name is replaced)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)


def remove_partials(out: Path) -> int:
    """Remove what killed runs left half written."""
    gone = 0
    for d in out.glob(PARTIAL_PREFIX + "*"):
        shutil.rmtree(d, ignore_errors=True)
        gone += 1
    return gone


class OutputLock:
    """One `cupid batch` at a time per OUT (an advisory lock the OS drops when the process dies)."""

    def __init__(self, out: Path):
        self.path = out / LOCK
        self._fh: Any = None

    def __enter__(self) -> "OutputLock":
        self._fh = self.path.open("a+")
        try:
            import fcntl
        except ImportError:  # Windows: msvcrt's lock on the first byte
            import msvcrt
            try:
                msvcrt.locking(self._fh.fileno(), msvcrt.LK_NBLCK, 1)
            except OSError:
                self._busy()
            return self
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._busy()
        return self

    def _busy(self) -> None:
        self._fh.close()
        raise CliError(f"another cupid batch is writing into {self.path.parent}: wait for it, or use another -o")

    def __exit__(self, *exc: object) -> None:
        self._fh.close()  # the file stays: removing it could let a waiting run lock a file no one else sees
