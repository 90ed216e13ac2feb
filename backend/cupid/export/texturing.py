"""Every object's texture: baked from the generated colours, then (photo texture) the photo's own
pixels where its camera sees the surface, with the generated rest matched to the photo's colours.

Why a step of its own: the photo texture needs all objects at once (one z-buffer, so a part hidden
behind another object never takes that object's pixels) and picks each texture's size from what the
photo shows of it; `write_bundle` only writes what this returns.

Per object with uv and a mask, when the photo texture is on:
  size   the smallest multiple of 128 >= texture_size giving the seen surface 2 texels per photo pixel
         it covers (1 is the promise; the photo is resampled twice, here and by the renderer), at most
         max_texture_size (an already-textured mesh keeps its texture's size);
  G      the generated colour of every texel (vertex colours, or the given texture);
  P, w   the photo's colour and weight where it sees the texel (`cupid.export.photo_texture`);
  T      the colour transfer (per-channel gains) fitted on the seen texels (w >= 0.5), G' = T(G);
  final  G' + w·(P - G'), so an unseen texel (w = 0) is G' exactly.
`texture_generated` is G' and `photo_weight` is w (8-bit); seams of all three are dilated alike.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..geometry import CameraPose, Similarity
from .color_transfer import ColorTransfer, fit_color_transfer
from .mesh import TexturedMesh, bake_texture
from .photo_texture import PhotoView, photo_view, prefilter_sigma, project_photo, seen_faces, texture_size
from .texels import dilate, texel_map

__all__ = ["ObjectTextures", "texture_objects", "camera_frame", "TRANSFER_MIN_WEIGHT", "DILATE_TEXELS"]

TRANSFER_MIN_WEIGHT = 0.5   # texels the photo sees at least this surely fit the colour transfer
DILATE_TEXELS = 8
BACKGROUND = 128            # colour of texels no chart reaches (uint8 grey, as the plain bake)


@dataclass
class ObjectTextures:
    """One object's textures (uint8, row 0 = v 1): `texture` is what the mesh wears; with the photo
    texture also `generated` (after the colour transfer) and `weight` [S, S]; `info` goes into scene.json."""

    texture: np.ndarray | None
    generated: np.ndarray | None = None
    weight: np.ndarray | None = None
    info: dict = field(default_factory=dict)


def camera_frame(vertices: np.ndarray, placement: Similarity, camera: CameraPose) -> np.ndarray:
    """Object-frame vertices -> the camera's frame: x_cam = R_c·(s·R_o·x + t_o) + t_c."""
    world = placement.apply(np.asarray(vertices, dtype=np.float64))
    return world @ camera.R.T + camera.t


def _areas(xy: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unsigned areas of 2D triangles."""
    p = xy[faces]
    return 0.5 * np.abs((p[:, 1, 0] - p[:, 0, 0]) * (p[:, 2, 1] - p[:, 0, 1])
                        - (p[:, 2, 0] - p[:, 0, 0]) * (p[:, 1, 1] - p[:, 0, 1]))


def _photo_textures(view: PhotoView, k: int, mesh: TexturedMesh, v_cam: np.ndarray, mask: np.ndarray,
                    base_size: int, max_size: int, dilate_texels: int) -> ObjectTextures:
    faces = np.asarray(mesh.faces, dtype=np.int64)
    uv = np.asarray(mesh.uv, dtype=np.float64)
    region = view.region(k, mask)
    seen = seen_faces(view, k, v_cam, faces, region)
    K = view.camera.K
    pix = (v_cam @ K.T)
    pix = pix[:, :2] / np.maximum(pix[:, 2:3], 1e-9)
    seen_px = float(_areas(pix, faces[seen]).sum())
    seen_uv = float(_areas(uv, faces[seen]).sum())
    if mesh.texture is not None:
        size = int(mesh.texture.shape[0])
        tpp = size * size * seen_uv / seen_px if seen_px > 0 else 0.0
    else:
        size, tpp = texture_size(seen_px, seen_uv, base_size, max_size)
    texels = texel_map(uv, faces, size)
    if mesh.texture is not None:
        gen = texels.gather(mesh.texture).astype(np.float32) / 255.0
    else:
        gen = texels.interpolate(mesh.colors, faces)
    photo = project_photo(view, k, texels, v_cam, faces, mask, blur_sigma=prefilter_sigma(tpp))
    sure = photo.weight[photo.rows] >= TRANSFER_MIN_WEIGHT
    transfer = fit_color_transfer(gen[photo.rows[sure]], photo.colour[sure], photo.weight[photo.rows[sure]]) \
        if photo.seen else ColorTransfer()
    gen = transfer.apply(gen)
    final = gen.copy()
    weight = np.round(photo.weight * 255.0)            # the weight as photo_weight stores it, so a texel
    w = (weight[photo.rows] / 255.0)[:, None]          # stored as 0 is G' exactly
    final[photo.rows] = gen[photo.rows] + w * (photo.colour - gen[photo.rows])
    stack = np.full((size * size, 7), BACKGROUND, np.uint8)
    stack[:, 6] = 0
    stack[texels.index, 0:3] = np.clip(np.round(final * 255.0), 0, 255)
    stack[texels.index, 3:6] = np.clip(np.round(gen * 255.0), 0, 255)
    stack[texels.index, 6] = weight
    stack, _ = dilate(stack.reshape(size, size, 7), texels.covered(), dilate_texels)
    info = {"texture_size": size,
            "photo_texture": {"seen_pixels": int(round(seen_px)), "texels_per_pixel": round(float(tpp), 4),
                              "seen_texels": photo.seen, "color_transfer": transfer.to_dict()}}
    return ObjectTextures(np.ascontiguousarray(stack[..., 0:3]), np.ascontiguousarray(stack[..., 3:6]),
                          np.ascontiguousarray(stack[..., 6]), info)


def texture_objects(photo: np.ndarray, camera: CameraPose, meshes: Sequence[TexturedMesh],
                    placements: Sequence[Similarity], masks: Sequence[Any], *, photo_texture: bool = True,
                    texture_size: int = 1024, max_texture_size: int = 4096, dilate_texels: int = DILATE_TEXELS,
                    progress: Callable[[int], None] | None = None) -> list[ObjectTextures]:
    """The textures of a result's objects (see the module's text). An object without uv gets none
    (its vertex colours stand); one without a mask, or every object when `photo_texture` is off,
    gets the generated texture alone (a given texture as it is, else baked at `texture_size`).
    `progress(k)` is called as object k starts."""
    photo_objects = [k for k, (m, mask) in enumerate(zip(meshes, masks))
                     if photo_texture and m.uv is not None and mask is not None]
    view = None
    cams = [camera_frame(m.vertices, p, camera) for m, p in zip(meshes, placements)]
    if photo_objects:
        view = photo_view(photo, camera, [(v, m.faces) for v, m in zip(cams, meshes)])
    out: list[ObjectTextures] = []
    for k, (mesh, mask) in enumerate(zip(meshes, masks)):
        if progress is not None:
            progress(k)
        if k in photo_objects:
            out.append(_photo_textures(view, k, mesh, cams[k], np.asarray(mask, np.float32),
                                       int(texture_size), int(max_texture_size), dilate_texels))
        elif mesh.uv is None:
            out.append(ObjectTextures(None))
        else:
            tex = mesh.texture if mesh.texture is not None else bake_texture(
                mesh.uv, mesh.faces, mesh.colors, texture_size=texture_size, dilate=dilate_texels)
            out.append(ObjectTextures(tex, info={"texture_size": int(tex.shape[0])}))
    return out
