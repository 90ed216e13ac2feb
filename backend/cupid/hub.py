"""The one place that talks to the Hugging Face Hub: single files, repository snapshots, the cache.

Why one module: every model the pipeline loads (CUPID's release, the TRELLIS parts, DINOv2, MoGe, the
background remover, SAM) comes from the Hub, and a user needs the same answer whichever of them is
missing: one sentence naming the file and `cupid download`, never a traceback. huggingface_hub's own
error classes are caught here, and nowhere else.

The cache is `CUPID_WEIGHTS_DIR` when set (the add-on's *Weights cache* preference sets it for the
backend it starts), else huggingface_hub's default cache. `cupid download` fills that same cache, after
which `HF_HUB_OFFLINE=1` runs work with no network at all.
"""
from __future__ import annotations

import inspect
import os
import re
from pathlib import Path
from typing import Any, Callable

from .errors import CheckpointError

WEIGHTS_DIR_ENV = "CUPID_WEIGHTS_DIR"


def cache_dir() -> str | None:
    """The weights cache (None: huggingface_hub's default, honouring HF_HOME / HF_HUB_CACHE)."""
    value = os.environ.get(WEIGHTS_DIR_ENV, "").strip()
    return str(Path(value).expanduser()) if value else None


def is_offline() -> bool:
    """Whether huggingface_hub is in offline mode (HF_HUB_OFFLINE)."""
    try:
        from huggingface_hub import constants
        return bool(constants.is_offline_mode() if hasattr(constants, "is_offline_mode") else constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - any failure here means "not known to be offline"
        return False


def _hub_errors() -> tuple[type[BaseException], ...]:
    """The exception classes a Hub call raises for a missing file, repo, permission or network."""
    from huggingface_hub import errors

    names = ("HfHubHTTPError", "LocalEntryNotFoundError", "EntryNotFoundError", "RepositoryNotFoundError",
             "RevisionNotFoundError", "GatedRepoError", "HFValidationError", "OfflineModeIsEnabled")
    found = tuple(getattr(errors, n) for n in names if hasattr(errors, n))
    return found + (OSError, ValueError)


OFFLINE = "offline mode is on (HF_HUB_OFFLINE) and {what} not in the local cache"
AGAIN = "run 'cupid download' again"
NETWORK_ADVICE = "check your network connection (or HF_ENDPOINT / proxy settings)"


def _why(exc: BaseException, what: str = "the file is") -> str:
    """Why a Hub call failed, as a clause: offline mode, else the error's name and its first sentence
    (huggingface_hub's messages run to several sentences and URLs; a cut mid-sentence reads garbled)."""
    if is_offline():
        return OFFLINE.format(what=what)
    text = " ".join(str(exc).split())
    first = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0].rstrip(".") if text else ""
    if len(first) > 200:
        first = first[:200].rsplit(" ", 1)[0] + " ..."
    return f"{type(exc).__name__}{': ' + first if first else ''}"


def _advice(again: str) -> str:
    """What to do next: leave offline mode, or check the network."""
    return f"unset HF_HUB_OFFLINE and {again}" if is_offline() else f"{NETWORK_ADVICE} and {again}"


def hub_file(repo_id: str, filename: str, *, what: str | None = None) -> Path:
    """Local path of `repo_id/filename`, from the cache or downloaded into it.

    Raises CheckpointError with one sentence (which file, why, and `cupid download`).
    """
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, cache_dir=cache_dir()))
    except _hub_errors() as exc:
        label = what or f"{repo_id}/{filename}"
        raise CheckpointError(f"cannot get {label} from Hugging Face: {_why(exc)}. Run 'cupid download' while "
                              f"online, or pass a local model folder") from None


def cached_file(repo_id: str, filename: str) -> Path | None:
    """Local path of `repo_id/filename` when it is already in the cache, else None; never downloads."""
    try:
        from huggingface_hub import try_to_load_from_cache
        found = try_to_load_from_cache(repo_id=repo_id, filename=filename, cache_dir=cache_dir())
    except _hub_errors():
        return None
    return Path(found) if isinstance(found, (str, os.PathLike)) and Path(found).is_file() else None


ByteReport = Callable[[str, int], None]   # (file name in the repository, bytes of it on disk so far)


def hub_files(repo_id: str, patterns: list[str] | None = None) -> list[tuple[str, int]]:
    """(name, size in bytes) of the files of `repo_id` matching `patterns` (one Hub API call)."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import filter_repo_objects

    try:
        info = HfApi().model_info(repo_id, files_metadata=True)
    except _hub_errors() as exc:
        raise CheckpointError(f"could not list {repo_id} on Hugging Face: {_why(exc, 'its file list is')}. "
                              f"To fix it, {_advice(AGAIN)}") from None
    sizes = {s.rfilename: int(s.size or 0) for s in info.siblings or []}
    return [(name, sizes[name]) for name in filter_repo_objects(sorted(sizes), allow_patterns=patterns)]


def _byte_bar(name: str, report: ByteReport) -> type:
    """A stand-in for huggingface_hub's tqdm bar of one file download: every update becomes
    report(name, bytes so far) (the larger count, where a download draws two bars)."""
    seen = {"n": 0}

    class ByteBar:
        disable = False

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.total = kwargs.get("total")
            self.n = int(kwargs.get("initial") or 0)
            self._tell()

        def _tell(self) -> None:
            if self.n > seen["n"]:
                seen["n"] = self.n
                report(name, self.n)

        def update(self, n: float | None = 1) -> None:
            self.n += int(n or 0)
            self._tell()

        def __enter__(self) -> "ByteBar":
            return self

        def __exit__(self, *exc: Any) -> None:
            return None

        def __getattr__(self, attr: str) -> Any:   # refresh, close, set_description, ...: nothing to draw
            return lambda *a, **k: None

    return ByteBar


def hub_snapshot(repo_id: str, patterns: list[str] | None = None, *, cache: str | None = None,
                 on_bytes: ByteReport | None = None) -> Path:
    """Download (resumably) the files of `repo_id` matching `patterns`; returns the snapshot folder.
    With `on_bytes`, the files are fetched one by one first, reporting the bytes of each as they come."""
    from huggingface_hub import hf_hub_download, snapshot_download

    folder = cache if cache is not None else cache_dir()
    try:
        if on_bytes is not None:
            with_bars = "tqdm_class" in inspect.signature(hf_hub_download).parameters
            for name, size in hub_files(repo_id, patterns):
                extra = {"tqdm_class": _byte_bar(name, on_bytes)} if with_bars else {}
                hf_hub_download(repo_id=repo_id, filename=name, cache_dir=folder, **extra)
                on_bytes(name, size)
        return Path(snapshot_download(repo_id=repo_id, allow_patterns=patterns, cache_dir=folder))
    except _hub_errors() as exc:
        raise CheckpointError(f"could not download {repo_id} from Hugging Face: {_why(exc, 'its files are')}. "
                              f"To fix it, {_advice(AGAIN)} (finished files are kept and the "
                              f"download resumes)") from None
