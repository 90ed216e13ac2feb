"""Operators: reconstruct a photo, cancel, start/stop the backend, switch CUPID cameras, import a
bundle directory (the bpy room around :class:`cupid_blender.io.job.ReconstructJob`).

The job runs in a worker thread in every mode; this module only reads inputs and preferences on
the main thread, drains the job's progress (a modal 0.1 s timer in the UI, a plain loop with
``-b`` or without a window) and builds the scene from its outcome.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Optional

import bpy
from bpy.app.handlers import persistent
from bpy.props import EnumProperty, IntProperty, StringProperty

from . import scene_builder
from .backend_manager import MANAGER, BackendConfig
from .imaging import image_bytes
from .io.job import JobRequest, Outcome, ReconstructJob, UserError, describe_error
from .preferences import get_prefs
from .properties import MODES


def backend_config(context: Any) -> BackendConfig:
    prefs = get_prefs(context)
    if prefs is None:
        return BackendConfig()
    return BackendConfig(kind=prefs.backend_kind, python=bpy.path.abspath(prefs.python_path),
                         model=prefs.model, device=prefs.device,
                         weights_dir=bpy.path.abspath(prefs.weights_dir) if prefs.weights_dir else "",
                         url=prefs.remote_url, token=prefs.remote_token)


_ACTIVE: dict = {"job": None}


def _find_image_editor_image(context: Any) -> Any:
    screen = getattr(context, "screen", None)
    for area in (screen.areas if screen else ()):
        if area.type == "IMAGE_EDITOR" and area.spaces.active.image is not None:
            return area.spaces.active.image
    return None


def _read_input(path_or_name: str, what: str) -> tuple[bytes, str, str]:
    """(bytes, file name, display stem) from a file path or an image datablock name."""
    if path_or_name in bpy.data.images:
        img = bpy.data.images[path_or_name]
        try:
            data, fname = image_bytes(img)
        except (ValueError, RuntimeError) as exc:
            raise UserError(f"cannot read the {what} image {img.name!r}: {exc}") from exc
        return data, fname, Path(img.name).stem
    path = bpy.path.abspath(path_or_name)
    if not os.path.isfile(path):
        raise UserError(f"{what} not found: {path_or_name!r} is neither a file nor an image in this file")
    with open(path, "rb") as fh:
        data = fh.read()
    if not data:
        raise UserError(f"the {what} file {path} is empty")
    return data, os.path.basename(path), Path(path).stem


def _status(context: Any, text: Optional[str]) -> None:
    ws = getattr(context, "workspace", None)
    if ws is not None:
        try:
            ws.status_text_set(text)
        except (AttributeError, RuntimeError):
            pass


def _redraw(context: Any) -> None:
    wm = context.window_manager
    for win in wm.windows:
        for area in win.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


class CUPID_OT_reconstruct(bpy.types.Operator):
    """Reconstruct the photo's objects and camera with CUPID and add them to the scene"""

    bl_idname = "cupid.reconstruct"
    bl_label = "Reconstruct"
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(name="Photo file", subtype="FILE_PATH", default="", options={"SKIP_SAVE"})
    image: StringProperty(name="Image", description="Image datablock name", default="", options={"SKIP_SAVE"})
    mask: StringProperty(name="Mask", description="Mask file or image datablock name", default="",
                         options={"SKIP_SAVE"})
    mode: EnumProperty(name="Mode", items=MODES, default="OBJECT")
    seed: IntProperty(name="Seed", default=0, min=0)
    steps: IntProperty(name="Steps", default=0, min=0, max=500)

    _timer = None
    _job: Optional[ReconstructJob] = None
    _thread: Optional[threading.Thread] = None
    _name = ""

    @classmethod
    def poll(cls, context: Any) -> bool:
        return _ACTIVE["job"] is None

    # -- inputs (main thread) ----------------------------------------------------------------
    def _inputs(self, context: Any) -> tuple[bytes, str, str, Optional[bytes]]:
        settings = getattr(context.scene, "cupid", None)
        if self.filepath:
            photo = _read_input(self.filepath, "photo")
        elif self.image:
            if self.image not in bpy.data.images:
                raise UserError(f"no image named {self.image!r} in this file")
            photo = _read_input(self.image, "photo")
        elif settings is not None and settings.image is not None:
            photo = _read_input(settings.image.name, "photo")
        elif settings is not None and settings.filepath:
            photo = _read_input(settings.filepath, "photo")
        else:
            img = _find_image_editor_image(context)
            if img is None:
                raise UserError("no photo given: pick an image in the CUPID panel, a file path, "
                                "or show one in an Image Editor")
            photo = _read_input(img.name, "photo")
        mask = None
        if self.mask:
            mask = _read_input(self.mask, "mask")[0]
        elif not (self.filepath or self.image) and settings is not None:
            if settings.mask is not None:
                mask = _read_input(settings.mask.name, "mask")[0]
            elif settings.mask_path:
                mask = _read_input(settings.mask_path, "mask")[0]
        return photo[0], photo[1], photo[2], mask

    def execute(self, context: Any) -> set:
        if _ACTIVE["job"] is not None:
            self.report({"ERROR"}, "a CUPID reconstruction is already running")
            return {"CANCELLED"}
        try:
            data, fname, stem, mask = self._inputs(context)
        except UserError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        prefs = get_prefs(context)
        seed = self.seed if self.seed or prefs is None else prefs.default_seed
        steps = self.steps if self.steps or prefs is None else prefs.default_steps
        config = backend_config(context)
        job = ReconstructJob(lambda should_cancel: MANAGER.client(config, should_cancel=should_cancel),
                             JobRequest(data, fname, mask, self.mode.lower(), seed, steps))
        self._job, self._name = job, stem
        _ACTIVE["job"] = job
        self._show(context)
        self._thread = threading.Thread(target=job.run, name="cupid-job", daemon=True)
        self._thread.start()
        if bpy.app.background or context.window is None:
            outcome = None
            while outcome is None:  # no event loop to come back to: wait here
                time.sleep(0.1)
                outcome = self._show(context)
            return self._finish(context, outcome)
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.1, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def _show(self, context: Any) -> Optional[Outcome]:
        """Take the job's news into the window manager's progress properties; its outcome once ended."""
        progress, outcome = self._job.poll()
        wm = context.window_manager
        stage = "cancelling" if self._job.cancel_requested and outcome is None else progress.stage
        wm.cupid_running, wm.cupid_stage, wm.cupid_progress = True, stage, progress.fraction
        return outcome

    def modal(self, context: Any, event: Any) -> set:
        if event.type == "ESC" and event.value == "PRESS":
            self._job.cancel()
            return {"RUNNING_MODAL"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        outcome = self._show(context)
        wm = context.window_manager
        _status(context, f"CUPID: {wm.cupid_stage} {100 * wm.cupid_progress:.0f}%   (Esc to cancel)")
        _redraw(context)
        if outcome is None:
            return {"RUNNING_MODAL"}
        wm.event_timer_remove(self._timer)
        self._timer = None
        _status(context, None)
        return self._finish(context, outcome)

    def _finish(self, context: Any, outcome: Outcome) -> set:
        job = self._job
        wm = context.window_manager
        try:
            if outcome.state == "cancelled":
                wm.cupid_last_message = "Reconstruction cancelled"
                self.report({"WARNING"}, "CUPID reconstruction cancelled; the scene is unchanged")
                return {"CANCELLED"}
            if outcome.state == "failed":
                wm.cupid_last_message = outcome.message
                self.report({"ERROR"}, outcome.message)
                return {"CANCELLED"}
            try:
                res = scene_builder.build_from_bundle(outcome.bundle, context.scene, name=self._name)
            except scene_builder.SceneBuildError as exc:
                wm.cupid_last_message = str(exc)
                self.report({"ERROR"}, f"CUPID: {exc}")
                return {"CANCELLED"}
            msg = f"CUPID: added {len(res.objects)} object(s) and a camera in {res.collection.name!r}"
            wm.cupid_last_message = msg
            self.report({"INFO"}, msg)
            return {"FINISHED"}
        finally:
            job.cleanup()
            _ACTIVE["job"] = None
            wm.cupid_running, wm.cupid_stage, wm.cupid_progress = False, "", 0.0

    def cancel(self, context: Any) -> None:
        """Blender ends the modal operator (file load, window close): stop the job too."""
        if self._job is not None:
            self._job.cancel()
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
        _ACTIVE["job"] = None


class CUPID_OT_cancel(bpy.types.Operator):
    """Cancel the running CUPID reconstruction"""

    bl_idname = "cupid.cancel"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context: Any) -> bool:
        return _ACTIVE["job"] is not None

    def execute(self, context: Any) -> set:
        _ACTIVE["job"].cancel()
        return {"FINISHED"}


class CUPID_OT_start_backend(bpy.types.Operator):
    """Start the local CUPID backend now (it also starts on the first reconstruction)"""

    bl_idname = "cupid.start_backend"
    bl_label = "Start Backend"

    def execute(self, context: Any) -> set:
        config = backend_config(context)
        try:
            MANAGER.client(config, timeout=120.0)
        except BaseException as exc:
            self.report({"ERROR"}, describe_error(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"CUPID backend: {MANAGER.status_text()}")
        return {"FINISHED"}


class CUPID_OT_stop_backend(bpy.types.Operator):
    """Stop the local CUPID backend process"""

    bl_idname = "cupid.stop_backend"
    bl_label = "Stop Backend"

    def execute(self, context: Any) -> set:
        if _ACTIVE["job"] is not None:
            _ACTIVE["job"].cancel()
        MANAGER.stop()
        self.report({"INFO"}, "CUPID backend stopped")
        return {"FINISHED"}


class CUPID_OT_set_active_camera(bpy.types.Operator):
    """Make the selected CUPID camera the scene camera and switch the render size to its photo"""

    bl_idname = "cupid.set_active_camera"
    bl_label = "Set Active CUPID Camera"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context: Any) -> bool:
        obj = context.active_object
        return obj is not None and obj.type == "CAMERA"

    def execute(self, context: Any) -> set:
        context.scene.camera = context.active_object
        scene_builder.sync_render_resolution(context.scene)
        r = context.scene.render
        self.report({"INFO"}, f"Render size {r.resolution_x}x{r.resolution_y}")
        return {"FINISHED"}


class CUPID_OT_import_bundle(bpy.types.Operator):
    """Add a CUPID result bundle (a directory with scene.json) to the scene"""

    bl_idname = "cupid.import_bundle"
    bl_label = "Import CUPID Result"
    bl_options = {"REGISTER", "UNDO"}

    directory: StringProperty(subtype="DIR_PATH")

    def invoke(self, context: Any, event: Any) -> set:
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context: Any) -> set:
        try:
            res = scene_builder.build_from_bundle(bpy.path.abspath(self.directory), context.scene)
        except scene_builder.SceneBuildError as exc:
            self.report({"ERROR"}, f"CUPID: {exc}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"CUPID: added {res.collection.name!r}")
        return {"FINISHED"}


@persistent
def _sync_resolution_handler(scene: Any, *args: Any) -> None:
    """Keep the render size equal to the active CUPID camera's photo (see scene_builder)."""
    try:
        scene_builder.sync_render_resolution(scene)
    except (ReferenceError, AttributeError, TypeError, ValueError):
        pass


HANDLERS = ((bpy.app.handlers.depsgraph_update_post, _sync_resolution_handler),
            (bpy.app.handlers.frame_change_post, _sync_resolution_handler))

classes = (CUPID_OT_reconstruct, CUPID_OT_cancel, CUPID_OT_start_backend, CUPID_OT_stop_backend,
           CUPID_OT_set_active_camera, CUPID_OT_import_bundle)


def register_handlers() -> None:
    for lst, fn in HANDLERS:
        if fn not in lst:
            lst.append(fn)


def unregister_handlers() -> None:
    for lst, fn in HANDLERS:
        while fn in lst:
            lst.remove(fn)
    job = _ACTIVE["job"]
    if job is not None:
        job.cancel()
    _ACTIVE["job"] = None
