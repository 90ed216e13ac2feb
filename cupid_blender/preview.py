"""Stage 1's preview in the scene while stage 2 runs: the solved camera with the photo as its
background and the occupied voxels as a point cloud (one point of radius half a voxel per voxel),
in the collection the result will fill. The final result takes the preview's place
(``build_from_bundle(..., replace=collection)``); a cancelled or failed job takes it away again
with everything it changed scene-wide (:meth:`PreviewBuild.remove`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import bpy
import numpy as np

from .io.bundle import SceneBuildError
from .io.preview import PreviewData
from .results import remove_result
from .scene_builder import Created, SceneState, add_result_camera, new_result_collection, point_cloud

PREVIEW_PROP = "cupid_preview"   # on the collection while it holds only the preview
VOXEL_COLOUR = (0.08, 0.45, 0.95, 1.0)


def _voxel_material(name: str, created: Created) -> Any:
    """One flat colour, in the viewport's Solid mode and in renders alike."""
    mat = created.add("materials", bpy.data.materials.new(name))
    mat.diffuse_color = VOXEL_COLOUR
    mat.use_nodes = True
    bsdf = next((n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED"), None)
    if bsdf is not None:
        bsdf.inputs["Base Color"].default_value = VOXEL_COLOUR
        bsdf.inputs["Roughness"].default_value = 0.9
    return mat


@dataclass
class PreviewBuild:
    """The preview's collection (by name: the artist may delete it meanwhile) and the scene as it was."""

    collection_name: str
    state: SceneState

    @property
    def collection(self) -> Optional[Any]:
        coll = bpy.data.collections.get(self.collection_name)
        return coll if coll is not None and coll.get(PREVIEW_PROP) else None

    def remove(self, scene: Any) -> None:
        """Take the preview away and put the scene camera and render size back."""
        coll = self.collection
        if coll is not None:
            remove_result(coll)
        self.state.restore(scene)


def build_preview(preview: PreviewData, photo: Path, scene: Any, base: str, sfx: str) -> PreviewBuild:
    """Show a preview as "CUPID base sfx" (camera "base camera sfx", voxels "base voxels sfx");
    SceneBuildError, with nothing left behind, when it cannot be shown."""
    state = SceneState.capture(scene)
    created = Created()
    try:
        coll = new_result_collection(scene, base, sfx, created)
        coll[PREVIEW_PROP] = True
        add_result_camera(scene, coll, base, sfx, preview.K, preview.R, preview.t, preview.width, preview.height,
                          photo, created)
        radius = np.full(len(preview.voxels), 0.5 / preview.res, np.float32)
        rgba = np.tile(np.array([VOXEL_COLOUR], np.float32), (len(preview.voxels), 1))
        voxels = point_cloud(f"{base} voxels{sfx}", preview.centres(), [("radius", "FLOAT", "value", radius)], rgba,
                             coll, created)
        voxels.data.materials.append(_voxel_material(f"{base} voxels{sfx}", created))
        return PreviewBuild(coll.name, state)
    except BaseException as exc:
        created.remove_all()
        state.restore(scene)
        if isinstance(exc, Exception) and not isinstance(exc, SceneBuildError):
            raise SceneBuildError(f"the preview cannot be shown: {exc}") from exc
        raise
