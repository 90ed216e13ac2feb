"""Result bundle: a directory with `scene.json` (schema `cupid.scene/1`) and the files it names.

Why a directory of plain files: the Blender add-on, the CLI and the HTTP service all exchange the
same bundle (zipped by the service), and each file is readable by ordinary tools (PNG, GLB, PLY,
NPZ). The schema lives in `cupid/schemas/scene.schema.json`; `load_bundle` checks a bundle
against it and that every file it names is present and consistent.

Everything written is deterministic: identical inputs give byte-identical files (no timestamps;
the NPZ archive is written with a fixed zip date).
"""
from __future__ import annotations

import io
import json
import math
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from .. import __version__
from ..errors import CupidError, InputError
from ..geometry import CameraPose, Similarity, check_rotation, validate_camera
from ..reconstruction import ReconstructedObject, Reconstruction
from .fit import fit_ious
from .glb import write_glb
from .mesh import TexturedMesh, postprocess_mesh
from .texturing import texture_objects
from .overlay import render_overlay
from .ply import gaussians_to_arrays, write_gaussians_ply

__all__ = ["SCHEMA_ID", "SCHEMA_PATH", "BundleError", "ExportOptions", "Bundle",
           "write_bundle", "load_bundle", "write_npz", "dumps_scene"]

SCHEMA_ID = "cupid.scene/1"
SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "scene.schema.json"
SCENE_FILE = "scene.json"
IMAGE_FILE = "input.png"
OVERLAY_FILE = "overlay.png"
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_RESERVED = {"input", "overlay", "scene"}
MIN_TEXTURE, MAX_TEXTURE = 16, 16384
UNITS = ("meters", "relative")   # scene.json "units": lengths measured by a metric point map, or not


class BundleError(CupidError):
    """A result bundle is missing, malformed, or names files that are not there."""

    code = "bad_bundle"
    http_status = 500


@dataclass
class ExportOptions:
    """Knobs of the export. `target_faces=None` keeps the cleaned mesh at full resolution;
    `texture=False` skips xatlas and baking (the NPZ then has colours but no uv).
    `photo_texture` projects the photo's own pixels onto what its camera sees (`cupid.export.texturing`);
    the texture is then as large as the seen surface needs (at least `texture_size`, at most
    `max_texture_size`), else `texture_size`."""

    target_faces: int | None = 20_000
    texture: bool = True
    texture_size: int = 1024
    photo_texture: bool = True
    max_texture_size: int = 4096
    chart_iterations: int = 1
    glb: bool = True
    gaussians: bool = True
    overlay: bool = True
    overlay_alpha: float = 0.6

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None) -> "ExportOptions":
        """Options from a model's export defaults (pipeline.json "export"); unknown keys are refused."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(settings or {}) - known)
        if unknown:
            raise InputError(f"unknown export settings {unknown}: known are {sorted(known)}")
        return cls(**dict(settings or {}))

    def check(self) -> "ExportOptions":
        """These options, or InputError naming the one out of range."""
        for name in ("texture_size", "max_texture_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not MIN_TEXTURE <= value <= MAX_TEXTURE:
                raise InputError(f"{name} must be a whole number of texels from {MIN_TEXTURE} to {MAX_TEXTURE}, "
                                 f"got {value!r}")
        return self


# ---------------------------------------------------------------------------------------------
# small writers
# ---------------------------------------------------------------------------------------------

def write_npz(path: str | Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """np.savez-compatible archive with a fixed zip timestamp, so the bytes are reproducible."""
    path = Path(path)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            body = io.BytesIO()
            np.lib.format.write_array(body, np.ascontiguousarray(arr), allow_pickle=False)
            zf.writestr(info, body.getvalue())
    path.write_bytes(buf.getvalue())
    return path


def _write_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB").save(path, format="PNG")


def _photo_array(photo: Any) -> np.ndarray:
    """PIL image or HxW(x3|x4) array -> HxWx3 uint8."""
    try:
        from PIL import Image
        if isinstance(photo, Image.Image):
            return np.asarray(photo.convert("RGB"), dtype=np.uint8)
    except ImportError:  # pragma: no cover - pillow is a hard dependency
        pass
    arr = np.asarray(photo)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InputError(f"the photo must be an RGB image (H, W, 3), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.size and float(np.nanmax(arr)) <= 1.0:
            arr = np.round(np.nan_to_num(arr) * 255.0)
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr[..., :3])


def _write_grey(path: Path, grey: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(grey, dtype=np.uint8), mode="L").save(path, format="PNG")


def _object_mask(obj: ReconstructedObject, width: int, height: int) -> np.ndarray | None:
    """The object's mask in the photo (float [H, W] in [0, 1]), None when it has none."""
    if obj.mask is None:
        return None
    m = np.asarray(obj.mask, dtype=np.float32)
    if m.ndim == 3 and m.shape[2] == 1:
        m = m[..., 0]
    if m.shape != (height, width):
        raise InputError(f"object {obj.name!r}: its mask is {m.shape[1] if m.ndim > 1 else '?'}x{m.shape[0]} "
                         f"but the photo is {width}x{height}")
    if m.size and float(np.nanmax(m)) > 1.0:
        m = m / 255.0
    return np.clip(np.nan_to_num(m), 0.0, 1.0)


def _check_placement(obj: ReconstructedObject) -> Similarity:
    sim = obj.placement
    try:
        s = float(sim.scale)
        R = np.asarray(sim.R, dtype=np.float64).reshape(3, 3)
        t = np.asarray(sim.t, dtype=np.float64).reshape(3)
    except (AttributeError, TypeError, ValueError) as exc:
        raise InputError(f"object {obj.name!r}: placement must be a similarity (scale, R 3x3, t 3): {exc}") from exc
    if not (math.isfinite(s) and s > 0):
        raise InputError(f"object {obj.name!r}: placement scale must be positive, got {s}")
    if not (np.all(np.isfinite(R)) and np.all(np.isfinite(t))):
        raise InputError(f"object {obj.name!r}: placement contains NaN or infinite values")
    check_rotation(R, f"object {obj.name!r}: placement R")
    return Similarity(scale=s, R=R, t=t)


def dumps_scene(scene: Any, indent: int = 2) -> str:
    """JSON text with objects indented and number lists (vectors, matrix rows) kept on one line,
    so matrices read as matrices. Deterministic for a given input."""

    def enc(x: Any, level: int) -> str:
        pad, inner = " " * (indent * level), " " * (indent * (level + 1))
        if isinstance(x, dict):
            if not x:
                return "{}"
            items = [f"{inner}{json.dumps(str(k))}: {enc(v, level + 1)}" for k, v in x.items()]
            return "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(x, (list, tuple)):
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x):
                return "[" + ", ".join(json.dumps(v, allow_nan=False) for v in x) + "]"
            if not x:
                return "[]"
            return "[\n" + ",\n".join(inner + enc(v, level + 1) for v in x) + "\n" + pad + "]"
        return json.dumps(x, allow_nan=False)

    return enc(scene, 0) + "\n"


def _floats(a: np.ndarray) -> list:
    """JSON-ready nested lists of Python floats (-0.0 normalised to 0.0 for stable text)."""
    return (np.asarray(a, dtype=np.float64) + 0.0).tolist()


# ---------------------------------------------------------------------------------------------
# writer
# ---------------------------------------------------------------------------------------------

def write_bundle(reconstruction: Reconstruction, out_dir: str | Path, options: ExportOptions | None = None,
                 progress: Callable[[str, float], None] | None = None) -> Path:
    """Post-process every object of `reconstruction` and write the bundle; returns `out_dir`.

    The camera is in pixels of the photo; its size must match the photo's. `progress("export",
    fraction)` is called after each object, after each file written (the caller's cancel check runs
    there) and at the end. scene.json is written last, so an
    interrupted export leaves a directory that `load_bundle` refuses rather than a half-valid bundle.
    """
    opts = (options or ExportOptions()).check()
    if reconstruction.units not in UNITS:
        raise InputError(f"units must be one of {', '.join(UNITS)}, got {reconstruction.units!r}")
    img = _photo_array(reconstruction.photo)
    camera = reconstruction.camera
    validate_camera(camera)
    objects = reconstruction.objects
    w, h = camera.width, camera.height
    if (img.shape[1], img.shape[0]) != (w, h):
        raise InputError(f"camera is for a {w}x{h} image but the photo is {img.shape[1]}x{img.shape[0]}")
    names = [o.name for o in objects]
    for n in names:
        if not isinstance(n, str) or not _NAME_RE.match(n) or len(n) > 100 or n.lower() in _RESERVED:
            raise InputError(f"object name {n!r} must be letters, digits, '_', '.', '-' (not starting with "
                             f"'.' or '-', at most 100 characters, not one of {sorted(_RESERVED)})")
    if len(set(names)) != len(names):
        raise InputError(f"object names must be unique, got {names}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    at = [0.0]

    def report(fraction: float | None = None) -> None:
        if progress is not None:
            at[0] = at[0] if fraction is None else fraction
            progress("export", at[0])

    _write_png(out / IMAGE_FILE, img)
    report()
    masks = [_object_mask(o, w, h) for o in objects]
    steps = 2 * len(objects) + 1
    placements: list[Similarity] = []
    meshes: list[TexturedMesh] = []
    for k, spec in enumerate(objects):
        report(k / steps)
        placements.append(_check_placement(spec))
        meshes.append(spec.textured if spec.textured is not None else postprocess_mesh(
            spec.vertices, spec.faces, spec.vertex_colors, target_faces=opts.target_faces,
            texture_size=opts.texture_size, unwrap=opts.texture, chart_iterations=opts.chart_iterations,
            bake=False))
    textures = texture_objects(
        img, camera, meshes, placements, masks, photo_texture=opts.photo_texture, texture_size=opts.texture_size,
        max_texture_size=opts.max_texture_size,
        progress=None if progress is None else lambda k: report((len(objects) + k) / steps))
    entries: list[dict] = []
    overlay_meshes = []
    taken: set[str] = {IMAGE_FILE, OVERLAY_FILE, SCENE_FILE}

    def file_name(stem: str, ext: str) -> str:
        name = f"{stem}{ext}"
        if name in taken:
            raise InputError(f"two files of the bundle would be called {name!r}: rename the objects")
        taken.add(name)
        return name

    for spec, tm, tex, placement, mask in zip(objects, meshes, textures, placements, masks):
        arrays = {"vertices": tm.vertices.astype(np.float32), "faces": tm.faces.astype(np.int32),
                  "colors": tm.colors.astype(np.float32)}
        if tm.uv is not None:
            arrays["uv"] = tm.uv.astype(np.float32)
        entry: dict[str, Any] = {"name": spec.name, "mesh": file_name(spec.name, ".npz")}
        write_npz(out / entry["mesh"], arrays)
        report()
        if tex.texture is not None:
            entry["texture"] = file_name(spec.name, ".png")
            _write_png(out / entry["texture"], tex.texture)
            report()
        if tex.generated is not None:
            entry["texture_generated"] = file_name(f"{spec.name}_generated", ".png")
            _write_png(out / entry["texture_generated"], tex.generated)
            entry["photo_weight"] = file_name(f"{spec.name}_photo_weight", ".png")
            _write_grey(out / entry["photo_weight"], tex.weight)
            report()
        if mask is not None:
            entry["mask"] = file_name(f"{spec.name}_mask", ".png")
            _write_grey(out / entry["mask"], np.round(mask * 255.0))
            report()
        entry.update(tex.info)
        if opts.glb:
            entry["glb"] = file_name(spec.name, ".glb")
            write_glb(out / entry["glb"], tm.vertices, tm.faces, tm.uv, tex.texture, tm.colors,
                      name=spec.name)
            report()
        n_gauss = None
        if opts.gaussians and spec.gaussians is not None:
            g = gaussians_to_arrays(spec.gaussians)
            n_gauss = len(g)
            entry["gaussians"] = file_name(spec.name, ".ply")
            write_gaussians_ply(out / entry["gaussians"], g)
            report()
        transform = placement.to_dict()
        entry["transform"] = {"scale": transform["scale"], "R": _floats(transform["R"]), "t": _floats(transform["t"])}
        entry["matrix_world"] = _floats(placement.matrix())
        counts = {"vertices": int(tm.vertices.shape[0]), "faces": int(tm.faces.shape[0])}
        if n_gauss is not None:
            counts["gaussians"] = n_gauss
        entry["counts"] = counts
        entry["bounds"] = {"min": _floats(tm.vertices.min(axis=0)), "max": _floats(tm.vertices.max(axis=0))}
        entries.append(entry)
        overlay_meshes.append((placement.apply(tm.vertices.astype(np.float64)), tm.faces, tm.colors))

    ious = fit_ious([(v, f) for v, f, _ in overlay_meshes], masks, camera)
    report()
    for entry, iou in zip(entries, ious):
        if iou is not None:
            entry["fit"] = {"iou": round(iou, 6)}
    if opts.overlay:
        labels = [None if iou is None else f"fit IoU {iou:.2f}" for iou in ious]
        ov = render_overlay(img, overlay_meshes, camera.K, camera.R, camera.t, alpha=opts.overlay_alpha,
                            labels=labels)
    else:
        ov = img
    _write_png(out / OVERLAY_FILE, ov)
    report()

    scene = {
        "schema": SCHEMA_ID,
        "generator": {"name": "cupid", "version": __version__},
        "image": {"file": IMAGE_FILE, "width": w, "height": h},
        "camera": {k: (_floats(v) if k != "convention" else v)
                   for k, v in camera.to_dict().items() if k in ("convention", "K", "R", "t")},
        "units": reconstruction.units,
        "objects": entries,
        "overlay": OVERLAY_FILE,
        "export": {"photo_texture": bool(opts.photo_texture), "texture_size": int(opts.texture_size),
                   "max_texture_size": int(opts.max_texture_size)},
    }
    if reconstruction.up is not None:
        scene["up"] = {**reconstruction.up, "camera_height": float(camera.camera_center()[2])}
    text = dumps_scene(scene)
    (out / SCENE_FILE).write_text(text, encoding="utf-8")
    report(1.0)
    return out


# ---------------------------------------------------------------------------------------------
# reader
# ---------------------------------------------------------------------------------------------

@dataclass
class Bundle:
    """A validated bundle: `scene` is the parsed scene.json, `root` its directory."""

    root: Path
    scene: dict = field(repr=False)

    def path(self, name: str) -> Path:
        return self.root / name

    @property
    def objects(self) -> list[dict]:
        return self.scene["objects"]

    def camera(self) -> CameraPose:
        """The bundle's camera, in pixels of its photo."""
        im = self.scene["image"]
        return CameraPose.from_dict(self.scene["camera"], int(im["width"]), int(im["height"]))

    def object(self, key: int | str) -> dict:
        if isinstance(key, int):
            return self.objects[key]
        for o in self.objects:
            if o["name"] == key:
                return o
        raise BundleError(f"bundle {self.root} has no object named {key!r}")

    def load_mesh(self, key: int | str) -> dict[str, np.ndarray]:
        """The object's NPZ arrays (vertices, faces, and uv/colors when present), checked."""
        return _read_mesh(self.path(self.object(key)["mesh"]))


def _load_schema() -> dict:
    try:
        return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot read the bundle schema {SCHEMA_PATH}: {exc}") from exc


def _read_mesh(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise BundleError(f"mesh file {path.name} is unreadable: {exc}") from exc
    for key in ("vertices", "faces"):
        if key not in arrays:
            raise BundleError(f"mesh file {path.name} has no `{key}` array")
    v, f = arrays["vertices"], arrays["faces"]
    if v.dtype != np.float32 or v.ndim != 2 or v.shape[1] != 3:
        raise BundleError(f"{path.name}: vertices must be float32 [V, 3], got {v.dtype} {v.shape}")
    if f.dtype != np.int32 or f.ndim != 2 or f.shape[1] != 3:
        raise BundleError(f"{path.name}: faces must be int32 [F, 3], got {f.dtype} {f.shape}")
    if f.size and (f.min() < 0 or f.max() >= v.shape[0]):
        raise BundleError(f"{path.name}: faces reference vertices that do not exist")
    for key, width in (("uv", 2), ("colors", 3)):
        a = arrays.get(key)
        if a is not None and (a.dtype != np.float32 or a.shape != (v.shape[0], width)):
            raise BundleError(f"{path.name}: {key} must be float32 [{v.shape[0]}, {width}], got {a.dtype} {a.shape}")
    return arrays


def _png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except OSError as exc:
        raise BundleError(f"{path.name} is not a readable image: {exc}") from exc


def _check_texture_sizes(root: Path, obj: dict) -> None:
    """The photo texture's three PNGs share one size (and `texture_size` says it)."""
    keys = [k for k in ("texture", "texture_generated", "photo_weight") if k in obj]
    if len(keys) < 2 and "texture_size" not in obj:
        return
    sizes = {k: _png_size(root / obj[k]) for k in keys}
    expect = {(int(obj["texture_size"]),) * 2} if "texture_size" in obj and "texture" in obj else set()
    if len(set(sizes.values()) | expect) > 1:
        raise BundleError(f"object {obj['name']!r}: its textures differ in size "
                          f"({', '.join(f'{k} {w}x{h}' for k, (w, h) in sizes.items())}"
                          f"{', texture_size ' + str(obj['texture_size']) if 'texture_size' in obj else ''})")


def load_bundle(directory: str | Path, *, check_meshes: bool = True) -> Bundle:
    """Read and validate a bundle directory (or the path of its scene.json).

    Raises BundleError (a CupidError) naming the first problem: unreadable JSON, a schema
    violation (with its JSON path), a missing file, duplicate object names, a matrix_world that
    disagrees with its transform, or (with `check_meshes`) a malformed mesh NPZ.
    """
    root = Path(directory)
    if root.is_file() and root.name == SCENE_FILE:
        root = root.parent
    scene_path = root / SCENE_FILE
    if not scene_path.is_file():
        raise BundleError(f"{root} is not a result bundle: {SCENE_FILE} not found")
    try:
        scene = json.loads(scene_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{scene_path} is not valid JSON: {exc}") from exc
    try:
        import jsonschema
    except ImportError as exc:  # pragma: no cover - jsonschema ships with the backend
        raise BundleError("validating a bundle needs the `jsonschema` package") from exc
    validator = jsonschema.Draft202012Validator(_load_schema())
    errors = sorted(validator.iter_errors(scene), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        raise BundleError(f"{scene_path} does not follow {SCHEMA_ID} at {where}: {err.message}")

    files = [("image", scene["image"]["file"]), ("overlay", scene["overlay"])]
    names = []
    for obj in scene["objects"]:
        names.append(obj["name"])
        for key in ("mesh", "texture", "texture_generated", "photo_weight", "mask", "glb", "gaussians"):
            if key in obj:
                files.append((f"object {obj['name']!r} {key}", obj[key]))
        tr = obj["transform"]
        expect = Similarity(scale=float(tr["scale"]), R=np.asarray(tr["R"], float), t=np.asarray(tr["t"], float)).matrix()
        if np.abs(np.asarray(obj["matrix_world"], float) - expect).max() > 1e-5 * max(1.0, np.abs(expect).max()):
            raise BundleError(f"object {obj['name']!r}: matrix_world does not match its transform")
    if len(set(names)) != len(names):
        raise BundleError(f"object names in {scene_path} are not unique: {names}")
    for what, name in files:
        if not (root / name).is_file():
            raise BundleError(f"bundle {root} is incomplete: the {what} file {name!r} is missing")
    try:
        from PIL import Image
        with Image.open(root / scene["image"]["file"]) as im:
            size = im.size
    except OSError as exc:
        raise BundleError(f"the bundle photo {scene['image']['file']!r} is unreadable: {exc}") from exc
    if size != (scene["image"]["width"], scene["image"]["height"]):
        raise BundleError(f"the bundle photo is {size[0]}x{size[1]} but scene.json says "
                          f"{scene['image']['width']}x{scene['image']['height']}")
    for obj in scene["objects"]:
        _check_texture_sizes(root, obj)
    bundle = Bundle(root, scene)
    if check_meshes:
        for obj in scene["objects"]:
            _read_mesh(root / obj["mesh"])
    return bundle
