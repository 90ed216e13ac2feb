"""Picking objects on the photo, without bpy: Image Editor positions to photo pixels, a click or a
drag to a pick, picks to the service's segment-anything prompts, and the label image it answers
turned into what the artist sees (colour labels, an overlay on the photo, a cut-out).

Coordinates: the Image Editor's view space is the image's [0, 1]² with v up (``View2D.region_to_view``);
photo pixels are x right, y down from the top-left corner, as the backend takes prompts. A press and
release less than :data:`CLICK_PX` screen pixels apart is a click (a point prompt: "this object"),
farther a drag (a box prompt around the object).
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .orientation import upright_xy

CLICK_PX = 5.0   # screen pixels: a shorter drag is a click

# label k's colour (k = 1, 2, ...): distinct, saturated, never black (0 = background) nor grey
PALETTE = np.array([[230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180],
                    [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128],
                    [170, 110, 40], [128, 0, 0], [170, 255, 195], [128, 128, 0], [0, 0, 128]], np.uint8)


class PickProblem(Exception):
    """The picks cannot be sent; the message is the report."""


@dataclass(frozen=True)
class Pick:
    """A point (x0, y0) or a box (x0, y0)-(x1, y1), x0 < x1 and y0 < y1, in photo pixels."""

    kind: str   # "POINT" or "BOX"
    x0: float
    y0: float
    x1: float = 0.0
    y1: float = 0.0


def view_to_photo(u: float, v: float, width: int, height: int) -> tuple[float, float]:
    """Image Editor view coordinates (image [0, 1]², v up) -> photo pixels (y down)."""
    return u * width, (1.0 - v) * height


def pick_from_drag(press: tuple[float, float], release: tuple[float, float], press_photo: tuple[float, float],
                   release_photo: tuple[float, float], width: int, height: int) -> Optional[Pick]:
    """The pick a press and release make (screen positions decide click or drag; photo positions
    where). A click outside the photo picks nothing (None); a box is clipped to the photo and is
    None when nothing of it is left."""
    if np.hypot(release[0] - press[0], release[1] - press[1]) < CLICK_PX:
        x, y = press_photo
        return Pick("POINT", x, y) if 0 <= x <= width and 0 <= y <= height else None
    (ax, ay), (bx, by) = press_photo, release_photo
    x0, x1 = max(0.0, min(ax, bx)), min(float(width), max(ax, bx))
    y0, y1 = max(0.0, min(ay, by)), min(float(height), max(ay, by))
    return Pick("BOX", x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def upright_picks(picks: Sequence[Pick], width: int, height: int, orientation: int) -> list[Pick]:
    """Picks made on the photo as Blender shows it (its stored width × height pixels) in the pixels of
    the upright photo that is sent (EXIF orientation applied; a box stays a box)."""
    out = []
    for p in picks:
        ax, ay = upright_xy(p.x0, p.y0, width, height, orientation)
        if p.kind == "POINT":
            out.append(Pick("POINT", ax, ay))
            continue
        bx, by = upright_xy(p.x1, p.y1, width, height, orientation)
        out.append(Pick("BOX", min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)))
    return out


def prompts(picks: Sequence[Pick], width: int, height: int, scale: tuple[float, float] = (1.0, 1.0)) -> dict:
    """The service's prompts {"points": [[x, y]], "boxes": [[x0, y0, x1, y1]]} for picks on a
    width × height photo, multiplied by `scale` (a downscaled upload). Refused (PickProblem) when
    there is nothing to send or a pick lies outside the photo, before anything is sent."""
    if not picks:
        raise PickProblem("CUPID: no objects picked: click on each object (or drag a box around it) in the Image "
                          "Editor with Pick Objects first")
    sx, sy = scale
    points, boxes = [], []
    for k, p in enumerate(picks):
        if p.kind == "POINT":
            if not (0 <= p.x0 <= width and 0 <= p.y0 <= height):
                raise PickProblem(f"CUPID: pick {k + 1} ({p.x0:.0f}, {p.y0:.0f}) is outside the {width}x{height} photo")
            points.append([p.x0 * sx, p.y0 * sy])
        else:
            if not (0 <= p.x0 < p.x1 <= width and 0 <= p.y0 < p.y1 <= height):
                raise PickProblem(f"CUPID: box {k + 1} ({p.x0:.0f}, {p.y0:.0f}, {p.x1:.0f}, {p.y1:.0f}) is empty or "
                                  f"outside the {width}x{height} photo")
            boxes.append([p.x0 * sx, p.y0 * sy, p.x1 * sx, p.y1 * sy])
    return {"points": points, "boxes": boxes}


def labels_from_pixels(px: np.ndarray) -> np.ndarray:
    """uint8 [H, W] label values of a grey label image's pixels (float [H, W, C] in [0, 1])."""
    return np.round(np.clip(px[..., 0], 0.0, 1.0) * 255.0).astype(np.uint8)


def label_colours(n: int) -> np.ndarray:
    """uint8 [n, 3]: n distinct, saturated colours (PALETTE first, then golden-ratio hues), none black."""
    colours = [tuple(int(c) for c in PALETTE[k]) for k in range(min(n, len(PALETTE)))]
    k = len(colours)
    while len(colours) < n:
        rgb = colorsys.hsv_to_rgb((k * 0.618033988749895) % 1.0, 0.85, (1.0, 0.75, 0.55)[k % 3])
        colour = tuple(int(round(c * 255)) for c in rgb)
        while colour in colours:   # a near-repeat of an earlier hue: nudge it
            colour = (colour[0], colour[1], (colour[2] + 7) % 256 or 7)
        colours.append(colour)
        k += 1
    return np.array(colours, np.uint8).reshape(n, 3)


def colour_labels(labels: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3]: black background, the k-th label value in the k-th colour. A scene-mode mask
    as it is (every distinct colour one object) that the artist can tell apart at a glance."""
    out = np.zeros(labels.shape + (3,), np.uint8)
    values = [int(v) for v in np.unique(labels) if v]
    for colour, v in zip(label_colours(len(values)), values):
        out[labels == v] = colour
    return out


def overlay(photo: np.ndarray, labels: np.ndarray, opacity: float = 0.55) -> np.ndarray:
    """float32 [H, W, 4]: the photo (float RGBA, display values) with each object tinted in its colour."""
    out = photo.astype(np.float32).copy()
    colours = colour_labels(labels).astype(np.float32) / 255.0
    inside = labels > 0
    out[inside, :3] = (1.0 - opacity) * out[inside, :3] + opacity * colours[inside]
    out[..., 3] = 1.0
    return out


def cutout(photo: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """float32 [H, W, 4]: the photo with the background removed (alpha 0 where the label is 0)."""
    out = photo.astype(np.float32).copy()
    out[..., 3] = (labels > 0).astype(np.float32)
    return out
