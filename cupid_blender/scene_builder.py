"""Build a Blender scene from a CUPID result bundle (read by :mod:`cupid_blender.io.bundle`).

All or nothing: the bundle is read and checked completely (``io/bundle.py``) before any
datablock is created, and every datablock made while building is recorded so that a failure
midway removes them all and restores the scene camera and render settings. The caller (an
operator with the UNDO flag) turns a successful build into one undo step.

Render resolution is scene-wide in Blender while every CUPID camera belongs to one photo. The
remedy used here: each camera stores its photo size and pixel aspect as custom properties
(``cupid_resolution``, ``cupid_pixel_aspect``) and :func:`sync_render_resolution` copies them
onto the scene when a CUPID camera becomes the scene camera (a depsgraph / frame handler
installed by the add-on, plus the "Set Active CUPID Camera" operator), once: what the artist
sets afterwards stays. Building a second reconstruction never alters the first camera, and
switching back restores the first photo's resolution.

Meshes are written with ``foreach_set`` on flat numpy buffers (``from_pydata`` goes through
Python lists and is several times slower on million-triangle meshes).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional

import bpy
import numpy as np
from mathutils import Matrix

from .camera import add_camera
from .composite import add_composite, remove_composite_if_unused
from .io.clipping import clip_range
from .io.bundle import SceneBuildError, bundle_name, read_bundle
from .io.gaussians import GaussianFileError, read_gaussians
from .io.settings import free_suffix
from .results import (BUNDLE_PROP, FIT_PROP, NAME_PROP, PART_PROP, PHOTO_FACTOR_PROP, PHOTO_MIX_NODE, SUFFIX_PROP,
                      result_identity, set_photo_texture, take_over)

RESOLUTION_PROP = "cupid_resolution"
PIXEL_ASPECT_PROP = "cupid_pixel_aspect"
SYNCED_PROP = "cupid_synced_camera"   # on the scene: the name of the camera whose photo size it last took
# (a name, not an ID pointer: a pointer would count as a user and keep a deleted camera in the file)

__all__ = ["SceneBuildError", "read_bundle", "BuildResult", "build_from_bundle", "result_suffix",
           "create_mesh", "camera_resolution", "sync_render_resolution", "SceneState", "Created",
           "new_result_collection", "add_result_camera", "point_cloud"]


@dataclass
class BuildResult:
    """What :func:`build_from_bundle` created."""

    collection: Any
    camera: Any
    objects: List[Any] = field(default_factory=list)
    gaussians: List[Any] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)   # one-line remarks for the artist (units, composite)


class Created:
    """Datablocks made during one build, removed in reverse order if the build fails."""

    def __init__(self) -> None:
        self.items: List[tuple] = []

    def add(self, kind: str, block: Any) -> Any:
        self.items.append((kind, block))
        return block

    def remove_all(self) -> None:
        for kind, block in reversed(self.items):
            coll = getattr(bpy.data, kind)
            try:
                if block.name in coll and coll[block.name] == block:
                    coll.remove(block, do_unlink=True)
            except (ReferenceError, RuntimeError):
                pass  # already freed together with its owner
        self.items.clear()


@dataclass
class SceneState:
    """What building a result changes scene-wide (the scene camera, the photo size it synced, the
    render size and pixel aspect), to put back when the result is taken away again."""

    camera: Any
    synced: Any
    render: tuple
    units: tuple = ()

    @classmethod
    def capture(cls, scene: Any) -> "SceneState":
        r, us = scene.render, scene.unit_settings
        return cls(scene.camera, scene.get(SYNCED_PROP),
                   (r.resolution_x, r.resolution_y, r.pixel_aspect_x, r.pixel_aspect_y),
                   (us.system, us.scale_length, us.length_unit))

    def restore(self, scene: Any) -> None:
        try:
            scene.camera = self.camera
        except ReferenceError:   # that camera is gone
            scene.camera = None
        if self.synced is None:
            scene.pop(SYNCED_PROP, None)
        else:
            scene[SYNCED_PROP] = self.synced
        r = scene.render
        r.resolution_x, r.resolution_y, r.pixel_aspect_x, r.pixel_aspect_y = self.render
        if self.units:
            us = scene.unit_settings
            us.system, us.scale_length, us.length_unit = self.units
        remove_composite_if_unused(scene)   # a composite set up for a result that is gone again


def create_mesh(name: str, vertices: np.ndarray, faces: np.ndarray, uv: Optional[np.ndarray] = None,
                colors: Optional[np.ndarray] = None) -> Any:
    """A triangle mesh datablock from flat arrays, with a per-corner UV map and point colours."""
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


def _socket(sockets: Any, identifier: str) -> Any:
    return next(s for s in sockets if s.identifier == identifier)


def _photo_mix(nodes: Any, links: Any, photo: Any, generated: Any, weight: Any, at: Any) -> Any:
    """The photo texture's nodes: the generated texture and the final one (the photo where it sees the
    surface) mixed by the result's Photo Texture factor; the texture is generated + weight·(photo -
    generated), so the factor f shows generated + f·weight·(photo - generated). The weight image is
    there for the artist (e.g. as a mask), unconnected."""
    gen = nodes.new("ShaderNodeTexImage")
    gen.image, gen.interpolation, gen.label = generated, "Linear", "Generated Texture"
    gen.location = (at.x - 700, at.y - 300)
    mix = nodes.new("ShaderNodeMix")
    mix.data_type, mix.blend_type = "RGBA", "MIX"
    mix.name = mix.label = PHOTO_MIX_NODE
    mix.location = (at.x - 250, at.y)
    mix.inputs[0].default_value = 1.0
    links.new(gen.outputs["Color"], _socket(mix.inputs, "A_Color"))
    links.new(photo.outputs["Color"], _socket(mix.inputs, "B_Color"))
    w = nodes.new("ShaderNodeTexImage")
    w.image, w.label = weight, "Photo Weight"
    w.location = (at.x - 700, at.y - 600)
    return _socket(mix.outputs, "Result_Color")


def _material(name: str, image: Any, use_colors: bool, created: Created, generated: Any = None,
              weight: Any = None) -> Any:
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
        tex.location = (bsdf.location.x - 700, bsdf.location.y)
        colour = tex.outputs["Color"]
        if generated is not None and weight is not None:
            tex.label = "Photo Texture"
            colour = _photo_mix(nodes, links, tex, generated, weight, bsdf.location)
        links.new(colour, bsdf.inputs["Base Color"])
    elif use_colors:
        col = nodes.new("ShaderNodeVertexColor")
        col.layer_name = "Color"
        col.location = (bsdf.location.x - 400, bsdf.location.y)
        links.new(col.outputs["Color"], bsdf.inputs["Base Color"])
    return mat


def _load_image(path: Path, name: str, created: Created, colorspace: str = "sRGB") -> Any:
    """Load and pack an image (the bundle may live in a temporary directory)."""
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


def point_cloud(label: str, xyz: np.ndarray, attributes: list, rgba: Optional[np.ndarray], coll: Any,
                created: Created) -> Any:
    """A point cloud object with named point attributes ((name, type, key, values) each) and an
    RGBA `color`. Python cannot size a point cloud in Blender 4.5: a vertex-only mesh with the
    attributes is built and converted (the mesh stays if conversion is impossible, e.g. in Edit Mode)."""
    mesh = created.add("meshes", bpy.data.meshes.new(label))
    mesh.vertices.add(len(xyz))
    mesh.attributes["position"].data.foreach_set("vector", np.ascontiguousarray(xyz, np.float32).ravel())
    for name, kind, key, values in attributes:
        mesh.attributes.new(name, kind, "POINT").data.foreach_set(key, np.ascontiguousarray(values, np.float32).ravel())
    if rgba is not None:
        mesh.color_attributes.new("color", "FLOAT_COLOR", "POINT").data.foreach_set(
            "color", np.ascontiguousarray(rgba, np.float32).ravel())
    obj = created.add("objects", bpy.data.objects.new(label, mesh))
    coll.objects.link(obj)
    obj[PART_PROP] = True
    try:
        with bpy.context.temp_override(active_object=obj, object=obj, selected_objects=[obj],
                                       selected_editable_objects=[obj]):
            bpy.ops.object.convert(target="POINTCLOUD")
    except (RuntimeError, TypeError):  # poll failed (e.g. Edit Mode), or a Blender without this target
        pass
    if obj.type == "POINTCLOUD":
        created.add("pointclouds", obj.data)
        created.items.remove(("meshes", mesh))
        bpy.data.meshes.remove(mesh)
    return obj


def _gaussians(label: str, path: Path, coll: Any, created: Created) -> Any:
    """A point cloud object of the object's 3D Gaussians (object frame, placed like the mesh) with
    named point attributes: opacity, scale (vector), rotation (quaternion w, x, y, z), color (RGBA,
    alpha = opacity) and radius (Blender's point size: the mean standard deviation). Hidden in the
    viewport and in renders: it is there to show or to hand to a Gaussian-splat viewer."""
    try:
        g = read_gaussians(path)
    except GaussianFileError as exc:
        raise SceneBuildError(f"object {label!r}: {exc}") from exc
    attributes = [("opacity", "FLOAT", "value", g.opacity), ("scale", "FLOAT_VECTOR", "vector", g.scale),
                  ("rotation", "QUATERNION", "value", g.rotation), ("radius", "FLOAT", "value", g.scale.mean(axis=1))]
    rgba = np.concatenate([g.color, g.opacity[:, None]], axis=1)
    obj = point_cloud(label, g.xyz, attributes, rgba, coll, created)
    obj.hide_render = True
    try:
        obj.hide_set(True)
    except RuntimeError:  # not in the active view layer
        obj.hide_viewport = True
    return obj


def _names_taken(base: str, objects: list, extra: Optional[Callable[[str], bool]]) -> Callable[[str], bool]:
    """Is suffix `sfx` taken by any name a result called `base` would give its datablocks?"""
    def taken(sfx: str) -> bool:
        d = bpy.data
        labels = [f"{base} {o}{sfx}" for o in objects]
        return (f"CUPID {base}{sfx}" in d.collections or f"{base} camera{sfx}" in d.objects
                or f"{base} camera{sfx}" in d.cameras or f"{base} photo{sfx}" in d.images
                or any(f"{base} {part}{sfx}" in d.objects for part in ("ground", "sun"))
                or f"{base} ground{sfx}" in d.meshes or f"{base} sun{sfx}" in d.lights
                or any(lb in d.objects or lb in d.meshes or lb in d.materials for lb in labels)
                or (extra is not None and extra(sfx)))
    return taken


def result_suffix(base: str, object_names: list, extra: Optional[Callable[[str], bool]] = None) -> str:
    """The one suffix ("", ".001", ...) that keeps every name of a new result called `base` free:
    its collection, camera, photo and objects (and whatever `extra` says, e.g. a result folder)."""
    return free_suffix(_names_taken(base, object_names, extra))


def new_result_collection(scene: Any, base: str, sfx: str, created: Created) -> Any:
    """The collection "CUPID base sfx", linked to the scene, knowing its name and suffix."""
    coll = created.add("collections", bpy.data.collections.new(f"CUPID {base}{sfx}"))
    coll[NAME_PROP], coll[SUFFIX_PROP] = base, sfx
    scene.collection.children.link(coll)
    return coll


def add_result_camera(scene: Any, coll: Any, base: str, sfx: str, K: Any, R: Any, t: Any, width: int, height: int,
                      photo: Path, created: Created) -> Any:
    """The result's camera "base camera sfx" in `coll`, the scene camera, with the photo as its
    background and the photo's size remembered for the per-camera render resolution."""
    image = _load_image(photo, f"{base} photo{sfx}", created)
    cam = add_camera(scene, K, R, t, width, height, name=f"{base} camera{sfx}")
    created.add("cameras", cam.data)
    created.add("objects", cam)
    if cam.name in scene.collection.objects:
        scene.collection.objects.unlink(cam)
    coll.objects.link(cam)
    cam[PART_PROP] = True
    cam[RESOLUTION_PROP] = [int(width), int(height)]
    cam[PIXEL_ASPECT_PROP] = [float(scene.render.pixel_aspect_x), float(scene.render.pixel_aspect_y)]
    scene[SYNCED_PROP] = cam.name  # add_camera gave the scene this photo's size
    cam.data.show_background_images = True
    bg = cam.data.background_images.new()
    bg.image = image
    bg.alpha = 1.0
    bg.display_depth = "BACK"
    bg.frame_method = "STRETCH"
    return cam


def _reach(data: Any, cam: Any) -> float:
    """How far the ground plane must reach from the origin: three times the farther of the objects'
    footprint and the camera (the plane catches shadows only, so its edge is never seen)."""
    corners = []
    for od in data.objects:
        lo, hi = od.vertices.min(0).astype(np.float64), od.vertices.max(0).astype(np.float64)
        box = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        corners.append(box @ od.matrix_world[:3, :3].T + od.matrix_world[:3, 3])
    pts = np.concatenate(corners + [np.array([list(cam.matrix_world.translation)])])
    return 3.0 * float(np.linalg.norm(pts[:, :2], axis=1).max())


def set_units(scene: Any, units: Optional[str]) -> Optional[str]:
    """A result in meters sets the scene's length unit to meters (a relative one changes nothing)."""
    if units != "meters":
        return None
    us = scene.unit_settings
    if (us.system, us.length_unit, round(us.scale_length, 9)) == ("METRIC", "METERS", 1.0):
        return None
    us.system, us.scale_length, us.length_unit = "METRIC", 1.0, "METERS"
    return "the scene's length unit is now meters, as the result's"


def _build(data: Any, scene: Any, base: str, sfx: str, created: Created,
           progress: Optional[Callable[[str, float], None]], composite: bool = False) -> BuildResult:
    """Every datablock of a read bundle, in a new collection, named with `sfx`."""
    coll = new_result_collection(scene, base, sfx, created)
    cam = add_result_camera(scene, coll, base, sfx, data.K, data.R, data.t, data.width, data.height, data.photo,
                            created)
    result = BuildResult(collection=coll, camera=cam)
    n = len(data.objects)
    for k, od in enumerate(data.objects):
        if progress is not None:
            progress("building scene", k / n)
        label = f"{base} {od.name}"
        mesh = created.add("meshes", create_mesh(label + sfx, od.vertices, od.faces, od.uv, od.colors))
        image = _load_image(od.texture, f"{label} texture{sfx}", created) if od.texture else None
        generated = weight = None
        if image is not None and od.texture_generated is not None and od.photo_weight is not None:
            generated = _load_image(od.texture_generated, f"{label} generated{sfx}", created)
            weight = _load_image(od.photo_weight, f"{label} photo weight{sfx}", created, colorspace="Non-Color")
        mesh.materials.append(_material(label + sfx, image, od.colors is not None, created, generated, weight))
        obj = created.add("objects", bpy.data.objects.new(label + sfx, mesh))
        coll.objects.link(obj)
        obj.matrix_world = Matrix(od.matrix_world.tolist())
        obj[PART_PROP] = True
        if od.fit_iou is not None:
            obj[FIT_PROP] = od.fit_iou
        result.objects.append(obj)
        if od.gaussians is not None:
            splats = _gaussians(f"{label} gaussians{sfx}", od.gaussians, coll, created)
            splats.matrix_world = obj.matrix_world
            result.gaussians.append(splats)
    clip = clip_range(data.R, data.t, [(od.vertices.min(0), od.vertices.max(0), od.matrix_world)
                                        for od in data.objects if len(od.vertices)])
    if clip is not None:  # the camera sees every object, however near or far the point map put it
        cam.data.clip_start, cam.data.clip_end = clip
    if composite:
        ground = data.up.get("ground_height") if data.up else None
        if data.up is None:
            result.notes.append("this result predates upright worlds: no ground plane, so no shadows")
        note = add_composite(scene, coll, base, sfx, cam, ground, _reach(data, cam), created)
        if note:
            result.notes.append(note)
    note = set_units(scene, data.units)
    if note:
        result.notes.append(note)
    if progress is not None:
        progress("building scene", 1.0)
    return result


def build_from_bundle(directory: str | os.PathLike, scene: Any = None, name: Optional[str] = None,
                      progress: Optional[Callable[[str, float], None]] = None,
                      suffix: Optional[str] = None, replace: Any = None, composite: bool = False) -> BuildResult:
    """Build one collection (objects + camera with the photo as background) from a bundle.

    `name` names the result (default: the bundle's folder, named after the photo): collection
    "CUPID name", "name camera", "name photo", "name object_0" ..., all with the same `suffix`
    (default: the first free one). With `replace` (a result collection: a preview, or a result
    being refined) the new objects take the place of its parts and keep its name and suffix; they
    are built completely under a free suffix first, so a failure leaves the old ones in place.
    Raises SceneBuildError with a user-facing message; in that case nothing stays behind in
    bpy.data and the scene's camera and render size are as before.
    """
    data = read_bundle(directory)
    scene = scene if scene is not None else bpy.context.scene
    state = SceneState.capture(scene)
    names = [od.name for od in data.objects]
    if replace is not None:
        base, sfx = result_identity(replace)
        build_sfx = result_suffix(base, names)
    else:
        base = name or bundle_name(data.root)
        sfx = build_sfx = suffix if suffix is not None else result_suffix(base, names)
    created = Created()
    try:
        result = _build(data, scene, base, build_sfx, created, progress, composite)
        if replace is not None:
            take_over(replace, result.collection, [block for _, block in created.items], build_sfx, sfx)
            result.collection = replace
            set_photo_texture(replace, getattr(replace, PHOTO_FACTOR_PROP, 1.0))   # the artist's factor stays
        result.collection[BUNDLE_PROP] = bpy.path.relpath(str(data.root)) if bpy.data.filepath else str(data.root)
        if replace is not None:
            scene[SYNCED_PROP] = result.camera.name   # renamed: the scene took this camera's photo size
        return result
    except BaseException as exc:
        created.remove_all()
        state.restore(scene)
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


def sync_render_resolution(scene: Any, force: bool = False) -> bool:
    """When a CUPID camera has just become the scene camera, give the scene its photo's size and
    pixel aspect (the percentage stays the artist's). The scene remembers which camera it last did
    this for (``cupid_synced_camera``, by name), so a size the artist sets afterwards is never undone; `force`
    applies it again (the "Set Active CUPID Camera" button). Safe inside a depsgraph handler: it
    writes only when the camera changed. Returns whether the render size changed."""
    cam = scene.camera
    if not force and scene.get(SYNCED_PROP) == (cam.name if cam is not None else None):
        return False
    if cam is None:
        scene.pop(SYNCED_PROP, None)
        return False
    scene[SYNCED_PROP] = cam.name
    res = camera_resolution(cam)
    if res is None:
        return False
    w, h, ax, ay = res
    r = scene.render
    if (r.resolution_x, r.resolution_y) == (w, h) and \
            math.isclose(r.pixel_aspect_x, ax) and math.isclose(r.pixel_aspect_y, ay):
        return False
    r.resolution_x, r.resolution_y = w, h
    r.pixel_aspect_x, r.pixel_aspect_y = ax, ay
    return True
