"""Read a CUPID result bundle (scene.json, schema ``cupid.scene/1``) completely, without bpy.

Everything the scene builder needs is read and checked here before any datablock exists, so a
bad bundle is refused with one clear message (:class:`SceneBuildError`) and nothing to undo.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

import numpy as np

from .camera import scale_camera_K

SCHEMA_ID = "cupid.scene/1"


class SceneBuildError(Exception):
    """The bundle cannot be turned into a scene; the message is meant for the user."""


@dataclass
class ObjectData:
    """One object of the bundle, read and checked (nothing created in Blender yet)."""

    name: str
    vertices: np.ndarray            # float32 [V, 3], object frame
    faces: np.ndarray               # int32 [F, 3]
    uv: Optional[np.ndarray]        # float32 [V, 2], v up
    colors: Optional[np.ndarray]    # float32 [V, 3] in [0, 1]
    texture: Optional[Path]
    matrix_world: np.ndarray        # float64 [4, 4]
    gaussians: Optional[Path] = None  # the 3DGS PLY (object frame), when the bundle has one
    fit_iou: Optional[float] = None   # how well it explains the photo (scene.json's "fit": {"iou"})
    texture_generated: Optional[Path] = None  # photo texture: the generated colours alone (same uv) ...
    photo_weight: Optional[Path] = None       # ... and how much of each texel the photo gave (grey)


@dataclass
class BundleData:
    """A bundle read into memory: camera, photo and objects."""

    root: Path
    photo: Path
    width: int
    height: int
    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    objects: List[ObjectData]
    units: Optional[str] = None     # "meters" or "relative" (None: a bundle from before units)
    up: Optional[dict] = None       # scene.json's "up" (source, ground_height, ...): the world is upright


def finite_array(value: Any, shape: tuple, what: str, where: str = "scene.json",
                 error: type = SceneBuildError) -> np.ndarray:
    """`value` as a float64 array of `shape` with finite entries, else `error` saying so."""
    try:
        a = np.asarray(value, dtype=np.float64).reshape(shape)
    except (TypeError, ValueError) as exc:
        raise error(f"{where}: {what} must be a {shape} array of numbers") from exc
    if not np.all(np.isfinite(a)):
        raise error(f"{where}: {what} contains NaN or infinite values")
    return a


def _file(root: Path, name: Any, what: str) -> Path:
    if not isinstance(name, str) or not name or os.path.isabs(name) or ".." in Path(name).parts:
        raise SceneBuildError(f"scene.json: {what} must be a file name inside the bundle, got {name!r}")
    path = root / name
    if not path.is_file():
        raise SceneBuildError(f"bundle {root} is incomplete: the {what} file {name!r} is missing")
    return path


def _read_mesh(path: Path, name: str) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # zip, format and OS errors alike mean an unusable file
        raise SceneBuildError(f"object {name!r}: mesh file {path.name} is unreadable ({exc})") from exc
    v, f = arrays.get("vertices"), arrays.get("faces")
    if v is None or f is None:
        raise SceneBuildError(f"object {name!r}: mesh file {path.name} needs `vertices` and `faces`")
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
        raise SceneBuildError(f"object {name!r}: vertices must be [V, 3] and faces [F, 3], "
                              f"got {v.shape} and {f.shape}")
    if v.shape[0] == 0 or f.shape[0] == 0:
        raise SceneBuildError(f"object {name!r}: the mesh is empty")
    if not np.all(np.isfinite(v)):
        raise SceneBuildError(f"object {name!r}: vertices contain NaN or infinite values")
    if f.min() < 0 or f.max() >= v.shape[0]:
        raise SceneBuildError(f"object {name!r}: faces reference vertices that do not exist")
    out = {"vertices": np.ascontiguousarray(v, dtype=np.float32),
           "faces": np.ascontiguousarray(f, dtype=np.int32)}
    for key, width in (("uv", 2), ("colors", 3)):
        a = arrays.get(key)
        if a is not None:
            if a.shape != (v.shape[0], width):
                raise SceneBuildError(f"object {name!r}: {key} must be [{v.shape[0]}, {width}], got {a.shape}")
            out[key] = np.ascontiguousarray(a, dtype=np.float32)
    return out


def _fit_iou(fit: Any) -> Optional[float]:
    """The fit score's IoU in [0, 1], or None when the bundle has none (an older bundle) or it is unusable."""
    try:
        iou = float(fit["iou"])
    except (KeyError, TypeError, ValueError):
        return None
    return iou if 0.0 <= iou <= 1.0 else None


def read_bundle(directory: str | os.PathLike) -> BundleData:
    """Read and check a bundle directory (or its scene.json) completely; raises SceneBuildError."""
    root = Path(directory)
    if root.is_file() and root.name == "scene.json":
        root = root.parent
    scene_path = root / "scene.json"
    if not scene_path.is_file():
        raise SceneBuildError(f"{root} is not a CUPID result: scene.json not found")
    try:
        scene = json.loads(scene_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SceneBuildError(f"{scene_path} is not valid JSON: {exc}") from exc
    if not isinstance(scene, dict) or scene.get("schema") != SCHEMA_ID:
        raise SceneBuildError(f"{scene_path} is not a {SCHEMA_ID} file "
                              f"(schema {scene.get('schema') if isinstance(scene, dict) else None!r})")
    try:
        image, camera, objects = scene["image"], scene["camera"], scene["objects"]
        width, height = int(image["width"]), int(image["height"])
        photo = _file(root, image["file"], "photo")
        if camera.get("convention", "opencv") != "opencv":
            raise SceneBuildError(f"unsupported camera convention {camera.get('convention')!r}")
        K = finite_array(camera["K"], (3, 3), "camera K")
        R = finite_array(camera["R"], (3, 3), "camera R")
        t = finite_array(camera["t"], (3,), "camera t")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, SceneBuildError):
            raise
        raise SceneBuildError(f"{scene_path} lacks a valid image/camera entry ({exc!r})") from exc
    if width < 1 or height < 1:
        raise SceneBuildError(f"scene.json: image size must be positive, got {width}x{height}")
    if not isinstance(objects, list) or not objects:
        raise SceneBuildError(f"{scene_path} holds no objects: nothing was reconstructed")
    data: List[ObjectData] = []
    for k, obj in enumerate(objects):
        try:
            name = str(obj["name"])
            mesh = _read_mesh(_file(root, obj["mesh"], f"object {name!r} mesh"), name)
            tex = _file(root, obj["texture"], f"object {name!r} texture") if obj.get("texture") else None
            generated, weight = (_file(root, obj[key], f"object {name!r} {key}") if obj.get(key) and tex else None
                                 for key in ("texture_generated", "photo_weight"))
            gs = _file(root, obj["gaussians"], f"object {name!r} gaussians") if obj.get("gaussians") else None
            mw = finite_array(obj["matrix_world"], (4, 4), f"object {name!r} matrix_world")
            fit = _fit_iou(obj.get("fit"))
        except (KeyError, TypeError, AttributeError) as exc:
            raise SceneBuildError(f"scene.json: object #{k} is incomplete ({exc!r})") from exc
        if tex is not None and mesh.get("uv") is None:
            tex = generated = weight = None  # a texture without uv cannot be mapped; vertex colours take over
        if generated is None or weight is None:
            generated = weight = None        # the photo texture's mix needs both
        data.append(ObjectData(name, mesh["vertices"], mesh["faces"], mesh.get("uv"),
                               mesh.get("colors"), tex, mw, gs, fit, generated, weight))
    return BundleData(root, photo, width, height, K, R, t, data, _units(scene.get("units")), _up(scene.get("up")))


def _units(value: Any) -> Optional[str]:
    return value if value in ("meters", "relative") else None


def _up(value: Any) -> Optional[dict]:
    """scene.json's "up" with a finite ground height, else None (no upright world to stand a ground on)."""
    if not isinstance(value, dict):
        return None
    try:
        height = float(value.get("ground_height", 0.0))
    except (TypeError, ValueError):
        return None
    return {**value, "ground_height": height} if np.isfinite(height) else None


def find_bundle(path: Path) -> Path:
    """The directory holding scene.json in an extracted result (the client unpacked the zip)."""
    path = Path(path)
    if (path / "scene.json").is_file():
        return path
    for sub in sorted(path.rglob("scene.json")):
        return sub.parent
    raise SceneBuildError(f"the backend result has no scene.json ({path})")


def bundle_photo(root: str | os.PathLike) -> tuple[Path, int, int]:
    """(photo file, width, height) that scene.json names, without reading the meshes."""
    path = Path(root) / "scene.json"
    try:
        image = json.loads(path.read_text(encoding="utf-8"))["image"]
        return _file(Path(root), image["file"], "photo"), int(image["width"]), int(image["height"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SceneBuildError(f"the result {root} cannot be read ({exc.__class__.__name__}: {exc})") from exc


def object_names(root: str | os.PathLike) -> List[str]:
    """The object names scene.json lists (without reading the meshes); [] when unreadable."""
    try:
        scene = json.loads((Path(root) / "scene.json").read_text(encoding="utf-8"))
        return [str(o["name"]) for o in scene["objects"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def bundle_name(root: str | os.PathLike) -> str:
    """What a bundle's scene objects are named after: its folder, which the add-on and
    ``cupid reconstruct -o out/NAME`` name after the photo (a re-run's ``.001`` dropped)."""
    return re.sub(r"\.\d{3}$", "", Path(root).name) or "result"


def restore_original_photo(root: Path, width: int, height: int, photo: bytes, photo_name: str) -> None:
    """Make a bundle computed on a downscaled copy describe the original photo: write the photo as
    `photo_name`, point scene.json's image at it, and scale K (scene.json's, and preview.json's when
    the bundle has one) to its pixels. Pixel coordinates are measured from the image's top-left
    corner, so a copy of w×h pixels maps to the photo by x·(width/w), y·(height/h)."""
    path = Path(root) / "scene.json"
    try:
        scene = json.loads(path.read_text(encoding="utf-8"))
        w, h = int(scene["image"]["width"]), int(scene["image"]["height"])
        K = scale_camera_K(scene["camera"]["K"], w, h, width, height)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SceneBuildError(f"{path} cannot be read back ({exc})") from exc
    scene["camera"]["K"] = K.tolist()
    scene["image"] = {"file": photo_name, "width": int(width), "height": int(height)}
    preview_path = Path(root) / "preview.json"
    if preview_path.is_file():
        try:
            preview = json.loads(preview_path.read_text(encoding="utf-8"))
            pw, ph = int(preview["width"]), int(preview["height"])
            preview["camera"]["K"] = scale_camera_K(preview["camera"]["K"], pw, ph, width, height).tolist()
            preview["width"], preview["height"] = int(width), int(height)
            preview_path.write_text(json.dumps(preview), encoding="utf-8")
        except (OSError, ValueError, KeyError, TypeError):
            preview_path.unlink(missing_ok=True)   # a preview that no longer fits the photo would mislead
    (Path(root) / photo_name).write_bytes(photo)
    path.write_text(json.dumps(scene, indent=1), encoding="utf-8")
