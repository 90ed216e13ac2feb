"""Operators: reconstruct a photo, cancel, start/stop the backend, switch CUPID cameras, import a
bundle directory.

Threading rule: the worker thread (:class:`ReconstructJob`) only talks HTTP and touches files;
everything involving bpy runs on the main thread (operator execute/modal). In background mode
(``bpy.app.background``) the job runs synchronously inside execute.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Optional

import bpy
from bpy.app.handlers import persistent
from bpy.props import EnumProperty, IntProperty, StringProperty

from . import scene_builder
from .backend_manager import MANAGER, BackendConfig, BackendStartError
from .imaging import image_bytes
from .preferences import get_prefs
from .properties import MODES

DONE_STATES = {"done", "succeeded", "success", "finished", "completed", "complete"}
FAILED_STATES = {"failed", "error"}
CANCELLED_STATES = {"cancelled", "canceled"}
POLL_S = 0.25


class UserError(Exception):
    """A problem with the user's input or setup; reported as is."""


def backend_config(context: Any) -> BackendConfig:
    prefs = get_prefs(context)
    if prefs is None:
        return BackendConfig()
    return BackendConfig(kind=prefs.backend_kind, python=bpy.path.abspath(prefs.python_path),
                         model=prefs.model, device=prefs.device,
                         weights_dir=bpy.path.abspath(prefs.weights_dir) if prefs.weights_dir else "",
                         url=prefs.remote_url, token=prefs.remote_token)


def _describe(exc: BaseException) -> str:
    """One clear line for any error a job can meet (client errors are duck-typed: the client
    module ships separately and may be absent)."""
    kind = type(exc).__name__
    if kind == "BackendError":
        code = getattr(exc, "code", "") or "error"
        msg = getattr(exc, "message", "") or str(exc)
        return f"CUPID backend error ({code}): {msg}"
    if kind == "BackendUnavailable":
        return f"CUPID backend unavailable: {exc}"
    if isinstance(exc, (UserError, BackendStartError, scene_builder.SceneBuildError)):
        return str(exc)
    return f"CUPID reconstruction failed: {kind}: {exc}"


class JobCancelled(Exception):
    pass


class ReconstructJob:
    """One reconstruction on the backend: submit, poll, download. Runs in a worker thread."""

    def __init__(self, config: BackendConfig, image: bytes, filename: str, mask: Optional[bytes],
                 mode: str, seed: int, steps: int) -> None:
        self.config, self.image, self.filename, self.mask = config, image, filename, mask
        self.mode, self.seed, self.steps = mode, seed, steps
        self.stage = "starting backend"
        self.progress = 0.0
        self.cancel_requested = False
        self.done = False
        self.error: Optional[str] = None
        self.cancelled = False
        self.bundle: Optional[Path] = None
        self.workdir = Path(tempfile.mkdtemp(prefix="cupid-result-"))
        self.job_id: Optional[str] = None

    def run(self) -> None:
        try:
            client = MANAGER.client(self.config, should_cancel=lambda: self.cancel_requested)
            self._check_cancel(client)
            self.stage = "uploading"
            self.job_id = client.submit(self.image, self.filename, mask_bytes=self.mask, mode=self.mode,
                                        seed=self.seed, steps=self.steps)
            while True:
                self._check_cancel(client)
                st = client.status(self.job_id)
                state = str(st.get("state", "")).lower()
                self.stage = st.get("stage") or state or "working"
                try:
                    self.progress = min(1.0, max(0.0, float(st.get("progress") or 0.0)))
                except (TypeError, ValueError):
                    pass
                if state in DONE_STATES:
                    break
                if state in FAILED_STATES:
                    raise UserError(f"CUPID reconstruction failed: {st.get('message') or 'unknown error'}")
                if state in CANCELLED_STATES:
                    raise JobCancelled()
                time.sleep(POLL_S)
            self.stage = "downloading result"
            self.bundle = find_bundle(Path(client.result(self.job_id, self.workdir / "bundle")))
        except JobCancelled:
            self.cancelled = True
        except BaseException as exc:  # reported to the user on the main thread
            if self.cancel_requested:
                self.cancelled = True
            else:
                self.error = _describe(exc)
        finally:
            self.done = True

    def _check_cancel(self, client: Any) -> None:
        if not self.cancel_requested:
            return
        self.stage = "cancelling"
        if self.job_id is not None:
            try:
                client.cancel(self.job_id)
            except Exception:
                pass  # the job may have finished meanwhile; nothing is built either way
        raise JobCancelled()

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def find_bundle(path: Path) -> Path:
    """The directory holding scene.json in a downloaded result (a directory or a zip file)."""
    if path.is_file() and zipfile.is_zipfile(path):
        dest = path.with_suffix("")
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                target = (dest / info.filename).resolve()
                if not str(target).startswith(str(dest.resolve())):
                    raise UserError("the backend sent a result archive with unsafe paths")
            zf.extractall(dest)
        path = dest
    if (path / "scene.json").is_file():
        return path
    for sub in sorted(path.rglob("scene.json")):
        return sub.parent
    raise UserError(f"the backend result has no scene.json ({path})")


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
        job = ReconstructJob(backend_config(context), data, fname, mask, self.mode.lower(), seed, steps)
        self._job, self._name = job, stem
        _ACTIVE["job"] = job
        wm = context.window_manager
        wm.cupid_running, wm.cupid_stage, wm.cupid_progress = True, job.stage, 0.0
        if bpy.app.background or context.window is None:
            job.run()
            return self._finish(context)
        self._thread = threading.Thread(target=job.run, name="cupid-job", daemon=True)
        self._thread.start()
        self._timer = wm.event_timer_add(0.1, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context: Any, event: Any) -> set:
        job = self._job
        if event.type == "ESC" and event.value == "PRESS":
            job.cancel_requested = True
            return {"RUNNING_MODAL"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        wm = context.window_manager
        wm.cupid_stage = "cancelling" if job.cancel_requested and not job.done else job.stage
        wm.cupid_progress = job.progress
        _status(context, f"CUPID: {wm.cupid_stage} {100 * job.progress:.0f}%   (Esc to cancel)")
        _redraw(context)
        if not job.done:
            return {"RUNNING_MODAL"}
        wm.event_timer_remove(self._timer)
        self._timer = None
        _status(context, None)
        return self._finish(context)

    def _finish(self, context: Any) -> set:
        job = self._job
        wm = context.window_manager
        try:
            if job.cancelled or (job.cancel_requested and job.bundle is None):
                wm.cupid_last_message = "Reconstruction cancelled"
                self.report({"WARNING"}, "CUPID reconstruction cancelled; the scene is unchanged")
                return {"CANCELLED"}
            if job.error is not None:
                wm.cupid_last_message = job.error
                self.report({"ERROR"}, job.error)
                return {"CANCELLED"}
            try:
                res = scene_builder.build_from_bundle(job.bundle, context.scene, name=self._name)
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
            self._job.cancel_requested = True
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
        _ACTIVE["job"].cancel_requested = True
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
            self.report({"ERROR"}, _describe(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"CUPID backend: {MANAGER.status_text()}")
        return {"FINISHED"}


class CUPID_OT_stop_backend(bpy.types.Operator):
    """Stop the local CUPID backend process"""

    bl_idname = "cupid.stop_backend"
    bl_label = "Stop Backend"

    def execute(self, context: Any) -> set:
        if _ACTIVE["job"] is not None:
            _ACTIVE["job"].cancel_requested = True
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
        job.cancel_requested = True
    _ACTIVE["job"] = None
