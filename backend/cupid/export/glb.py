"""Binary glTF (GLB) export of a textured mesh through trimesh.

Axis conversion: our object frame is Z-up (TRELLIS, Blender); glTF is Y-up. A point (x, y, z)
of the object frame is written as (x, z, -y), a proper rotation of -90° about X. Blender's glTF
importer applies the inverse ((x, y, z)_gltf -> (x, -z, y)), so an imported GLB lands back in the
object frame. The texture is the baked base colour of a metallic=0, roughness=1 PBR material.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["Z_UP_TO_Y_UP", "to_gltf_axes", "from_gltf_axes", "mesh_to_glb_bytes", "write_glb"]

# row-vector form: p_gltf = p_obj @ Z_UP_TO_Y_UP  ->  (x, z, -y)
Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def to_gltf_axes(points: np.ndarray) -> np.ndarray:
    """Object frame (Z-up) -> glTF (Y-up): (x, y, z) -> (x, z, -y)."""
    return np.asarray(points, dtype=np.float64) @ Z_UP_TO_Y_UP


def from_gltf_axes(points: np.ndarray) -> np.ndarray:
    """glTF (Y-up) -> object frame (Z-up): (x, y, z) -> (x, -z, y)."""
    return np.asarray(points, dtype=np.float64) @ Z_UP_TO_Y_UP.T


def _trimesh(vertices, faces, uv=None, texture=None, colors=None):
    import trimesh
    from PIL import Image

    v = to_gltf_axes(vertices)
    f = np.asarray(faces, dtype=np.int64)
    if uv is not None and texture is not None:
        material = trimesh.visual.material.PBRMaterial(
            name="cupid_material",
            baseColorTexture=Image.fromarray(np.asarray(texture, dtype=np.uint8), mode="RGB"),
            baseColorFactor=[255, 255, 255, 255], metallicFactor=0.0, roughnessFactor=1.0,
            doubleSided=True)
        visual = trimesh.visual.TextureVisuals(uv=np.asarray(uv, dtype=np.float64), material=material)
    elif colors is not None:
        c = np.clip(np.round(np.asarray(colors, dtype=np.float64)[:, :3] * 255), 0, 255).astype(np.uint8)
        visual = trimesh.visual.ColorVisuals(vertex_colors=np.concatenate([c, np.full((len(c), 1), 255, np.uint8)], 1))
    else:
        visual = None
    return trimesh.Trimesh(vertices=v, faces=f, visual=visual, process=False, validate=False)


def mesh_to_glb_bytes(vertices, faces, uv=None, texture=None, colors=None, name: str = "object") -> bytes:
    """GLB bytes for an object-frame mesh; textured when uv (v up) and texture are given,
    else vertex-coloured when colours are given. `name` names the glTF node and mesh."""
    import trimesh

    mesh = _trimesh(vertices, faces, uv, texture, colors)
    scene = trimesh.Scene()
    scene.add_geometry(mesh, node_name=name, geom_name=name)
    return scene.export(file_type="glb")


def write_glb(path: str | Path, vertices, faces, uv=None, texture=None, colors=None,
              name: str = "object") -> Path:
    path = Path(path)
    path.write_bytes(mesh_to_glb_bytes(vertices, faces, uv, texture, colors, name=name))
    return path
