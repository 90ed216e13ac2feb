"""Operators: reconstruct a photo or a folder of photos, cancel, start/stop the backend, switch
CUPID cameras, import a result (the bpy room around :class:`cupid_blender.io.job.ReconstructJob`).

The job always runs in a worker thread; this module reads inputs and preferences on the main
thread, drains the job's news (a modal 0.1 s timer in the UI; a plain loop with ``-b``, without a
window, or for a batch, which prints stage and percent lines and turns Ctrl-C into a clean
cancel), then moves the result into the results folder and builds the scene from it.
"""
from __future__ import annotations

import functools
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, Optional

import bpy
from bpy.app.handlers import persistent
from bpy.props import BoolProperty, EnumProperty, IntProperty, StringProperty

from . import scene_builder
from .backend_manager import MANAGER, BackendConfig
from .imaging import read_picture
from .io.bundle import object_names
from .io.job import JobRequest, Outcome, ReconstructJob, UserError, describe_error, superseded_jobs
from .io.settings import (UNSET, batch_inputs, effective_model, expected_cpu_seconds, folder_name, free_suffix,
                          full_size_model, hub_caches, resolve_sampling, results_root, runs_on_cpu)
from .io.upload import InputProblem, Upload, prepare_upload
from .preferences import build_defaults, get_prefs
from .preview import PREVIEW_PROP, PreviewBuild, build_preview
from . import composite as composite_setup
from .properties import COMPOSITE_HELP, MODES, REAL_SIZE_HELP
from .setup.state import read_record
from .setup.system import Platform
from .setup_ui import layout_of
from .results import JOB_PROP, JOB_SIZE_PROP, select_parts

ACTIVE: dict = {"job": None}
_BACKEND: dict = {"stopped_by_artist": False}


# ---------------------------------------------------------------------------------------------
# settings read on the main thread
# ---------------------------------------------------------------------------------------------

def active_model(prefs: Any) -> str:
    """The model the local backend runs (the downloaded weights replace the offline test model)."""
    weights = bpy.path.abspath(prefs.weights_dir) if prefs.weights_dir else ""
    return effective_model(prefs.model, build_defaults().get("model", ""), hub_caches(os.environ, Path.home(), weights),
                           setup_model=layout_of(prefs).tiny_model)


def backend_config(context: Any) -> BackendConfig:
    prefs = get_prefs(context)
    if prefs is None:
        return BackendConfig()
    return BackendConfig(kind=prefs.backend_kind, python=bpy.path.abspath(prefs.python_path),
                         model=active_model(prefs), device=prefs.device, dtype=prefs.dtype,
                         weights_dir=bpy.path.abspath(prefs.weights_dir) if prefs.weights_dir else "",
                         url=prefs.remote_url, token=prefs.remote_token)


def results_folder(context: Any) -> Path:
    """Where this file's results are kept (see io.settings.results_root)."""
    prefs = get_prefs(context)
    beside = prefs.results_beside_blend if prefs is not None else True
    folder = bpy.path.abspath(prefs.results_dir) if prefs is not None and prefs.results_dir else ""
    return results_root(bpy.data.filepath, beside, folder, Path.home())


def cpu_warning(context: Any, steps: int) -> Optional[str]:
    """A warning when a full-size model is about to run on the CPU, with the time to expect."""
    prefs = get_prefs(context)
    if prefs is None or prefs.backend_kind != "LOCAL" or not full_size_model(active_model(prefs)):
        return None
    if not runs_on_cpu(prefs.device, context.window_manager.cupid_device, read_record(layout_of(prefs)), gpu_seen()):
        return None
    dtype = context.window_manager.cupid_dtype or prefs.dtype
    minutes = expected_cpu_seconds(steps, dtype) / 60.0
    return f"Full-size model on the CPU: about {minutes:.0f} min per photo (a GPU takes a minute or two)"


@functools.lru_cache(maxsize=1)
def gpu_seen() -> bool:
    """Does this computer show a GPU the backend could use (Apple silicon, or an NVIDIA driver's
    nvidia-smi on PATH)? A look-up on PATH, no process started, once per session (the panel asks on
    every redraw)."""
    plat = Platform.current()
    return plat.apple_silicon if plat.mac else shutil.which("nvidia-smi") is not None


def backend_status() -> str:
    """The local backend's state in words ("stopped" after Stop Backend, not an exit code; a crash
    keeps its exit code)."""
    if _BACKEND["stopped_by_artist"] and not MANAGER.running():
        return "stopped"
    return MANAGER.status_text()


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------

def _find_image_editor_image(context: Any) -> Any:
    screen = getattr(context, "screen", None)
    for area in (screen.areas if screen else ()):
        if area.type == "IMAGE_EDITOR" and area.spaces.active.image is not None:
            return area.spaces.active.image
    return None


def read_input(source: str, what: str) -> Any:
    try:
        return read_picture(source, what)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def photo_source(context: Any, filepath: str = "", image: str = "") -> str:
    """Which photo: the operator's file or image, else the panel's image, else its file, else the
    image an Image Editor shows (a datablock name or a file path). Raises UserError."""
    settings = getattr(context.scene, "cupid", None)
    if filepath:
        return filepath
    if image:
        if image not in bpy.data.images:
            raise UserError(f"no image named {image!r} in this file")
        return image
    if settings is not None and settings.image is not None:
        return settings.image.name
    if settings is not None and settings.filepath:
        return settings.filepath
    img = _find_image_editor_image(context)
    if img is None:
        raise UserError("no photo given: pick an image in the CUPID panel, a file path, "
                        "or show one in an Image Editor")
    return img.name


def prepare_inputs(context: Any, filepath: str = "", image: str = "", mask: str = "",
                   mode: str = "OBJECT") -> tuple[Upload, str]:
    """(upload, name of the result) from the operator's arguments, else the panel's inputs.
    Raises UserError or InputProblem with the one-line report."""
    settings = getattr(context.scene, "cupid", None)
    source = photo_source(context, filepath, image)
    mask_source = mask
    if not mask and not (filepath or image) and settings is not None:
        mask_source = settings.mask.name if settings.mask is not None else settings.mask_path
    photo = read_input(source, "photo")
    mask_picture = read_input(mask_source, "mask") if mask_source else None
    keep_detail = bool(getattr(settings, "photo_texture", True))   # the photo texture wants every pixel
    return prepare_upload(photo, mask_picture, mode.lower(), keep_detail), photo.stem


# ---------------------------------------------------------------------------------------------
# one reconstruction, from prepared inputs to a built collection
# ---------------------------------------------------------------------------------------------

class _CtrlC:
    """While a job (anything with ``cancel()``: a reconstruction, the backend's set-up) is waited for
    in the foreground, Ctrl-C cancels it (a second one stops waiting) instead of killing Blender; the
    previous handler comes back afterwards."""

    def __init__(self, job: Any, what: str = "the reconstruction") -> None:
        self.job, self.what, self.pressed, self.abandoned = job, what, False, False
        self._installed, self._previous = False, None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.pressed:
            self.abandoned = True
            return
        self.pressed = True
        self.job.cancel()
        print(f"CUPID: Ctrl-C: cancelling {self.what} (Ctrl-C again to stop waiting)", flush=True)

    def __enter__(self) -> "_CtrlC":
        if threading.current_thread() is threading.main_thread():
            try:
                self._previous = signal.signal(signal.SIGINT, self._handler)
                self._installed = True
            except (ValueError, OSError):
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._installed:  # a handler set from C (Blender's own) cannot be put back: the default then
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.SIG_DFL)


class Run:
    """One job and what it becomes: the worker thread, the progress shown, stage 1's preview while
    stage 2 runs, the result kept (in place of the preview, or of the refined result's parts)."""

    def __init__(self, context: Any, request: JobRequest, name: str, replace: str = "",
                 composite: bool = True) -> None:
        config = backend_config(context)
        self.name = name
        self.composite = composite      # build the result with *Composite over Photo*
        self.replace = replace          # the result collection a refine replaces the parts of
        active = getattr(context, "active_object", None)
        self.active_name = active.name if active is not None else ""   # active again after a refine
        self.preview: Optional[PreviewBuild] = None
        self.suffix: Optional[str] = None   # the preview's (and so the result's) name suffix
        self.job = ReconstructJob(lambda should_cancel: MANAGER.client(config, should_cancel=should_cancel), request,
                                  backend_up=MANAGER.is_up(config))
        self.interrupted = False
        ACTIVE["job"] = self.job
        _BACKEND["stopped_by_artist"] = False  # the job starts the backend again if needed
        self.show(context)
        threading.Thread(target=self.job.run, name="cupid-job", daemon=True).start()

    def _folder_taken(self, sfx: str) -> bool:
        return (self.job.request.results_root / f"{folder_name(self.name)}{sfx}").exists()

    def _show_preview(self, context: Any) -> None:
        """Stage 1 is done: show its camera and voxels (once; a preview that fails is only a line)."""
        ready = self.job.take_preview()
        if ready is None or self.preview is not None:
            return
        sfx = scene_builder.result_suffix(self.name, [], self._folder_taken)
        try:
            self.preview = build_preview(ready.preview, ready.photo, context.scene, self.name, sfx)
        except scene_builder.SceneBuildError as exc:
            print(f"CUPID: {exc}", flush=True)
            return
        self.suffix = sfx
        print(f"CUPID: preview: the camera and {len(ready.preview.voxels)} voxels in "
              f"{self.preview.collection_name!r}", flush=True)

    def drop_preview(self, context: Any) -> None:
        """Take the preview away again (the job failed, was cancelled, or its result cannot be built)."""
        if self.preview is not None:
            self.preview.remove(context.scene)
            self.preview = None

    def show(self, context: Any) -> Optional[Outcome]:
        """Take the job's news into the window manager's progress properties, and a preview into
        the scene; its outcome once ended."""
        progress, outcome = self.job.poll()
        if outcome is None:
            self._show_preview(context)
        wm = context.window_manager
        stage = "cancelling" if self.job.cancel_requested and outcome is None else progress.stage
        wm.cupid_running, wm.cupid_stage, wm.cupid_progress = True, stage, progress.fraction
        if progress.device:
            wm.cupid_device = progress.device
        if progress.dtype:
            wm.cupid_dtype = progress.dtype
        return outcome

    def wait_here(self, context: Any) -> Outcome:
        """Wait on this thread, printing a line per stage and every 5 percent; Ctrl-C cancels."""
        wm, last = context.window_manager, None
        with _CtrlC(self.job) as ctrl_c:
            while True:
                outcome = self.show(context)
                line = (wm.cupid_stage, int(100 * wm.cupid_progress) // 5)
                if line != last:
                    print(f"CUPID: {wm.cupid_stage} {100 * wm.cupid_progress:.0f}%", flush=True)
                    last = line
                if outcome is None and ctrl_c.abandoned:
                    outcome = Outcome("cancelled")
                if outcome is not None:
                    self.interrupted = ctrl_c.pressed
                    return outcome
                time.sleep(0.1)

    def finish(self, context: Any, outcome: Outcome) -> tuple[str, str]:
        """Keep and build a finished result; (report level, message). Cleans up in every case."""
        wm = context.window_manager
        try:
            if outcome.state != "done":
                self.drop_preview(context)
            if outcome.state == "cancelled":
                wm.cupid_last_message = "Reconstruction cancelled"
                return "WARNING", "CUPID reconstruction cancelled; the scene is unchanged"
            if outcome.state == "failed":
                wm.cupid_last_message = outcome.message
                return "ERROR", outcome.message
            try:
                res = self._keep_and_build(context, outcome.bundle)
            except scene_builder.SceneBuildError as exc:
                self.drop_preview(context)
                wm.cupid_last_message = str(exc)
                return "ERROR", f"CUPID: {exc}"
            self._remember_job(res)
            referenced = [str(c[JOB_PROP]) for c in bpy.data.collections if JOB_PROP in c]
            self.job.release(superseded_jobs(self.job.request, referenced))
            if self.replace:   # the artist's selection was replaced: the result stays selected (a courtesy)
                try:
                    select_parts(context.view_layer, res.collection, self.active_name)
                except (RuntimeError, ReferenceError):
                    pass
            verb = "refined" if self.replace else "added"
            msg = f"CUPID: {verb} {len(res.objects)} object(s) and a camera in {res.collection.name!r}"
            msg = "; ".join([msg] + res.notes)
            wm.cupid_last_message = msg
            return "INFO", msg
        finally:
            self.job.cleanup()
            ACTIVE["job"] = None
            wm.cupid_running, wm.cupid_stage, wm.cupid_progress = False, "", 0.0

    def _target(self) -> Any:
        """The collection the result goes into: the refined result's, or the preview's (else None)."""
        if self.replace:
            coll = bpy.data.collections.get(self.replace)
            if coll is None:
                raise scene_builder.SceneBuildError(f"the collection {self.replace!r} to refine is gone")
            return coll
        return self.preview.collection if self.preview is not None else None

    def _keep_and_build(self, context: Any, bundle: Path) -> Any:
        """Move the downloaded bundle to RESULTS/NAME (with the suffix its collection, camera and
        photo get too), then build it, in place of the preview or the refined parts when there
        are; a failed build leaves no folder behind."""
        root, folder = self.job.request.results_root, folder_name(self.name)
        target = self._target()
        if target is None:
            sfx = scene_builder.result_suffix(self.name, object_names(bundle), self._folder_taken)
        elif self.suffix is not None and not self._folder_taken(self.suffix):
            sfx = self.suffix
        else:   # the names stay the collection's: the folder only needs to be free
            sfx = free_suffix(self._folder_taken)
        kept = root / f"{folder}{sfx}"
        try:
            os.replace(bundle, kept)
        except OSError as exc:
            raise scene_builder.SceneBuildError(f"cannot keep the result in {kept}: {exc.strerror or exc}") from exc
        try:
            if target is None:
                return scene_builder.build_from_bundle(kept, context.scene, name=self.name, suffix=sfx,
                                                       composite=self.composite)
            res = scene_builder.build_from_bundle(kept, context.scene, replace=target, composite=self.composite)
            res.collection.pop(PREVIEW_PROP, None)
            self.preview = None   # it became the result
            return res
        except BaseException:
            shutil.rmtree(kept, ignore_errors=True)
            raise

    def _remember_job(self, res: Any) -> None:
        """The backend job a later refine starts from (object mode; a refine's own job keeps its stage 1
        too, with the artist's camera), and the photo size that job saw (a refine's is its source's)."""
        r = self.job.request
        if self.job.job_id is None or r.mode != "object":   # scenes keep no stage 1 to refine from
            return
        res.collection[JOB_PROP] = self.job.job_id
        if r.refine is None:
            up = r.upload
            size = [up.upload_width, up.upload_height] if up is not None and up.upload_width else \
                list(res.camera[scene_builder.RESOLUTION_PROP])
            res.collection[JOB_SIZE_PROP] = [int(v) for v in size]


def _start(op: Any, context: Any, mode: str, seed: int, steps: int, real_size: bool = True, composite: bool = True,
           **inputs: str) -> Optional[Run]:
    """Read the inputs and start a run, or report why not (None). `real_size` off asks the backend for
    relative units (on: meters when it has a metric point map); `composite`: *Composite over Photo*."""
    try:
        upload, name = prepare_inputs(context, mode=mode, **inputs)
    except (UserError, InputProblem) as exc:
        context.window_manager.cupid_last_message = str(exc)
        op.report({"ERROR"}, str(exc))
        return None
    prefs = get_prefs(context)
    seed, steps = resolve_sampling(seed, steps, prefs.default_seed if prefs else 0,
                                   prefs.default_steps if prefs else 0)
    warning = cpu_warning(context, steps)
    if warning:
        op.report({"WARNING"}, f"CUPID: {warning}")
        print(f"CUPID: {warning}", flush=True)
    photo_texture = bool(getattr(getattr(context.scene, "cupid", None), "photo_texture", True))
    request = JobRequest(upload, mode.lower(), seed, steps, results_folder(context),
                         real_size=None if real_size else False, photo_texture=photo_texture)
    return Run(context, request, name, composite=composite)


SEED_HELP = "Random seed (-1: the preferences' default; 0 is a seed like any other)"
STEPS_HELP = "Sampler steps per stage (-1: the preferences' default; 0: the model's default)"


class JobOperator:
    """What the reconstruct and refine operators share: wait in place without an event loop, else
    a modal 0.1 s timer that shows progress and the preview; Esc cancels."""

    _timer = None
    _run: Optional[Run] = None

    @classmethod
    def poll(cls, context: Any) -> bool:
        return ACTIVE["job"] is None

    def _follow(self, context: Any, run: Optional[Run]) -> set:
        if run is None:
            return {"CANCELLED"}
        self._run = run
        if bpy.app.background or context.window is None:
            return self._end(context, run.wait_here(context))  # no event loop to come back to
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.1, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context: Any, event: Any) -> set:
        if event.type == "ESC" and event.value == "PRESS":
            self._run.job.cancel()
            return {"RUNNING_MODAL"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        outcome = self._run.show(context)
        wm = context.window_manager
        _status(context, f"CUPID: {wm.cupid_stage} {100 * wm.cupid_progress:.0f}%   (Esc to cancel)")
        _redraw(context)
        if outcome is None:
            return {"RUNNING_MODAL"}
        wm.event_timer_remove(self._timer)
        self._timer = None
        _status(context, None)
        return self._end(context, outcome)

    def _end(self, context: Any, outcome: Outcome) -> set:
        level, message = self._run.finish(context, outcome)
        self.report({level}, message)
        return {"FINISHED"} if level == "INFO" else {"CANCELLED"}

    def cancel(self, context: Any) -> None:
        """Blender ends the modal operator (file load, window close): stop the job too."""
        if self._run is not None:
            self._run.job.cancel()
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
        ACTIVE["job"] = None


class CUPID_OT_reconstruct(JobOperator, bpy.types.Operator):
    """Reconstruct the photo's objects and camera with CUPID and add them to the scene (stage 1's camera \
and voxels show while the rest runs)"""

    bl_idname = "cupid.reconstruct"
    bl_label = "Reconstruct"
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(name="Photo file", subtype="FILE_PATH", default="", options={"SKIP_SAVE"},
                             description="Photo file (else the panel's photo)")
    image: StringProperty(name="Image", description="Image datablock name (else the panel's photo)", default="",
                          options={"SKIP_SAVE"})
    mask: StringProperty(name="Mask", description="Mask file or image datablock name", default="",
                         options={"SKIP_SAVE"})
    mode: EnumProperty(name="Mode", items=MODES, default="OBJECT")
    seed: IntProperty(name="Seed", default=UNSET, min=UNSET, description=SEED_HELP)
    steps: IntProperty(name="Steps", default=UNSET, min=UNSET, max=500, description=STEPS_HELP)
    real_size: BoolProperty(name="Real Size", default=True, description=REAL_SIZE_HELP)
    composite: BoolProperty(name="Composite over Photo", default=True, description=COMPOSITE_HELP)

    def execute(self, context: Any) -> set:
        if ACTIVE["job"] is not None:
            self.report({"ERROR"}, "a CUPID reconstruction is already running")
            return {"CANCELLED"}
        return self._follow(context, _start(self, context, self.mode, self.seed, self.steps, real_size=self.real_size,
                                            composite=self.composite, filepath=self.filepath, image=self.image,
                                            mask=self.mask))


class CUPID_OT_reconstruct_batch(bpy.types.Operator):
    """Reconstruct every photo of a folder, one collection each (NAME_mask.png is the mask of NAME.jpg); \
waits until all are done, printing progress; Ctrl-C stops"""

    bl_idname = "cupid.reconstruct_batch"
    bl_label = "Reconstruct Folder"
    bl_options = {"REGISTER", "UNDO"}

    directory: StringProperty(name="Folder", subtype="DIR_PATH", description="Folder of photos")
    mode: EnumProperty(name="Mode", items=MODES, default="OBJECT")
    seed: IntProperty(name="Seed", default=UNSET, min=UNSET, description=SEED_HELP)
    steps: IntProperty(name="Steps", default=UNSET, min=UNSET, max=500, description=STEPS_HELP)

    @classmethod
    def poll(cls, context: Any) -> bool:
        return ACTIVE["job"] is None

    def execute(self, context: Any) -> set:
        folder = bpy.path.abspath(self.directory)
        try:
            items = batch_inputs(folder)
        except OSError as exc:
            self.report({"ERROR"}, f"CUPID: cannot read the folder {folder!r}: {exc.strerror or exc}")
            return {"CANCELLED"}
        if not items:
            self.report({"ERROR"}, f"CUPID: no photos in {folder!r}")
            return {"CANCELLED"}
        built, failed = [], []
        for k, (photo, mask) in enumerate(items):
            print(f"CUPID: [{k + 1}/{len(items)}] {photo.name}", flush=True)
            run = _start(self, context, self.mode, self.seed, self.steps, filepath=str(photo),
                         mask=str(mask) if mask else "")
            if run is None:
                failed.append(photo.name)
                continue
            level, message = run.finish(context, run.wait_here(context))
            print(message, flush=True)
            (built if level == "INFO" else failed).append(photo.name)
            if run.interrupted:
                self.report({"WARNING"}, f"CUPID: stopped by Ctrl-C after {len(built)} of {len(items)} photos")
                return {"FINISHED"} if built else {"CANCELLED"}
        summary = f"CUPID: reconstructed {len(built)} of {len(items)} photos"
        if failed:
            self.report({"WARNING"} if built else {"ERROR"}, f"{summary}; failed: {', '.join(failed)}")
        else:
            self.report({"INFO"}, summary)
        return {"FINISHED"} if built else {"CANCELLED"}


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


class CUPID_OT_cancel(bpy.types.Operator):
    """Cancel the running CUPID reconstruction (the scene stays as it was)"""

    bl_idname = "cupid.cancel"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context: Any) -> bool:
        return ACTIVE["job"] is not None

    def execute(self, context: Any) -> set:
        ACTIVE["job"].cancel()
        return {"FINISHED"}


class CUPID_OT_start_backend(bpy.types.Operator):
    """Start the local CUPID backend now and load nothing yet (it also starts by itself on the first reconstruction)"""

    bl_idname = "cupid.start_backend"
    bl_label = "Start Backend"

    def execute(self, context: Any) -> set:
        config = backend_config(context)
        try:
            client = MANAGER.client(config, timeout=120.0)
            health = client.health()
            context.window_manager.cupid_device = str(health.get("device") or "")
            context.window_manager.cupid_dtype = str(health.get("dtype") or "")
        except BaseException as exc:
            self.report({"ERROR"}, describe_error(exc))
            return {"CANCELLED"}
        _BACKEND["stopped_by_artist"] = False
        self.report({"INFO"}, f"CUPID backend: {backend_status()}")
        return {"FINISHED"}


class CUPID_OT_stop_backend(bpy.types.Operator):
    """Stop the local CUPID backend process and free its memory (GPU memory included)"""

    bl_idname = "cupid.stop_backend"
    bl_label = "Stop Backend"

    def execute(self, context: Any) -> set:
        prefs = get_prefs(context)
        wm = context.window_manager
        if prefs is not None and prefs.backend_kind == "REMOTE":
            wm.cupid_last_message = (f"CUPID cannot stop a remote service ({prefs.remote_url}): stop `cupid serve` "
                                     f"on that machine")
            self.report({"WARNING"}, wm.cupid_last_message)
            return {"CANCELLED"}
        if ACTIVE["job"] is not None:
            ACTIVE["job"].cancel()
        MANAGER.stop()
        _BACKEND["stopped_by_artist"] = True
        wm.cupid_last_message = "CUPID backend stopped"
        self.report({"INFO"}, wm.cupid_last_message)
        return {"FINISHED"}


class CUPID_OT_set_active_camera(bpy.types.Operator):
    """Make the selected CUPID camera the scene camera and give the render its photo's size (the percentage stays)"""

    bl_idname = "cupid.set_active_camera"
    bl_label = "Set Active CUPID Camera"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context: Any) -> bool:
        obj = context.active_object
        return obj is not None and obj.type == "CAMERA"

    def execute(self, context: Any) -> set:
        context.scene.camera = context.active_object
        scene_builder.sync_render_resolution(context.scene, force=True)
        r = context.scene.render
        self.report({"INFO"}, f"Render size {r.resolution_x}x{r.resolution_y} at {r.resolution_percentage}%")
        return {"FINISHED"}


class CUPID_OT_import_bundle(bpy.types.Operator):
    """Add a CUPID result (a scene.json with its files, from the add-on or `cupid reconstruct`) to the scene"""

    bl_idname = "cupid.import_bundle"
    bl_label = "Import CUPID Result (scene.json)"
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(name="scene.json", subtype="FILE_PATH", default="",
                             description="The result's scene.json (or its folder)")
    directory: StringProperty(subtype="DIR_PATH", default="", options={"SKIP_SAVE"},
                              description="The result's folder (when no scene.json is given)")
    filter_glob: StringProperty(default="*.json", options={"HIDDEN"})
    composite: BoolProperty(name="Composite over Photo", default=True, description=COMPOSITE_HELP)

    def invoke(self, context: Any, event: Any) -> set:
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context: Any) -> set:
        path = bpy.path.abspath(self.filepath or self.directory)
        try:
            res = scene_builder.build_from_bundle(path, context.scene, composite=self.composite)
        except scene_builder.SceneBuildError as exc:
            self.report({"ERROR"}, f"CUPID: {exc}")
            return {"CANCELLED"}
        self.report({"INFO"}, "; ".join([f"CUPID: added {res.collection.name!r}"] + res.notes))
        return {"FINISHED"}


def menu_import(self: Any, context: Any) -> None:
    """File › Import entry."""
    self.layout.operator(CUPID_OT_import_bundle.bl_idname, text="Import CUPID Result (scene.json)")


@persistent
def _sync_resolution_handler(scene: Any, *args: Any) -> None:
    """Give the render the photo's size when a CUPID camera becomes active (see scene_builder), the
    composite that camera's photo, and take the composite set-up away once its results are gone."""
    try:
        scene_builder.sync_render_resolution(scene)
        composite_setup.follow_camera(scene)
        composite_setup.remove_composite_if_unused(scene)
    except (ReferenceError, AttributeError, TypeError, ValueError):
        pass


HANDLERS = ((bpy.app.handlers.depsgraph_update_post, _sync_resolution_handler),
            (bpy.app.handlers.frame_change_post, _sync_resolution_handler))

classes = (CUPID_OT_reconstruct, CUPID_OT_reconstruct_batch, CUPID_OT_cancel, CUPID_OT_start_backend,
           CUPID_OT_stop_backend, CUPID_OT_set_active_camera, CUPID_OT_import_bundle)


def register() -> None:
    """Handlers and the File › Import entry (the classes are registered by the package)."""
    for lst, fn in HANDLERS:
        if fn not in lst:
            lst.append(fn)
    bpy.types.TOPBAR_MT_file_import.append(menu_import)


def unregister() -> None:
    bpy.types.TOPBAR_MT_file_import.remove(menu_import)
    for lst, fn in HANDLERS:
        while fn in lst:
            lst.remove(fn)
    job = ACTIVE["job"]
    if job is not None:
        job.cancel()
    ACTIVE["job"] = None
