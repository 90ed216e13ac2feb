"""Build `Reconstruction`s by hand, so export and Blender tests can write bundles of known content."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from cupid.geometry import CameraPose, Similarity
from cupid.reconstruction import ReconstructedObject, Reconstruction


def camera(cam: Any) -> CameraPose:
    """A CameraPose from (K, R, t, W, H), a mapping with those keys, or an object with those attributes."""
    if isinstance(cam, CameraPose):
        return cam
    if isinstance(cam, Mapping):
        return CameraPose(cam["K"], cam["R"], cam["t"], cam["width"], cam["height"])
    if all(hasattr(cam, k) for k in ("K", "R", "t", "width", "height")):
        return CameraPose(cam.K, cam.R, cam.t, cam.width, cam.height)
    return CameraPose(*cam)


def obj(name: str, vertices: Any, faces: Any, colors: Any = None, *, gaussians: Any = None,
        transform: tuple[float, Any, Any] = (1.0, np.eye(3), np.zeros(3)), textured: Any = None) -> ReconstructedObject:
    """One object placed by `transform` = (scale, R, t): x_w = scale·R·x + t."""
    s, R, t = transform
    return ReconstructedObject(name=name, vertices=vertices, faces=faces, vertex_colors=colors, gaussians=gaussians,
                               placement=Similarity(scale=float(s), R=np.asarray(R, float), t=np.asarray(t, float)),
                               textured=textured)


def reconstruction(photo: Any, cam: Any, objects: Sequence[ReconstructedObject], mode: str = "object") -> Reconstruction:
    return Reconstruction(photo=photo, camera=camera(cam), objects=list(objects), mode=mode)



def reconstruct_to(pipe: Any, photo: Any, out_dir: Any, **kwargs: Any):
    """What the CLI and the service do (`cupid.run.reconstruct_bundle`); returns the bundle directory."""
    from cupid.run import reconstruct_bundle

    return reconstruct_bundle(pipe, photo, out_dir, **kwargs)


def object_frame_camera(scene: Mapping[str, Any], index: int = 0) -> dict:
    """scene.json's camera as object `index`'s own frame sees it (K, R, t lists): the frame stage 1 solves
    in, its preview shows and a refine's camera is given in (the bundle's world is upright)."""
    cam = scene["camera"]
    tr = scene["objects"][index]["transform"]
    placement = Similarity(float(tr["scale"]), np.asarray(tr["R"], float), np.asarray(tr["t"], float))
    w, h = scene["image"]["width"], scene["image"]["height"]
    own = CameraPose(cam["K"], cam["R"], cam["t"], w, h).in_object_frame(placement)
    return {"K": own.K.tolist(), "R": own.R.tolist(), "t": own.t.tolist()}
