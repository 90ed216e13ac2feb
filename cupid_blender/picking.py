"""Picking objects on the photo (scene mode) and seeing the cut-out (object mode) before any
reconstruction: the bpy room around :mod:`cupid_blender.io.picks` and :mod:`cupid_blender.io.segment`.

*Pick Objects* is a modal operator in an Image Editor showing the photo: a click picks an object
(a point prompt), a drag boxes one, Backspace takes the last pick back, Enter or Esc ends. The picks
live on the scene (``scene.cupid.picks``, photo pixels). Then ``POST /v1/segment`` answers a label
image: it becomes the image datablock "PHOTO masks" (each object in its own colour, which is what a
scene-mode mask is) that Reconstruct uses as the mask, and "PHOTO masks over photo" shows it on the
photo in the Image Editor. *Show Cut-out* asks for object mode's background removal and shows
"PHOTO cut-out" (the photo with the removed background transparent).
"""
from __future__ import annotations

import os
import tempfile
import threading
import time
from typing import Any, Optional

import bpy
import numpy as np
from bpy.props import EnumProperty

from .backend_manager import MANAGER
from .imaging import image_pixels
from .io.imaging import resample_nearest
from .io.orientation import stored_size
from .io.job import UserError
from .io.picks import (Pick, PickProblem, colour_labels, cutout, labels_from_pixels, overlay, pick_from_drag,
                       upright_picks, view_to_photo)
from .io.segment import SegmentJob, SegmentOutcome, segment_request
from .io.upload import InputProblem, Picture
from .operators import backend_config, photo_source, read_input
from .properties import MODES

_SEGMENT: dict = {"job": None}
_SHOWN = (" masks", " masks over photo", " cut-out")   # the datablocks a segmentation makes, after the photo's stem


# ---------------------------------------------------------------------------------------------
# picks on the scene
# ---------------------------------------------------------------------------------------------

def picks_of(settings: Any) -> list[Pick]:
    return [Pick(p.kind, p.x0, p.y0, p.x1, p.y1) for p in settings.picks]


def add_pick(settings: Any, pick: Pick, width: int, height: int) -> None:
    """Store a pick made on a width × height photo (picks on another size are dropped first)."""
    if tuple(settings.picks_size) != (width, height):
        settings.picks.clear()
        settings.picks_size = (width, height)
    item = settings.picks.add()
    item.kind, item.x0, item.y0, item.x1, item.y1 = pick.kind, pick.x0, pick.y0, pick.x1, pick.y1


# ---------------------------------------------------------------------------------------------
# the segmentation as image datablocks
# ---------------------------------------------------------------------------------------------

def decode_labels(png: bytes, width: int, height: int) -> np.ndarray:
    """uint8 [height, width] labels of the service's label PNG (sent for a width × height upload),
    decoded by Blender as data (no colour management)."""
    fd, path = tempfile.mkstemp(suffix=".png", prefix="cupid-labels-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(png)
        img = bpy.data.images.load(path, check_existing=False)
        try:
            img.colorspace_settings.name = "Non-Color"
            if tuple(img.size) != (width, height):
                raise ValueError(f"the backend's label image is {img.size[0]}x{img.size[1]}, the photo sent "
                                 f"{width}x{height}")
            return labels_from_pixels(image_pixels(img))
        finally:
            bpy.data.images.remove(img)
    except RuntimeError as exc:
        raise ValueError(f"the backend's label image cannot be read ({exc})") from None
    finally:
        os.unlink(path)


def put_image(name: str, pixels: np.ndarray) -> Any:
    """A packed 8-bit image datablock `name` with float RGBA pixels (top row first), replacing an
    earlier one of that name (the Image Editors and the panel's mask that showed it follow)."""
    h, w = pixels.shape[:2]
    old = bpy.data.images.get(name)
    if old is not None:
        old.name = name + " (old)"
    img = bpy.data.images.new(name, w, h, alpha=True)
    img.pixels.foreach_set(np.ascontiguousarray(pixels[::-1], dtype=np.float32).ravel())
    img.update()
    img.pack()
    if old is not None:
        old.user_remap(img)
        bpy.data.images.remove(old)
    return img


def show_in_image_editors(context: Any, image: Any, replaces: set) -> None:
    """Show `image` in every Image Editor that shows one of the images named in `replaces`."""
    for win in context.window_manager.windows:
        for area in win.screen.areas:
            if area.type == "IMAGE_EDITOR":
                space = area.spaces.active
                if space.image is not None and space.image.name in replaces:
                    space.image = image
                    area.tag_redraw()


def show_segmentation(context: Any, photo: Picture, labels: np.ndarray, mode: str) -> str:
    """The datablocks of a segmentation (scene: "masks", the mask from now on, and "masks over photo";
    object: "cut-out"); the report line. Raises ValueError when nothing was found."""
    objects = len([v for v in np.unique(labels) if v])
    if objects == 0:
        raise ValueError("CUPID: nothing found in the photo" + ("" if mode == "scene" else "; give a mask"))
    settings = context.scene.cupid
    replaces = {photo.name} | {photo.stem + s for s in _SHOWN}
    if mode == "scene":
        rgb = colour_labels(labels).astype(np.float32) / 255.0
        masks = put_image(f"{photo.stem} masks", np.concatenate([rgb, np.ones(labels.shape + (1,), np.float32)], 2))
        settings.mask = masks
        shown = put_image(f"{photo.stem} masks over photo", overlay(photo.pixels, labels))
        message = f"CUPID: {objects} object(s) found; {masks.name!r} is the scene mask now"
    else:
        shown = put_image(f"{photo.stem} cut-out", cutout(photo.pixels, labels))
        message = f"CUPID: the cut-out is {shown.name!r} ({int((labels > 0).sum())} object pixels)"
    show_in_image_editors(context, shown, replaces)
    return message


# ---------------------------------------------------------------------------------------------
# operators
# ---------------------------------------------------------------------------------------------

class _Segmenting:
    """What Segment Picks and Show Cut-out share (Blender operators must not subclass a registered
    operator): send the photo, wait in place without an event loop, else on a modal timer."""

    _timer = None
    _job: Optional[SegmentJob] = None
    _photo: Optional[Picture] = None

    @classmethod
    def poll(cls, context: Any) -> bool:
        return _SEGMENT["job"] is None

    def _segment(self, context: Any, mode: str) -> set:
        settings = context.scene.cupid
        try:
            photo = read_input(photo_source(context), "photo")
            picks = picks_of(settings) if mode == "scene" else []
            # picks are made on the photo as Blender shows it: its stored pixels, which a phone photo's EXIF
            # orientation turns upright (the photo read, and sent, is upright)
            size = stored_size(*photo.pixels.shape[1::-1], photo.orientation) if photo.pixels is not None else None
            if picks and size is not None and tuple(settings.picks_size) != size:
                raise UserError(f"CUPID: the picks were made on a {settings.picks_size[0]}x{settings.picks_size[1]} "
                                f"photo, this one is {size[0]}x{size[1]}: clear the picks and pick again")
            if picks and size is not None:
                picks = upright_picks(picks, *size, photo.orientation)
            request = segment_request(photo, picks, mode)
        except (UserError, PickProblem, InputProblem, ValueError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        config = backend_config(context)
        self._job = SegmentJob(lambda should_cancel: MANAGER.client(config, should_cancel=should_cancel), request)
        self._photo = photo
        _SEGMENT["job"] = self._job
        threading.Thread(target=self._job.run, name="cupid-segment", daemon=True).start()
        if bpy.app.background or context.window is None:
            while self._job.outcome() is None:
                time.sleep(0.05)
            return self._end(context, self._job.outcome())
        self._timer = context.window_manager.event_timer_add(0.1, window=context.window)
        context.window_manager.modal_handler_add(self)
        context.workspace.status_text_set("CUPID: segmenting the photo…")
        return {"RUNNING_MODAL"}

    def modal(self, context: Any, event: Any) -> set:
        if event.type != "TIMER" or self._job.outcome() is None:
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        context.workspace.status_text_set(None)
        return self._end(context, self._job.outcome())

    def _end(self, context: Any, outcome: SegmentOutcome) -> set:
        _SEGMENT["job"] = None
        if outcome.labels_png is None:
            self.report({"ERROR"}, outcome.message)
            return {"CANCELLED"}
        up, photo = self._job.request.upload, self._photo
        try:
            labels = decode_labels(outcome.labels_png, up.upload_width, up.upload_height)
            if up.downscaled:
                labels = resample_nearest(labels, up.width, up.height)
            message = show_segmentation(context, photo, labels, self._job.request.mode)
        except ValueError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        context.window_manager.cupid_last_message = message
        self.report({"INFO"}, message)
        return {"FINISHED"}


class CUPID_OT_segment(_Segmenting, bpy.types.Operator):
    """Send the photo and its picks to segment-anything and show the masks over the photo (they become the \
scene mask)"""

    bl_idname = "cupid.segment"
    bl_label = "Segment Picks"
    bl_options = {"REGISTER", "UNDO"}

    mode: EnumProperty(name="Mode", items=MODES, default="SCENE",
                       description="Scene: one mask per pick; Object: the background remover's cut-out")

    def execute(self, context: Any) -> set:
        return self._segment(context, self.mode.lower())


class CUPID_OT_show_cutout(_Segmenting, bpy.types.Operator):
    """Show what object mode will cut out of the photo (the background remover's answer) before reconstructing"""

    bl_idname = "cupid.show_cutout"
    bl_label = "Show Cut-out"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context: Any) -> set:
        return self._segment(context, "object")


class CUPID_OT_clear_picks(bpy.types.Operator):
    """Forget the objects picked on the photo"""

    bl_idname = "cupid.clear_picks"
    bl_label = "Clear Picks"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context: Any) -> set:
        context.scene.cupid.picks.clear()
        _redraw_image_editors(context)
        return {"FINISHED"}


def _redraw_image_editors(context: Any) -> None:
    for win in context.window_manager.windows:
        for area in win.screen.areas:
            if area.type == "IMAGE_EDITOR":
                area.tag_redraw()


def _image_editor(context: Any) -> Optional[Any]:
    """The Image Editor to pick in: the one the operator runs in, else one in this window, else a
    new window with one."""
    if context.area is not None and context.area.type == "IMAGE_EDITOR":
        return context.window, context.area
    for area in context.screen.areas:
        if area.type == "IMAGE_EDITOR":
            return context.window, area
    bpy.ops.wm.window_new()
    win = context.window_manager.windows[-1]
    area = max(win.screen.areas, key=lambda a: a.width * a.height)
    area.type = "IMAGE_EDITOR"
    return win, area


def _photo_image(context: Any) -> Any:
    """The photo as an image datablock (a file is loaded once), made the panel's photo."""
    source = photo_source(context)
    img = bpy.data.images.get(source)
    if img is None:
        try:
            img = bpy.data.images.load(bpy.path.abspath(source), check_existing=True)
        except RuntimeError as exc:
            raise UserError(f"CUPID cannot open the photo {source!r}: {exc}") from None
    context.scene.cupid.image = img
    return img


class CUPID_OT_pick_objects(bpy.types.Operator):
    """Pick the objects to reconstruct on the photo in the Image Editor: click an object, or drag a box around \
it; Backspace takes the last pick back; Enter or Esc ends and shows their masks"""

    bl_idname = "cupid.pick_objects"
    bl_label = "Pick Objects"

    _press = None
    _handle = None

    def invoke(self, context: Any, event: Any) -> set:
        try:
            image = _photo_image(context)
        except UserError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        if not (image.size[0] and image.size[1]):
            self.report({"ERROR"}, f"CUPID cannot read the photo {image.name!r}")
            return {"CANCELLED"}
        win, area = _image_editor(context)
        area.spaces.active.image = image
        self.area, self.image = area, image
        self.region = next(r for r in area.regions if r.type == "WINDOW")
        self.size = (int(image.size[0]), int(image.size[1]))
        self.added = 0
        self._handle = bpy.types.SpaceImageEditor.draw_handler_add(_draw_picks, (self, context.scene), "WINDOW",
                                                                   "POST_PIXEL")
        with context.temp_override(window=win, area=area, region=self.region):
            context.window_manager.modal_handler_add(self)
        context.workspace.status_text_set("CUPID: click an object or drag a box around it · Backspace: undo · "
                                          "Enter/Esc: done")
        area.tag_redraw()
        return {"RUNNING_MODAL"}

    def _photo_xy(self, mx: float, my: float) -> tuple[float, float]:
        u, v = self.region.view2d.region_to_view(mx, my)
        return view_to_photo(u, v, *self.size)

    def _in_region(self, event: Any) -> Optional[tuple[float, float]]:
        x, y = event.mouse_x - self.region.x, event.mouse_y - self.region.y
        return (x, y) if 0 <= x < self.region.width and 0 <= y < self.region.height else None

    def modal(self, context: Any, event: Any) -> set:
        settings = context.scene.cupid
        if event.type in {"RET", "NUMPAD_ENTER", "ESC"} and event.value == "PRESS":
            return self._finish(context)
        if event.type == "BACK_SPACE" and event.value == "PRESS" and len(settings.picks):
            settings.picks.remove(len(settings.picks) - 1)
            self.area.tag_redraw()
            return {"RUNNING_MODAL"}
        if event.type == "LEFTMOUSE":
            at = self._in_region(event)
            if event.value == "PRESS" and at is not None:
                self._press = at
                return {"RUNNING_MODAL"}
            if event.value == "RELEASE" and self._press is not None:
                end = at if at is not None else self._press
                pick = pick_from_drag(self._press, end, self._photo_xy(*self._press), self._photo_xy(*end), *self.size)
                self._press = None
                if pick is not None:
                    add_pick(settings, pick, *self.size)
                    self.added += 1
                self.area.tag_redraw()
                return {"RUNNING_MODAL"}
        if event.type == "MOUSEMOVE" and self._press is not None:
            self.area.tag_redraw()
        return {"PASS_THROUGH"}

    def _finish(self, context: Any) -> set:
        bpy.types.SpaceImageEditor.draw_handler_remove(self._handle, "WINDOW")
        context.workspace.status_text_set(None)
        self.area.tag_redraw()
        if len(context.scene.cupid.picks) and self.added:
            with context.temp_override(area=self.area, region=self.region):
                bpy.ops.cupid.segment("INVOKE_DEFAULT", mode="SCENE")
        return {"FINISHED"}

    def cancel(self, context: Any) -> None:
        if self._handle is not None:
            bpy.types.SpaceImageEditor.draw_handler_remove(self._handle, "WINDOW")


def _draw_picks(op: CUPID_OT_pick_objects, scene: Any) -> None:
    """Crosses at the picked points, rectangles for the boxes (POST_PIXEL: region pixels)."""
    import gpu
    from gpu_extras.batch import batch_for_shader

    if bpy.context.area != op.area:
        return
    region, (w, h) = op.region, op.size

    def at(x: float, y: float) -> tuple[float, float]:
        return region.view2d.view_to_region(x / w, 1.0 - y / h, clip=False)

    lines: list = []
    for p in scene.cupid.picks:
        if p.kind == "POINT":
            cx, cy = at(p.x0, p.y0)
            lines += [(cx - 8, cy), (cx + 8, cy), (cx, cy - 8), (cx, cy + 8)]
        else:
            (ax, ay), (bx, by) = at(p.x0, p.y0), at(p.x1, p.y1)
            lines += [(ax, ay), (bx, ay), (bx, ay), (bx, by), (bx, by), (ax, by), (ax, by), (ax, ay)]
    if not lines:
        return
    shader = gpu.shader.from_builtin("UNIFORM_COLOR")
    batch = batch_for_shader(shader, "LINES", {"pos": lines})
    gpu.state.line_width_set(2.0)
    shader.uniform_float("color", (1.0, 0.85, 0.1, 1.0))
    batch.draw(shader)
    gpu.state.line_width_set(1.0)


classes = (CUPID_OT_segment, CUPID_OT_show_cutout, CUPID_OT_clear_picks, CUPID_OT_pick_objects)


def unregister() -> None:
    job = _SEGMENT["job"]
    if job is not None:
        job.cancel()
    _SEGMENT["job"] = None
