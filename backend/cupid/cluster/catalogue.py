"""What `cupid batch` is given, as one list of photos: photo files, folders of photos, and CSV or
JSONL listings whose rows name a photo and optionally its mask, prompts, seed and mode.

A listing's relative paths are relative to the listing's folder. A row that cannot be used (no
photo column, a seed that is not a number, prompts that are not JSON) is kept as an item with its
problem, so it fails on its own as `bad_input` and the rest of the batch runs.
"""
from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from ..errors import CliError

PHOTO_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
LISTING_SUFFIXES = {".csv", ".jsonl"}
ROW_FIELDS = ("photo", "mask", "prompts", "seed", "mode")


@dataclass(frozen=True)
class BatchItem:
    """One photo to reconstruct, with what its row adds to the command line's options."""

    photo: str                        # absolute path
    mask: str | None = None           # absolute path
    prompts: str | None = None        # JSON {"points": [...], "boxes": [...]} (scene mode)
    seed: int | None = None           # None: --seed
    mode: str | None = None           # None: --mode
    problem: str | None = None        # why the row cannot be used (it fails as bad_input)

    def to_row(self) -> dict[str, Any]:
        return asdict(self)


def list_inputs(inputs: Iterable[str]) -> list[BatchItem]:
    """Every photo the inputs name, in the order given (a folder's photos sorted by name)."""
    items: list[BatchItem] = []
    for text in inputs:
        path = Path(text).expanduser()
        if path.is_dir():
            photos = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES
                            and not p.name.startswith("."))
            if not photos:
                raise CliError(f"no photos in the folder {path} (looked for {', '.join(sorted(PHOTO_SUFFIXES))})")
            items.extend(BatchItem(str(p.resolve())) for p in photos)
        elif path.suffix.lower() in LISTING_SUFFIXES:
            if not path.is_file():
                raise CliError(f"listing not found: {path}")
            items.extend(_read_listing(path))
        elif path.is_file():
            items.append(BatchItem(str(path.resolve())))
        else:
            raise CliError(f"photo not found: {path}")
    if not items:
        raise CliError("no photos to reconstruct")
    return items


def _read_listing(path: Path) -> list[BatchItem]:
    base = path.resolve().parent
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read the listing {path}: {exc}") from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or "photo" not in [f.strip().lower() for f in reader.fieldnames]:
            raise CliError(f"the CSV listing {path} needs a header row with a 'photo' column "
                           f"(optional: {', '.join(ROW_FIELDS[1:])})")
        rows = [({(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}, n + 2)
                for n, row in enumerate(reader)]
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                row = {"_problem": f"line {n} of {path.name} is not JSON: {exc}"}
            rows.append((row if isinstance(row, dict) else {"_problem": f"line {n} of {path.name} is not a JSON "
                                                                         f"object"}, n))
    return [_item(row, line, path, base) for row, line in rows]


def _item(row: dict, line: int, listing: Path, base: Path) -> BatchItem:
    where = f"{listing.name} line {line}"
    photo = row.get("photo")
    if not photo or not isinstance(photo, str):
        return BatchItem(str(listing.resolve()) + f"#{line}", problem=row.get("_problem") or f"{where} names no photo")
    photo_path = str((base / Path(photo).expanduser()).resolve())
    mask = row.get("mask") or None
    fields: dict[str, Any] = {"photo": photo_path,
                              "mask": str((base / Path(mask).expanduser()).resolve()) if isinstance(mask, str) else None}
    problems = []
    prompts = row.get("prompts")
    if isinstance(prompts, (dict, list)):
        fields["prompts"] = json.dumps(prompts)
    elif isinstance(prompts, str) and prompts.strip():
        try:
            json.loads(prompts)
            fields["prompts"] = prompts
        except ValueError:
            problems.append(f"{where}: prompts are not JSON like {{\"points\": [[x, y]], \"boxes\": [[x0, y0, x1, y1]]}}")
    seed = row.get("seed")
    if seed not in (None, ""):
        try:
            value = int(seed)
            if not 0 <= value < 2 ** 63:
                raise ValueError
            fields["seed"] = value
        except (TypeError, ValueError):
            problems.append(f"{where}: seed {seed!r} is not a whole number from 0 to 2^63 - 1")
    mode = row.get("mode")
    if mode not in (None, ""):
        if mode in ("object", "scene"):
            fields["mode"] = mode
        else:
            problems.append(f"{where}: mode {mode!r} is neither object nor scene")
    return BatchItem(**fields, problem="; ".join(problems) or None)
