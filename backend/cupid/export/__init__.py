"""Export of reconstructions: mesh post-processing, GLB, 3DGS PLY, overlay and the result bundle.

CPU only (numpy, opencv, trimesh, xatlas, fast-simplification, plyfile, pillow). See
docs/ARCHITECTURE.md ("Result bundle") and cupid/schemas/scene.schema.json for the layout.
"""
from __future__ import annotations

from .bundle import (SCHEMA_ID, SCHEMA_PATH, Bundle, BundleError, ExportOptions, ObjectSpec,
                     camera_arrays, load_bundle, transform_matrix, write_bundle, write_npz)
from .glb import Z_UP_TO_Y_UP, from_gltf_axes, mesh_to_glb_bytes, to_gltf_axes, write_glb
from .mesh import (TexturedMesh, bake_texture, clean_mesh, postprocess_mesh, sample_texture,
                   simplify_mesh, unwrap_uv)
from .overlay import render_overlay
from .ply import (GaussianArrays, GaussiansLike, gaussians_to_arrays, read_gaussians_ply,
                  write_gaussians_ply)
from .raster import Fragments, project_points, rasterize, rasterize_mesh, render_depth, render_silhouette

__all__ = [
    "SCHEMA_ID", "SCHEMA_PATH", "Bundle", "BundleError", "ExportOptions", "ObjectSpec",
    "camera_arrays", "load_bundle", "transform_matrix", "write_bundle", "write_npz",
    "Z_UP_TO_Y_UP", "from_gltf_axes", "mesh_to_glb_bytes", "to_gltf_axes", "write_glb",
    "TexturedMesh", "bake_texture", "clean_mesh", "postprocess_mesh", "sample_texture",
    "simplify_mesh", "unwrap_uv", "render_overlay",
    "GaussianArrays", "GaussiansLike", "gaussians_to_arrays", "read_gaussians_ply", "write_gaussians_ply",
    "Fragments", "project_points", "rasterize", "rasterize_mesh", "render_depth", "render_silhouette",
]
