"""Decisions taken from the artist's settings, in one place and without bpy: what "unset" means
for seed and steps, where results are kept, which model runs (and the panel's line naming it with
the device and precision), how long a CPU job takes, and which files of a folder a batch
reconstructs.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Callable, Mapping, Optional

UNSET = -1                   # seed / steps of the panel and the operator: "use the preferences' default"
MODEL_DEFAULT_STEPS = 25     # what steps = 0 means: the model's own default (TRELLIS pipeline.json)
OFFICIAL_MODEL = "hbb1/Cupid"
RESULTS_FOLDER = "cupid_results"   # beside the saved .blend, or inside the preference's folder
# A full-size job on a 2-core CPU (README "Measured here": bench/bench_pipeline.py on an AMD EPYC with
# AVX512-BF16, 25 min at 25 steps in bfloat16, 37 min in float32):
CPU_FIXED_S = 80.0           # load, DINOv2, the decoders, the SLat encoder and export
CPU_PER_STEP_S = {"bfloat16": 57.0, "float32": 85.0}   # one step of both flows (25-step average, guidance included)
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp", ".exr")
MASK_SUFFIX = "_mask"        # batch: NAME_mask.png is the mask of NAME.jpg


def resolve_sampling(seed: int, steps: int, default_seed: int, default_steps: int) -> tuple[int, int]:
    """(seed, steps) sent to the backend. -1 takes the preferences' default; any other value is
    used as given (seed 0 is a seed; steps 0 asks for the model's default)."""
    return (default_seed if seed == UNSET else seed, default_steps if steps == UNSET else steps)


def results_root(blend_path: str, beside_blend: bool, folder: str, home: Path) -> Path:
    """Where kept results go: `cupid_results` beside the saved .blend file; with no saved file (or
    with "beside the .blend" off), `folder`, else `cupid_results` in the home directory."""
    if beside_blend and blend_path:
        return Path(blend_path).resolve().parent / RESULTS_FOLDER
    if folder:
        return Path(os.path.expanduser(folder))
    return home / RESULTS_FOLDER


def make_results_root(root: Path, home: Path) -> None:
    """Create the results folder. The home folder's own (`~/cupid_results`, used while no .blend is
    saved) holds photos and scenes nobody else chose to share: it is owner-only (0700), made so
    whatever the umask and fixed if it was left readable by others. A folder beside a .blend or
    picked in the preferences keeps the permissions its place gives it (it may be shared on purpose)."""
    root.mkdir(parents=True, exist_ok=True)
    if os.name == "posix" and root == home / RESULTS_FOLDER:
        st = root.stat()
        if st.st_mode & 0o077 and st.st_uid == os.getuid():
            os.chmod(root, 0o700)


def hub_caches(environ: Mapping[str, str], home: Path, weights_dir: str = "") -> list[Path]:
    """Where the backend finds downloaded weights, as ``cupid.hub.cache_dir`` decides: the add-on's
    Weights cache (handed to the backend as CUPID_WEIGHTS_DIR) when set, else the Hugging Face cache
    (HF_HUB_CACHE, else HF_HOME/hub, else XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub;
    the backend inherits Blender's environment)."""
    if weights_dir:
        return [Path(weights_dir).expanduser()]
    if environ.get("HF_HUB_CACHE"):
        return [Path(environ["HF_HUB_CACHE"]).expanduser()]
    if environ.get("HF_HOME"):
        return [Path(environ["HF_HOME"]).expanduser() / "hub"]
    return [Path(environ.get("XDG_CACHE_HOME") or home / ".cache").expanduser() / "huggingface" / "hub"]


def downloaded_official(caches: list[Path]) -> Optional[Path]:
    """The snapshot of the official weights in a hub cache (its pipeline.json is there), or None."""
    folder = "models--" + OFFICIAL_MODEL.replace("/", "--")
    for cache in caches:
        for cfg in sorted((cache / folder / "snapshots").glob("*/pipeline.json")):
            return cfg.parent
    return None


def is_tiny(model: str) -> bool:
    """Is `model` a test model made by `cupid make-tiny-model` (random weights)?"""
    cfg = Path(os.path.expanduser(model)) / "pipeline.json" if model else None
    if cfg is None or not cfg.is_file():
        return False
    try:
        return bool(json.loads(cfg.read_text(encoding="utf-8")).get("args", {}).get("tiny"))
    except (OSError, ValueError, AttributeError):
        return False


def effective_model(pref_model: str, build_model: str, caches: list[Path], setup_model: str = "") -> str:
    """The model the backend runs. The build's default (or the one *Set Up Backend* installed) is the
    tiny model when `install/setup.sh` (or the set-up) ran offline: once the official weights are
    downloaded they replace it, with no change in the preferences. A model the artist picked is used
    as given."""
    if not pref_model:
        return OFFICIAL_MODEL if downloaded_official(caches) else build_model
    if pref_model in (build_model, setup_model) and is_tiny(pref_model) and downloaded_official(caches):
        return OFFICIAL_MODEL
    return pref_model


def model_label(model: str) -> str:
    """How the panel names a model."""
    if is_tiny(model):
        return "tiny test model (random weights)"
    return model if "/" in model and not os.path.isdir(os.path.expanduser(model)) else Path(model).name or model


def model_line(model: str, device: str, dtype: str) -> str:
    """The panel's model line: 'Model: M · Device: cpu (float32)'; the precision is left out while
    it is 'auto' and the backend has not said what it chose."""
    precision = f" ({dtype})" if dtype and dtype != "auto" else ""
    return f"Model: {model} · Device: {device}{precision}"


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")   # "owner/name" on Hugging Face


def full_size_model(model: str) -> bool:
    """Is `model` one the backend can load at full size: a model folder that is there and not a tiny
    test model, or a Hugging Face id ("owner/name")? A path that does not exist is none (the job fails
    before any CPU time is spent: no time warning for it)."""
    if not model:
        return False
    folder = Path(os.path.expanduser(model))
    if folder.is_dir():
        return not is_tiny(model)
    return bool(HUB_ID.fullmatch(model)) and not folder.is_absolute() and "\\" not in model


def runs_on_cpu(device: str, answered: str, record: Optional[Mapping], gpu_seen: bool = True) -> bool:
    """Will the local backend run on the CPU? What it answered (`answered`, once a job or Start
    Backend reached it) decides; before that the Device preference, and for *Auto* what the set-up
    recorded (the device its health check reported, else the PyTorch build it installed: a CPU
    build can only run on the CPU), and without a record whether this computer has a GPU driver at
    all (`gpu_seen`: nvidia-smi, or Apple silicon)."""
    if answered:
        return answered == "cpu"
    if device != "auto":
        return device == "cpu"
    rec = record or {}
    if rec.get("device"):
        return str(rec["device"]) == "cpu"
    if (rec.get("torch") or {}).get("kind"):
        return str(rec["torch"]["kind"]) == "cpu"
    return not gpu_seen


def expected_cpu_seconds(steps: int, dtype: str = "float32") -> float:
    """Rough time of one full-size job on a CPU at `steps` sampler steps (0: the model's default) in the
    precision the backend runs the flows in; float32's (the slower) while it is not known ("auto")."""
    per_step = CPU_PER_STEP_S.get(dtype, CPU_PER_STEP_S["float32"])
    return CPU_FIXED_S + per_step * (steps or MODEL_DEFAULT_STEPS)


def batch_inputs(directory: str | os.PathLike) -> list[tuple[Path, Optional[Path]]]:
    """(photo, mask or None) for every photo in a folder, sorted by name; NAME_mask.EXT is the mask
    of NAME.* and not a photo of its own."""
    files = sorted(p for p in Path(directory).iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
    masks = {p.stem[: -len(MASK_SUFFIX)]: p for p in files if p.stem.endswith(MASK_SUFFIX)}
    return [(p, masks.get(p.stem)) for p in files if not p.stem.endswith(MASK_SUFFIX)]


def folder_name(name: str) -> str:
    """A result's name as a folder name (no path separators or characters Windows refuses)."""
    return re.sub(r'[\\/:*?"<>|\x00-\x1f]', "_", name).strip(". ") or "result"


def free_suffix(taken: Callable[[str], bool]) -> str:
    """The first suffix of "", ".001", ".002", ... for which `taken(suffix)` is false: one suffix for a
    result's collection, camera, photo, objects and folder, numbered as Blender numbers names."""
    if not taken(""):
        return ""
    k = 1
    while taken(f".{k:03d}"):
        k += 1
    return f".{k:03d}"

