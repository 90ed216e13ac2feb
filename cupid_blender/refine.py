"""*Refine with This Camera*: run stage 2 again from a result's job with its CUPID camera as the
artist moved or re-lensed it (read back by :func:`cupid_blender.camera.read_camera`), and replace the
result's objects in its collection when done (the bpy room around :class:`cupid_blender.io.job.Refine`).

The backend keeps a job's photo, condition and structure while it keeps the job's result; the result
collection remembers the job (``cupid_job``) and the photo size it saw (``cupid_job_size``). A job the
backend no longer has is one clear line: run the reconstruction again.
"""
from __future__ import annotations

from typing import Any

import bpy
from bpy.props import IntProperty, StringProperty

from . import scene_builder
from .camera import read_camera
from .io.bundle import SceneBuildError, bundle_photo
from .io.camera import camera_in_object_frame, scale_camera_K
from .io.job import JobRequest, Refine, Restore, UserError
from .io.settings import UNSET, resolve_sampling
from .operators import STEPS_HELP, ACTIVE, JobOperator, Run, results_folder
from .preferences import get_prefs
from .composite import GROUND_PROP
from .results import BUNDLE_PROP, JOB_PROP, JOB_SIZE_PROP, parts, result_camera, result_collection, result_identity


def prepare_refine(context: Any, collection: str, steps: int) -> tuple[JobRequest, str, Any]:
    """(request, result name, collection) of a refine of a result from its CUPID camera as the
    artist left it. Raises UserError with the one-line report."""
    coll = bpy.data.collections.get(collection) if collection else result_collection(context.active_object)
    if coll is None and collection:
        raise UserError(f"CUPID: no collection named {collection!r} in this file")
    if coll is None:
        raise UserError("CUPID: select an object (or the camera) of a CUPID result to refine it")
    job = coll.get(JOB_PROP)
    if not job:
        raise UserError(f"CUPID: {coll.name!r} has no backend job to refine from (a scene, an imported result, or "
                        f"one made before refining existed): reconstruct it in object mode")
    cam = result_camera(coll)
    if cam is None:
        raise UserError(f"CUPID: {coll.name!r} has no CUPID camera left to refine with: run the reconstruction again")
    context.view_layer.update()
    try:   # at its own photo's size, whichever camera is active and whatever size the scene renders at
        K, R, t, W, H = read_camera(context.scene, cam, scene_builder.camera_resolution(cam))
    except ValueError as exc:
        raise UserError(f"CUPID cannot refine with {cam.name!r}: {exc}") from None
    mesh = next((o for o in parts(coll) if o.type == "MESH" and not o.get(GROUND_PROP)), None)
    if mesh is None:
        raise UserError(f"CUPID: {coll.name!r} has no object left to refine: run the reconstruction again")
    try:   # the backend solves in the object's own frame: the camera as it sees the object, wherever both stand
        R, t = camera_in_object_frame(R, t, [list(row) for row in mesh.matrix_world])
    except ValueError as exc:
        raise UserError(f"CUPID cannot refine {mesh.name!r}: {exc}") from None
    jw, jh = (int(v) for v in coll[JOB_SIZE_PROP])
    photo_w, photo_h = (int(v) for v in cam.get(scene_builder.RESOLUTION_PROP, (jw, jh)))
    restore = None
    if (photo_w, photo_h) != (jw, jh):   # the backend saw a downscaled copy: the result comes back to the photo
        folder = bpy.path.abspath(coll.get(BUNDLE_PROP, ""))
        try:
            photo, photo_w, photo_h = bundle_photo(folder)
            restore = Restore(photo_w, photo_h, photo.read_bytes(), photo.name)
        except (SceneBuildError, OSError) as exc:
            raise UserError(f"CUPID: the photo of {coll.name!r} is gone ({exc}): run the reconstruction "
                            f"again") from None
    # the background photo is stretched over the camera frame: frame pixels map to the photo's by the size ratio
    camera = {"K": scale_camera_K(K, W, H, jw, jh), "R": R, "t": t}
    prefs = get_prefs(context)
    _, steps = resolve_sampling(UNSET, steps, 0, prefs.default_steps if prefs else 0)
    base, _ = result_identity(coll)
    photo_texture = bool(getattr(getattr(context.scene, "cupid", None), "photo_texture", True))
    request = JobRequest(None, "object", 0, steps, results_folder(context), Refine(str(job), camera, restore),
                         photo_texture=photo_texture)
    return request, base, coll


def has_composite(coll: Any) -> bool:
    """Whether a result was built with *Composite over Photo* (its refine is too)."""
    return any(o.get(GROUND_PROP) or o.type == "LIGHT" for o in parts(coll))


class CUPID_OT_refine(JobOperator, bpy.types.Operator):
    """Run stage 2 again with the CUPID camera as you moved or re-lensed it (the photo and stage 1 are reused) \
and replace the result's objects"""

    bl_idname = "cupid.refine"
    bl_label = "Refine with This Camera"
    bl_options = {"REGISTER", "UNDO"}

    collection: StringProperty(name="Result", default="", options={"SKIP_SAVE"},
                               description="The CUPID result collection (else the active object's)")
    steps: IntProperty(name="Steps", default=UNSET, min=UNSET, max=500, description=STEPS_HELP)

    def execute(self, context: Any) -> set:
        if ACTIVE["job"] is not None:
            self.report({"ERROR"}, "a CUPID reconstruction is already running")
            return {"CANCELLED"}
        try:
            request, base, coll = prepare_refine(context, self.collection, self.steps)
        except UserError as exc:
            context.window_manager.cupid_last_message = str(exc)
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        return self._follow(context, Run(context, request, base, replace=coll.name, composite=has_composite(coll)))


classes = (CUPID_OT_refine,)
