"""*Composite over Photo*: F12 renders a result's objects and their shadows into its photo.

Per result: a ground plane at the bundle's ground height (z = 0 of its upright world) under the
objects, a Cycles shadow catcher, and a sun the artist can turn, both parts of the result's
collection (removed with it). Per scene, once: Cycles, a transparent film, the Standard view
transform (so the photo passes through unchanged) and compositor nodes that lay the render over the
photo of the scene's CUPID camera, stretched to the render size. The scene's settings as they were
are kept on the scene (``cupid_composite``) and put back when its last composited result goes.

A compositor tree of the artist's own is left alone (the set-up says so and composites nothing).
Blender 4.2 / 4.5 keep the compositor in ``scene.node_tree`` (``use_nodes``, a Composite node);
Blender 5.0 in a node group ``scene.compositing_node_group`` whose Group Output is the result, with
the Scale node's space and frame method as menu inputs.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import bpy
import numpy as np
from mathutils import Matrix

from .results import PART_PROP

GROUND_PROP = "cupid_ground"            # on a result's ground plane
STATE_PROP = "cupid_composite"          # on the scene: its settings before the first set-up
NODE_PREFIX = "CUPID "
PHOTO_NODE, SCALE_NODE, OVER_NODE = "CUPID Photo", "CUPID Photo Scale", "CUPID Over Photo"
GROUP_NAME = "CUPID Composite"          # Blender 5: the compositing node group CUPID made
SUN_ELEVATION_DEG = 50.0
SUN_ENERGY = 3.0
NEW_COMPOSITOR = bpy.app.version >= (5, 0, 0)
DEFAULT_NODES = ("R_LAYERS", "COMPOSITE", "VIEWER", "REROUTE")   # what Blender puts in a new compositor tree


def _ours(node: Any) -> bool:
    return node.name.startswith(NODE_PREFIX)


def _tree(scene: Any, create: bool) -> tuple[Optional[Any], bool]:
    """(the compositor tree CUPID may use, whether it is the artist's own): None when there is none and
    `create` is False, or when the artist's tree is there (then True)."""
    if NEW_COMPOSITOR:
        group = scene.compositing_node_group
        if group is not None:
            return (group, False) if group.get(STATE_PROP) else (None, True)
        if not create:
            return None, False
        group = bpy.data.node_groups.new(GROUP_NAME, "CompositorNodeTree")
        group[STATE_PROP] = True
        group.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
        scene.compositing_node_group = group
        return group, False
    tree = scene.node_tree if scene.use_nodes else None
    if tree is not None and any(n.type not in DEFAULT_NODES and not _ours(n) for n in tree.nodes):
        return None, True
    if tree is None:
        if not create:
            return None, False
        scene.use_nodes = True
        tree = scene.node_tree
    return tree, False


def _node(tree: Any, kind: str, name: str, location: tuple) -> Any:
    node = tree.nodes.get(name)
    if node is None:
        node = tree.nodes.new(kind)
        node.name = node.label = name
        node.location = location
    return node


def _build_nodes(tree: Any, photo: Any) -> None:
    """Render Layers over the photo (stretched to the render size) into the tree's output."""
    layers = next((n for n in tree.nodes if n.type == "R_LAYERS"), None) or tree.nodes.new("CompositorNodeRLayers")
    image = _node(tree, "CompositorNodeImage", PHOTO_NODE, (-300, 300))
    image.image = photo
    scale = _node(tree, "CompositorNodeScale", SCALE_NODE, (-80, 300))
    over = _node(tree, "CompositorNodeAlphaOver", OVER_NODE, (160, 200))
    links = tree.links
    links.new(image.outputs["Image"], scale.inputs["Image"])
    if NEW_COMPOSITOR:
        scale.inputs["Type"].default_value = "Render Size"
        scale.inputs["Frame Type"].default_value = "Stretch"
        links.new(scale.outputs["Image"], over.inputs["Background"])
        links.new(layers.outputs["Image"], over.inputs["Foreground"])
        out = next((n for n in tree.nodes if n.type == "GROUP_OUTPUT"), None) or tree.nodes.new("NodeGroupOutput")
        out.location = (400, 200)
        links.new(over.outputs["Image"], out.inputs[0])
    else:
        scale.space, scale.frame_method = "RENDER_SIZE", "STRETCH"
        links.new(scale.outputs["Image"], over.inputs[1])
        links.new(layers.outputs["Image"], over.inputs[2])
        out = next((n for n in tree.nodes if n.type == "COMPOSITE"), None) or tree.nodes.new("CompositorNodeComposite")
        out.location = (400, 200)
        links.new(over.outputs["Image"], out.inputs["Image"])


def _remember_scene(scene: Any) -> None:
    if STATE_PROP in scene:
        return
    view = scene.view_settings
    scene[STATE_PROP] = {"engine": scene.render.engine, "film_transparent": bool(scene.render.film_transparent),
                         "view_transform": view.view_transform, "look": view.look,
                         "use_nodes": bool(getattr(scene, "use_nodes", False))}


def camera_photo(cam: Any) -> Optional[Any]:
    """The photo a CUPID camera shows as its background, or None."""
    if cam is None or cam.type != "CAMERA":
        return None
    return next((bg.image for bg in cam.data.background_images if bg.image is not None), None)


def follow_camera(scene: Any) -> None:
    """Point the composite's photo at the scene camera's (a handler calls this when the camera changes)."""
    if STATE_PROP not in scene:
        return
    tree, _ = _tree(scene, create=False)
    node = tree.nodes.get(PHOTO_NODE) if tree is not None else None
    photo = camera_photo(scene.camera)
    if node is not None and photo is not None and node.image != photo:
        node.image = photo


def _sun_matrix(camera_centre: np.ndarray, height: float) -> Matrix:
    """A sun from behind the camera's left shoulder, SUN_ELEVATION_DEG up: shadows fall back and right."""
    away = np.array([camera_centre[0], camera_centre[1]], float)
    az = math.atan2(away[1], away[0]) if np.linalg.norm(away) > 1e-9 else -math.pi / 2
    az += math.radians(40.0)
    el = math.radians(SUN_ELEVATION_DEG)
    z = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])   # towards the sun
    x = np.cross([0.0, 0.0, 1.0], z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    M = np.eye(4)
    M[:3, 0], M[:3, 1], M[:3, 2] = x, y, z
    M[:3, 3] = [0.0, 0.0, height]
    return Matrix(M.tolist())


def add_composite(scene: Any, coll: Any, base: str, sfx: str, cam: Any, ground_height: Optional[float],
                  extent: float, created: Any) -> Optional[str]:
    """The set-up for one result (see the module's text); `extent`: how far the ground plane must reach
    from the origin. Returns a one-line note for the artist when the compositor was left alone."""
    note = None
    if ground_height is not None:
        half = max(float(extent), 1e-3)
        mesh = created.add("meshes", bpy.data.meshes.new(f"{base} ground{sfx}"))
        mesh.from_pydata([(-half, -half, 0.0), (half, -half, 0.0), (half, half, 0.0), (-half, half, 0.0)], [],
                         [(0, 1, 2, 3)])
        mesh.update()
        ground = created.add("objects", bpy.data.objects.new(f"{base} ground{sfx}", mesh))
        ground.location = (0.0, 0.0, float(ground_height))
        ground.is_shadow_catcher = True
        ground[PART_PROP] = True
        ground[GROUND_PROP] = True
        coll.objects.link(ground)
    light = created.add("lights", bpy.data.lights.new(f"{base} sun{sfx}", "SUN"))
    light.energy = SUN_ENERGY
    light.angle = math.radians(3.0)
    sun = created.add("objects", bpy.data.objects.new(f"{base} sun{sfx}", light))
    centre = np.array(cam.matrix_world.translation)
    sun.matrix_world = _sun_matrix(centre, float(ground_height or 0.0) + max(float(extent), 1e-3))
    sun[PART_PROP] = True
    coll.objects.link(sun)

    _remember_scene(scene)
    scene.render.engine = "CYCLES"
    scene.render.film_transparent = True
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    tree, artists = _tree(scene, create=True)
    if artists:
        note = "CUPID left the scene's own compositor nodes alone: add the photo behind the render there"
    else:
        _build_nodes(tree, camera_photo(scene.camera) or camera_photo(cam))
    return note


def remove_composite_if_unused(scene: Any) -> None:
    """When no composited result is left in `scene`, take CUPID's nodes away and put its settings back."""
    state = scene.get(STATE_PROP)
    if state is None:
        return
    if any(o.get(GROUND_PROP) or (o.type == "LIGHT" and o.get(PART_PROP)) for o in scene.objects):
        return
    tree, _ = _tree(scene, create=False)
    if tree is not None:
        if NEW_COMPOSITOR:
            scene.compositing_node_group = None
            bpy.data.node_groups.remove(tree)
        else:
            for node in [n for n in tree.nodes if _ours(n)]:
                tree.nodes.remove(node)
            layers = next((n for n in tree.nodes if n.type == "R_LAYERS"), None)
            out = next((n for n in tree.nodes if n.type == "COMPOSITE"), None)
            if layers is not None and out is not None:
                tree.links.new(layers.outputs["Image"], out.inputs["Image"])
            scene.use_nodes = bool(state.get("use_nodes", False))
    scene.render.engine = str(state.get("engine", scene.render.engine))
    scene.render.film_transparent = bool(state.get("film_transparent", False))
    scene.view_settings.view_transform = str(state.get("view_transform", "Standard"))
    scene.view_settings.look = str(state.get("look", "None"))
    del scene[STATE_PROP]
