"""Export of reconstructions: mesh post-processing, GLB, 3DGS PLY, overlay and the result bundle.

CPU only (numpy, opencv, trimesh, xatlas, fast-simplification, plyfile, pillow, jsonschema).
See docs/ARCHITECTURE.md ("Result bundle") and cupid/schemas/scene.schema.json for the layout.

Pipeline for one object (`postprocess_mesh`): merge duplicate vertices / drop degenerate faces ->
quadric decimation to `target_faces` (colours by nearest original vertex) -> xatlas UVs ->
texture baked from the vertex colours by rasterising in UV space, seams dilated. TRELLIS bakes
its texture from multiview renders of the Gaussians on the GPU; we bake from vertex colours on
the CPU (see `cupid.export.mesh`). Then, for every object of the result at once (`texture_objects`),
the photo texture: the solved camera projects the photo's own pixels onto the texels it sees and the
generated rest is colour-matched to them (`cupid.export.photo_texture`, `color_transfer`).

Frames: every file is in the object frame (Z-up) except the GLB, which is glTF Y-up with
(x, y, z) -> (x, z, -y); `matrix_world` (x_w = scale·R·x + t) places objects in the camera's world.
Bundle uv are v-up (Blender); texel row = (1 - v) · height.
"""
from __future__ import annotations

from .bundle import SCHEMA_ID, SCHEMA_PATH, Bundle, BundleError, ExportOptions, load_bundle, write_bundle, write_npz
from .glb import Z_UP_TO_Y_UP, from_gltf_axes, mesh_to_glb_bytes, to_gltf_axes, write_glb
from .mesh import (TexturedMesh, bake_texture, clean_mesh, postprocess_mesh, sample_texture,
                   simplify_mesh, unwrap_uv)
from .overlay import render_overlay
from .ply import (GaussianArrays, GaussiansLike, gaussians_to_arrays, read_gaussians_ply,
                  write_gaussians_ply)
from .raster import (Fragments, project_points, rasterize, rasterize_mesh, rasterize_objects, render_silhouette,
                     render_textured)
from .texturing import ObjectTextures, texture_objects

__all__ = [
    "SCHEMA_ID", "SCHEMA_PATH", "Bundle", "BundleError", "ExportOptions", "load_bundle", "write_bundle", "write_npz",
    "Z_UP_TO_Y_UP", "from_gltf_axes", "mesh_to_glb_bytes", "to_gltf_axes", "write_glb",
    "TexturedMesh", "bake_texture", "clean_mesh", "postprocess_mesh", "sample_texture",
    "simplify_mesh", "unwrap_uv", "render_overlay",
    "GaussianArrays", "GaussiansLike", "gaussians_to_arrays", "read_gaussians_ply", "write_gaussians_ply",
    "Fragments", "project_points", "rasterize", "rasterize_mesh", "rasterize_objects", "render_silhouette",
    "render_textured", "ObjectTextures", "texture_objects",
]
