"""Object mode's background remover: CUPID's release cuts an opaque photo out with rembg's `u2net`.

`BackgroundRemover(weights)` is cheap to make and loads nothing until it is first called, so photos
that already have alpha, or come with a mask, never touch rembg or onnxruntime. Sessions are loaded
once per weights file and shared (onnxruntime sessions run concurrently). The weights are never
fetched by rembg itself (that goes to ~/.u2net at run time): the official u2net.onnx comes from the
weights cache through `cupid.hub` (`config.U2NET_REPO`, which `cupid download` fetches; checked
against rembg's md5), and a model directory may bring its own remover file (the tiny model does).
"""
from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import config
from .errors import CheckpointError
from .hub import hub_file

_sessions: dict[str, Any] = {}
_lock = threading.Lock()


def u2net_weights() -> Path:
    """The official u2net.onnx from the weights cache (fetched into it if missing and online)."""
    return hub_file(config.U2NET_REPO, config.U2NET_FILE,
                    what=f"the background remover's weights ({config.U2NET_REPO}/{config.U2NET_FILE})")


def _check_md5(path: Path, expected: str) -> None:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise CheckpointError(f"{path} is not rembg's u2net.onnx (md5 {digest.hexdigest()}, expected {expected}): "
                              f"delete it and run 'cupid download' again")


def _open_session(path: Path) -> Any:
    """rembg's own `u2net` session class (the release's), reading the weights from `path`."""
    try:
        import onnxruntime as ort
        from rembg.sessions.u2net import U2netSession
    except ImportError as exc:
        raise CheckpointError(f"the background remover needs the packages rembg and onnxruntime ({exc}): "
                              f"reinstall the backend (pip install -e ./backend), or give a mask") from None

    class _CachedU2netSession(U2netSession):
        @classmethod
        def download_models(cls, *args: Any, **kwargs: Any) -> str:
            return str(path)

    opts = ort.SessionOptions()
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit():  # as rembg.new_session does
        opts.inter_op_num_threads = opts.intra_op_num_threads = int(threads)
    try:
        return _CachedU2netSession("u2net", opts)
    except Exception as exc:  # onnxruntime raises its own (pybind) exception types for bad files
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise CheckpointError(f"cannot load the background remover {path}: {reason}") from None


def load_session(weights: str | os.PathLike | None = None) -> Any:
    """The rembg session for `weights` (None: the official u2net), loaded once and cached."""
    path = Path(os.fspath(weights)).expanduser().resolve() if weights is not None else None
    key = str(path) if path is not None else "official"
    with _lock:
        if key not in _sessions:
            if path is None:
                path = u2net_weights()
                _check_md5(path, config.U2NET_MD5)
            elif not path.is_file():
                raise CheckpointError(f"background remover {path} not found (the model's pipeline.json names it "
                                      f"as its background_model)")
            _sessions[key] = _open_session(path)
        return _sessions[key]


class BackgroundRemover:
    """Callable RGB photo -> RGBA cut-out, exactly as the release calls `rembg.remove`."""

    def __init__(self, weights: str | os.PathLike | None = None):
        self.weights = weights

    @classmethod
    def for_model(cls, model_dir: str | os.PathLike, spec: str | None) -> "BackgroundRemover":
        """The remover a model names in pipeline.json ("background_model", relative to its directory),
        else the official u2net."""
        return cls(Path(os.fspath(model_dir)) / spec if spec else None)

    def __call__(self, image: Image.Image) -> Image.Image:
        session = load_session(self.weights)  # first: it reports a missing onnxruntime before rembg exits on it
        import rembg

        # rembg min-max normalises u2net's map: a constant map (nothing found) divides 0 by 0 and
        # casts NaN to an empty mask; that case is reported by the caller, so keep numpy quiet here.
        with np.errstate(divide="ignore", invalid="ignore"):
            return rembg.remove(image, session=session)
