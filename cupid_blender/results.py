"""A CUPID result in the scene: its collection (which result, which backend job), the objects the
add-on made in it (its *parts*), and replacing or removing them without leftovers.

A result collection carries custom properties: ``cupid_name`` and ``cupid_suffix`` (what its
datablocks are named after: "NAME camera SFX", ...), ``cupid_bundle`` (its kept folder),
``cupid_job`` (the backend job whose stage 1 a refine starts from) and ``cupid_job_size`` (the
photo size that job saw). Every object the add-on made carries ``cupid_part``: a refine replaces
those and leaves anything the artist added to the collection alone. The fit score of an object is
``cupid_fit_iou``.
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Optional

import bpy

BUNDLE_PROP = "cupid_bundle"
NAME_PROP = "cupid_name"
SUFFIX_PROP = "cupid_suffix"
JOB_PROP = "cupid_job"
JOB_SIZE_PROP = "cupid_job_size"
PART_PROP = "cupid_part"
FIT_PROP = "cupid_fit_iou"
PHOTO_MIX_NODE = "CUPID Photo Texture"   # the Mix node of a photo-textured material (generated -> photo)
PHOTO_FACTOR_PROP = "cupid_photo_texture"   # the result's Photo Texture factor (a Collection property)

_DATA = {"MESH": "meshes", "CAMERA": "cameras", "POINTCLOUD": "pointclouds", "MATERIAL": "materials",
         "IMAGE": "images", "COLLECTION": "collections", "OBJECT": "objects", "LIGHT": "lights"}


def is_result(coll: Any) -> bool:
    return coll is not None and (BUNDLE_PROP in coll or NAME_PROP in coll)


def result_collection(obj: Any) -> Optional[Any]:
    """The CUPID result collection an object belongs to, else None."""
    if obj is None:
        return None
    return next((c for c in obj.users_collection if is_result(c)), None)


def result_identity(coll: Any) -> tuple[str, str]:
    """(name, suffix) its datablocks are named with; read from the collection's name for results
    built before the properties existed ("CUPID monkey.002" -> ("monkey", ".002"))."""
    if NAME_PROP in coll:
        return str(coll[NAME_PROP]), str(coll.get(SUFFIX_PROP, ""))
    m = re.fullmatch(r"CUPID (.*?)(\.\d{3})?", coll.name)
    return (m.group(1), m.group(2) or "") if m else (coll.name, "")


def parts(coll: Any) -> list:
    """The objects the add-on made in a result collection."""
    return [o for o in coll.objects if o.get(PART_PROP)]


def result_camera(coll: Any) -> Optional[Any]:
    return next((o for o in parts(coll) if o.type == "CAMERA"), None)


def select_parts(view_layer: Any, coll: Any, active_name: str = "") -> None:
    """Select a result's parts and make one active (`active_name` if it is still there, else its first
    object), so that the panel keeps showing the result (a refine replaces the objects the artist had
    selected). Parts outside the view layer (an excluded collection) are left alone."""
    objects = [o for o in parts(coll) if o.name in view_layer.objects and o.visible_get(view_layer=view_layer)]
    if not objects:
        return
    for obj in view_layer.objects:   # (`selected` may still list the objects the refine removed)
        if obj.select_get(view_layer=view_layer):
            obj.select_set(False, view_layer=view_layer)
    for obj in objects:
        obj.select_set(True, view_layer=view_layer)
    meshes = [o for o in objects if o.type == "MESH"] or objects
    view_layer.objects.active = next((o for o in objects if o.name == active_name), meshes[0])


def photo_mix_nodes(coll: Any) -> list:
    """The Photo Texture mix nodes of the materials of a result's parts."""
    out = []
    for obj in parts(coll):
        if obj.type != "MESH":
            continue
        for mat in obj.data.materials:
            if mat is not None and mat.use_nodes and PHOTO_MIX_NODE in mat.node_tree.nodes:
                out.append(mat.node_tree.nodes[PHOTO_MIX_NODE])
    return out


def set_photo_texture(coll: Any, factor: float) -> None:
    """Show `factor` of the photo on the result's photo-textured materials (0: the generated texture)."""
    for node in photo_mix_nodes(coll):
        node.inputs[0].default_value = min(max(float(factor), 0.0), 1.0)


def remove_blocks(blocks: Iterable[Any]) -> None:
    """Remove datablocks that nothing uses any more, in the order given (data, then materials,
    then images, so that each removal frees the next)."""
    for block in blocks:
        try:
            store = getattr(bpy.data, _DATA[block.id_type])
            if block.name in store and store[block.name] == block and block.users == 0:
                store.remove(block)
        except (ReferenceError, KeyError):
            pass


def compositor_trees(scene: Any) -> list:
    """The compositor node trees of a scene: `node_tree` (Blender 4.x), `compositing_node_group` (5.0)."""
    trees = [getattr(scene, "node_tree", None), getattr(scene, "compositing_node_group", None)]
    return [t for t in trees if t is not None]


def release_images(images: Iterable[Any]) -> None:
    """CUPID's compositor nodes (*Composite over Photo*) let go of photos that are being removed."""
    doomed = {img.as_pointer() for img in images}
    for scene in bpy.data.scenes:
        for tree in compositor_trees(scene):
            for node in tree.nodes:
                if node.type == "IMAGE" and node.name.startswith("CUPID ") and node.image is not None \
                        and node.image.as_pointer() in doomed:
                    node.image = None


def remove_parts(objects: Iterable[Any]) -> None:
    """Remove objects and the data, materials and images only they used."""
    data, materials, images = [], [], []
    for obj in list(objects):
        if obj.data is not None:
            data.append(obj.data)
        if obj.type in ("MESH", "POINTCLOUD"):
            for mat in obj.data.materials:
                if mat is not None:
                    materials.append(mat)
                    if mat.use_nodes:
                        images += [n.image for n in mat.node_tree.nodes if n.type == "TEX_IMAGE" and n.image]
        elif obj.type == "CAMERA":
            images += [bg.image for bg in obj.data.background_images if bg.image is not None]
        bpy.data.objects.remove(obj, do_unlink=True)
    release_images(images)
    remove_blocks(data + materials + images)


def remove_result(coll: Any) -> None:
    """Remove a result's parts, and the collection when nothing of the artist's is left in it."""
    remove_parts(parts(coll))
    if not coll.objects and not coll.children:
        bpy.data.collections.remove(coll)


def take_over(target: Any, source: Any, blocks: Iterable[Any], from_suffix: str, to_suffix: str) -> None:
    """Replace `target`'s parts by the objects of the freshly built collection `source` (which is
    removed), renaming the new datablocks from `from_suffix` to `to_suffix`: the result keeps its
    collection, its names and whatever the artist added to it."""
    new = list(source.objects)
    remove_parts(parts(target))
    for obj in new:
        target.objects.link(obj)
        source.objects.unlink(obj)
    bpy.data.collections.remove(source)
    for block in blocks:
        try:
            name = block.name
        except ReferenceError:   # the source collection, removed above
            continue
        stem = name[: len(name) - len(from_suffix)] if from_suffix and name.endswith(from_suffix) else name
        block.name = stem + to_suffix
