"""Build a Blender scene from a CUPID result bundle (scene.json, schema ``cupid.scene/1``).

All or nothing: the bundle is read and checked completely before any datablock is created, and
every datablock made while building is recorded so that a failure midway removes them all and
restores the scene camera and render settings. The caller (an operator with the UNDO flag)
turns a successful build into one undo step.

Render resolution is scene-wide in Blender while every CUPID camera belongs to one photo. The
remedy used here: each camera stores its photo size and pixel aspect as custom properties
(``cupid_resolution``, ``cupid_pixel_aspect``) and :func:`sync_render_resolution` copies them
onto the scene whenever the scene camera changes (a depsgraph / frame handler installed by the
add-on, plus the "Set active CUPID camera" operator). Building a second reconstruction thus
never alters the first camera, and switching back restores the first photo's resolution.

Meshes are written with ``foreach_set`` on flat numpy buffers (``from_pydata`` goes through
Python lists and is several times slower on million-triangle meshes).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional

import numpy as np

SCHEMA_ID = "cupid.scene/1"
RESOLUTION_PROP = "cupid_resolution"
PIXEL_ASPECT_PROP = "cupid_pixel_aspect"
BUNDLE_PROP = "cupid_bundle"


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


@dataclass
class BuildResult:
    """What :func:`build_from_bundle` created."""

    collection: Any
    camera: Any
    objects: List[Any] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# reading (no bpy)
# ---------------------------------------------------------------------------------------------

def _matrix(value: Any, shape: tuple, what: str) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=np.float64).reshape(shape)
    except (TypeError, ValueError) as exc:
        raise SceneBuildError(f"scene.json: {what} must be a {shape} array of numbers") from exc
    if not np.all(np.isfinite(a)):
        raise SceneBuildError(f"scene.json: {what} contains NaN or infinite values")
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
        K = _matrix(camera["K"], (3, 3), "camera K")
        R = _matrix(camera["R"], (3, 3), "camera R")
        t = _matrix(camera["t"], (3,), "camera t")
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
            mw = _matrix(obj["matrix_world"], (4, 4), f"object {name!r} matrix_world")
        except (KeyError, TypeError, AttributeError) as exc:
            raise SceneBuildError(f"scene.json: object #{k} is incomplete ({exc!r})") from exc
        if tex is not None and mesh.get("uv") is None:
            tex = None  # a texture without uv cannot be mapped; vertex colours take over
        data.append(ObjectData(name, mesh["vertices"], mesh["faces"], mesh.get("uv"),
                               mesh.get("colors"), tex, mw))
    return BundleData(root, photo, width, height, K, R, t, data)


# ---------------------------------------------------------------------------------------------
# building (bpy)
# ---------------------------------------------------------------------------------------------

class _Created:
    """Datablocks made during one build, removed in reverse order if the build fails."""

    def __init__(self) -> None:
        self.items: List[tuple] = []

    def add(self, kind: str, block: Any) -> Any:
        self.items.append((kind, block))
        return block

    def remove_all(self) -> None:
        import bpy

        for kind, block in reversed(self.items):
            coll = getattr(bpy.data, kind)
            try:
                if block.name in coll and coll[block.name] == block:
                    coll.remove(block, do_unlink=True)
            except (ReferenceError, RuntimeError):
                pass  # already freed together with its owner
        self.items.clear()


def create_mesh(name: str, vertices: np.ndarray, faces: np.ndarray, uv: Optional[np.ndarray] = None,
                colors: Optional[np.ndarray] = None) -> Any:
    """A triangle mesh datablock from flat arrays, with a per-corner UV map and point colours."""
    import bpy

    V, F = int(vertices.shape[0]), int(faces.shape[0])
    mesh = bpy.data.meshes.new(name)
    try:
        # Write through the generic attributes (`position`, `.corner_vert`, the UV layer's
        # `uv` vector array): their foreach_set is a single memcpy, whereas the legacy
        # MeshVertex.co / MeshLoop.vertex_index / MeshUVLoop.uv wrappers go element by element
        # (~100x slower on a million-triangle mesh).
        mesh.vertices.add(V)
        mesh.attributes["position"].data.foreach_set(
            "vector", np.ascontiguousarray(vertices, dtype=np.float32).ravel())
        corners = np.ascontiguousarray(faces, dtype=np.int32).ravel()
        mesh.loops.add(3 * F)
        mesh.attributes[".corner_vert"].data.foreach_set("value", corners)
        mesh.polygons.add(F)
        mesh.polygons.foreach_set("loop_start", np.arange(0, 3 * F, 3, dtype=np.int32))
        if uv is not None:
            layer = mesh.uv_layers.new(name="UVMap")
            layer.uv.foreach_set("vector", np.ascontiguousarray(uv[corners], dtype=np.float32).ravel())
        if colors is not None:
            attr = mesh.color_attributes.new(name="Color", type="FLOAT_COLOR", domain="POINT")
            rgba = np.ones((V, 4), dtype=np.float32)
            rgba[:, :3] = np.clip(colors, 0.0, 1.0)
            attr.data.foreach_set("color", rgba.ravel())
            mesh.color_attributes.active_color = attr
            mesh.color_attributes.render_color_index = mesh.color_attributes.active_color_index
        # validate() on an edge-less mesh builds the edges itself (2.5x cheaper than
        # update(calc_edges=True) followed by validate()) and drops degenerate or duplicate faces.
        # Its return value is then always True (the edges were "missing"), so invalid geometry
        # is recognised by what it removed.
        mesh.validate(verbose=False)
        if (len(mesh.vertices), len(mesh.loops), len(mesh.polygons)) != (V, 3 * F, F):
            raise SceneBuildError(f"object {name!r}: the mesh had invalid geometry")
        mesh.update()
    except BaseException:
        bpy.data.meshes.remove(mesh)
        raise
    return mesh


def _material(name: str, image: Any, use_colors: bool, created: _Created) -> Any:
    import bpy

    mat = created.add("materials", bpy.data.materials.new(name))
    mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = next((n for n in nodes if n.type == "BSDF_PRINCIPLED"), None)
    if bsdf is None:
        bsdf = nodes.new("ShaderNodeBsdfPrincipled")
        out = next(n for n in nodes if n.type == "OUTPUT_MATERIAL")
        links.new(bsdf.outputs["BSDF"], out.inputs["Surface"])
    bsdf.inputs["Roughness"].default_value = 0.8
    if image is not None:
        tex = nodes.new("ShaderNodeTexImage")
        tex.image = image
        tex.interpolation = "Linear"
        tex.location = (bsdf.location.x - 400, bsdf.location.y)
        links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    elif use_colors:
        col = nodes.new("ShaderNodeVertexColor")
        col.layer_name = "Color"
        col.location = (bsdf.location.x - 400, bsdf.location.y)
        links.new(col.outputs["Color"], bsdf.inputs["Base Color"])
    return mat


def _load_image(path: Path, name: str, created: _Created, colorspace: str = "sRGB") -> Any:
    """Load and pack an image (the bundle may live in a temporary directory)."""
    import bpy

    try:
        img = created.add("images", bpy.data.images.load(str(path), check_existing=False))
    except RuntimeError as exc:
        raise SceneBuildError(f"cannot read image {path.name}: {exc}") from exc
    img.name = name
    if img.size[0] == 0 or img.size[1] == 0:
        raise SceneBuildError(f"image {path.name} is unreadable or empty")
    img.colorspace_settings.name = colorspace
    img.pack()
    return img


def _unique_collection_name(base: str) -> str:
    import bpy

    name, k = base, 1
    while name in bpy.data.collections:
        k += 1
        name = f"{base}.{k:03d}"
    return name


def build_from_bundle(directory: str | os.PathLike, scene: Any = None, name: Optional[str] = None,
                      progress: Optional[Callable[[str, float], None]] = None) -> BuildResult:
    """Build one collection (objects + camera with the photo as background) from a bundle.

    `name` names the collection (default: the photo's stem). Raises SceneBuildError with a
    user-facing message; in that case nothing stays behind in bpy.data and the scene's camera
    and render size are as before.
    """
    import bpy
    from mathutils import Matrix

    from .camera import add_camera

    data = read_bundle(directory)
    scene = scene if scene is not None else bpy.context.scene
    render = scene.render
    saved = (scene.camera, render.resolution_x, render.resolution_y, render.resolution_percentage,
             render.pixel_aspect_x, render.pixel_aspect_y)
    base = name or data.photo.stem
    created = _Created()
    try:
        coll = created.add("collections", bpy.data.collections.new(_unique_collection_name(f"CUPID {base}")))
        coll[BUNDLE_PROP] = str(data.root)
        scene.collection.children.link(coll)
        photo = _load_image(data.photo, f"{base} photo", created)

        cam = add_camera(scene, data.K, data.R, data.t, data.width, data.height, name=f"{base} camera")
        created.add("cameras", cam.data)
        created.add("objects", cam)
        if cam.name in scene.collection.objects:
            scene.collection.objects.unlink(cam)
        coll.objects.link(cam)
        cam[RESOLUTION_PROP] = [int(data.width), int(data.height)]
        cam[PIXEL_ASPECT_PROP] = [float(render.pixel_aspect_x), float(render.pixel_aspect_y)]
        cam.data.show_background_images = True
        bg = cam.data.background_images.new()
        bg.image = photo
        bg.alpha = 1.0
        bg.display_depth = "BACK"
        bg.frame_method = "STRETCH"

        result = BuildResult(collection=coll, camera=cam)
        n = len(data.objects)
        for k, od in enumerate(data.objects):
            if progress is not None:
                progress("building scene", k / n)
            label = f"{base} {od.name}"
            mesh = created.add("meshes", create_mesh(label, od.vertices, od.faces, od.uv, od.colors))
            image = _load_image(od.texture, f"{label} texture", created) if od.texture else None
            mesh.materials.append(_material(label, image, od.colors is not None, created))
            obj = created.add("objects", bpy.data.objects.new(label, mesh))
            coll.objects.link(obj)
            obj.matrix_world = Matrix(od.matrix_world.tolist())
            result.objects.append(obj)
        if progress is not None:
            progress("building scene", 1.0)
        return result
    except BaseException as exc:
        created.remove_all()
        scene.camera = saved[0]
        (render.resolution_x, render.resolution_y, render.resolution_percentage,
         render.pixel_aspect_x, render.pixel_aspect_y) = saved[1:]
        if isinstance(exc, SceneBuildError):
            raise
        if isinstance(exc, Exception):
            raise SceneBuildError(f"building the scene failed: {exc}") from exc
        raise


# ---------------------------------------------------------------------------------------------
# per-camera render resolution
# ---------------------------------------------------------------------------------------------

def camera_resolution(cam: Any) -> Optional[tuple]:
    """(width, height, pixel_aspect_x, pixel_aspect_y) stored on a CUPID camera, else None."""
    if cam is None or RESOLUTION_PROP not in cam:
        return None
    w, h = (int(v) for v in cam[RESOLUTION_PROP])
    ax, ay = (float(v) for v in cam.get(PIXEL_ASPECT_PROP, (1.0, 1.0)))
    return w, h, ax, ay


def sync_render_resolution(scene: Any) -> bool:
    """Give the scene the render size of its camera if that is a CUPID camera.

    Writes only when something differs (so it is safe inside a depsgraph handler); returns
    whether anything changed."""
    res = camera_resolution(scene.camera)
    if res is None:
        return False
    w, h, ax, ay = res
    r = scene.render
    if (r.resolution_x, r.resolution_y, r.resolution_percentage) == (w, h, 100) and \
            math.isclose(r.pixel_aspect_x, ax) and math.isclose(r.pixel_aspect_y, ay):
        return False
    r.resolution_x, r.resolution_y, r.resolution_percentage = w, h, 100
    r.pixel_aspect_x, r.pixel_aspect_y = ax, ay
    return True
