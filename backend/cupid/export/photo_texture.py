"""The photo on the object: the solved camera projects the photo's own pixels onto the texels it sees.

Why: the generated texture is made from a 518 px crop (and a 256 px one for stage 2's pixel-aligned
features), so on a large photo the side the photo shows comes out blurred and a little off in colour.
We know the exact camera of the photo, so every texel whose surface point that camera sees can take
the photo's own colour there, at the photo's full resolution.

For one object (`project_photo`), with every object of the result in one z-buffer (`PhotoView`):
- a texel's surface point and normal come from the UV rasteriser (`cupid.export.texels`);
- it is *seen* when it faces the camera, projects into the photo, passes the depth test against the
  z-buffer of ALL objects (a part hidden behind another object never takes that object's pixels),
  the z-buffer shows this object there, and it falls inside the object's own mask;
- its weight falls smoothly to zero at grazing angles (`GRAZING_COS`) and over `feather_px` photo
  pixels towards the edge of the region the photo shows it in (its mask, its silhouette, and where
  another object hides it), reaching zero where the photo sample would reach past that edge, so
  not one pixel of background or of another object goes into the texture;
- its colour is the ORIGINAL photo's, sampled (bicubic) at full resolution (pre-blurred only where
  the texture is coarser than the photo, so it never aliases); next to an occluding contour of the
  object over itself (the pixels around its own show another surface) its own pixel's colour, so
  the two surfaces' colours never mix.
The z-buffer itself is rendered at most `DEPTH_MAX_SIDE` pixels wide (it decides visibility, not
colour). `texture_size` picks the texture's size so the seen surface gets TEXELS_PER_PIXEL (2) texels
per photo pixel it covers: at least one is the promise, up to the largest size allowed.

Frames: everything here is in the camera frame (x_cam = R_c·(s·R_o·x + t_o) + t_c, from each object's
placement and the camera), so it does not depend on how the world is oriented.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..geometry import CameraPose
from .raster import rasterize_objects, sample_image
from .texels import TexelMap

__all__ = ["PhotoView", "photo_view", "SeenPhoto", "project_photo", "vertex_normals", "seen_faces",
           "texture_size", "DEPTH_MAX_SIDE", "FEATHER_PX", "GRAZING_COS"]

DEPTH_MAX_SIDE = 2048          # the z-buffer's longest side (pixels); colour always comes from the full photo
FEATHER_PX = 3.0               # photo pixels over which the weight rises from a region edge ...
SAMPLE_REACH = 2.0             # ... once the photo sample (bicubic: 2 pixels each way) no longer reaches past it
GRAZING_COS = (0.05, 0.25)     # cos(angle to the camera ray): weight 0 below the first (87°), 1 above the second (75.5°)
OCCLUSION_STEP = 0.02          # a pixel next to a point's whose depth is off its tangent plane by more: a contour
DEPTH_EPS = 1e-3               # relative depth the z-buffer may be off by (float32, 1/z interpolation)
SIZE_STEP = 128                # chosen texture sizes are multiples of this
TEXELS_PER_PIXEL = 2.0         # the density aimed at (at least 1 is the promise): the photo is resampled twice,
                               # onto the texture and by the renderer, and each time loses detail at 1:1


@dataclass
class PhotoView:
    """The photo and what its camera sees of the whole result, at a capped resolution: `scale` photo
    pixels per z-buffer pixel; `depth` (camera z, inf where empty) and `ids` (which object, -1 where
    none) per z-buffer pixel."""

    photo: np.ndarray      # uint8 [H, W, 3], the original
    camera: CameraPose     # in the photo's pixels
    scale: float
    depth: np.ndarray      # float32 [h, w]
    ids: np.ndarray        # int32 [h, w]
    _risk: np.ndarray | None = field(default=None, repr=False)

    @property
    def focal(self) -> float:
        """The z-buffer's focal length in its own pixels (the smaller of fx, fy)."""
        return float(min(self.camera.K[0, 0], self.camera.K[1, 1])) / self.scale

    def region(self, k: int, mask: np.ndarray) -> np.ndarray:
        """bool [h, w]: where the photo shows object `k`: inside its mask (alpha > 0.5) and in front of
        every other object. Its edge is the object's silhouette, where another object hides it, or
        where its mask ends; an occluding contour of the object over itself is no edge (the pixels
        on both sides are the object's own)."""
        h, w = self.ids.shape
        m = np.asarray(mask, dtype=np.float32)
        if m.shape != (self.camera.height, self.camera.width):
            raise ValueError(f"mask {k} is {m.shape[1]}x{m.shape[0]} but the photo is "
                             f"{self.camera.width}x{self.camera.height}")
        if (w, h) != (self.camera.width, self.camera.height):
            import cv2
            m = cv2.resize(m, (w, h), interpolation=cv2.INTER_AREA)
        return (self.ids == k) & (m > 0.5)

    def contour_risk(self) -> np.ndarray:
        """bool [h, w]: pixels whose 3×3 neighbourhood spans more than half an OCCLUSION_STEP of depth
        (relative): the only places an occluding contour can be (`_same_surface` looks closer)."""
        if self._risk is None:
            import cv2
            finite = np.isfinite(self.depth)
            far = float(self.depth[finite].max()) if finite.any() else 1.0
            z = np.where(finite, self.depth, far).astype(np.float32)
            box = np.ones((3, 3), np.uint8)
            lo, hi = cv2.erode(z, box), cv2.dilate(z, box)
            self._risk = finite & (hi - lo > 0.5 * OCCLUSION_STEP * lo)
        return self._risk

    def edge_distance(self, region: np.ndarray) -> np.ndarray:
        """float32 [h, w]: distance in PHOTO pixels from each z-buffer pixel's centre to the edge of
        `region` (0 outside it; the image border counts as an edge)."""
        import cv2

        padded = np.pad(region.astype(np.uint8), 1)
        dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
        return np.maximum(dist - 0.5, 0.0).astype(np.float32) * np.float32(self.scale)


def photo_view(photo: np.ndarray, camera: CameraPose, meshes: Sequence[tuple[np.ndarray, np.ndarray]],
               max_side: int = DEPTH_MAX_SIDE) -> PhotoView:
    """The z-buffer of all objects (camera-frame vertices [V, 3], faces [F, 3]) seen by `camera`."""
    W, H = camera.width, camera.height
    scale = max(1.0, max(W, H) / float(max_side))
    w, h = max(1, int(math.ceil(W / scale))), max(1, int(math.ceil(H / scale)))
    K = camera.K.copy()
    K[:2] /= scale
    frags, _, _, ids = rasterize_objects(meshes, K, np.eye(3), np.zeros(3), w, h)
    return PhotoView(np.asarray(photo), camera, scale, frags.depth, ids)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unit face normals [F, 3], unit area-weighted vertex normals [V, 3]), pointing out of the
    surface: a mesh wound inside out (negative signed volume) has its normals turned round."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    tri = v[f]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    if np.einsum("ij,ij->", tri[:, 0], cross) < 0:   # 6 × signed volume (about any origin, closed mesh)
        cross = -cross
    vn = np.zeros_like(v)
    for c in range(3):
        np.add.at(vn, f[:, c], cross)
    fn = cross / np.maximum(np.linalg.norm(cross, axis=1, keepdims=True), 1e-30)
    vn /= np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-30)
    return fn, vn


@dataclass
class SeenPhoto:
    """What the photo gives one object's texture: a weight per texel of a `TexelMap` (0: the photo
    does not see it) and, where the weight is positive, the photo's colour (sRGB in [0, 1])."""

    weight: np.ndarray     # float32 [N]
    rows: np.ndarray       # int64 [M]: the texels with weight > 0
    colour: np.ndarray     # float32 [M, 3]

    @property
    def seen(self) -> int:
        return int(self.rows.shape[0])


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def seen_faces(view: PhotoView, k: int, vertices_cam: np.ndarray, faces: np.ndarray, region: np.ndarray
               ) -> np.ndarray:
    """bool [F]: the faces of object `k` (camera-frame vertices) whose centroid the photo sees (front
    facing, in front in the z-buffer, inside the region), for sizing the texture."""
    v = np.asarray(vertices_cam, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    fn, _ = vertex_normals(v, f)
    c = v[f].mean(axis=1)
    front = np.einsum("ij,ij->i", fn, -c) > 0
    ok, _, _, _ = _visible(view, k, c, region)
    return front & ok


def _visible(view: PhotoView, k: int, points: np.ndarray, region: np.ndarray, tan: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(visible [N], photo x [N], photo y [N], z-buffer flat index [N]) of camera-frame points: in
    front of the camera, inside the photo, at the depth the z-buffer holds at their pixel (what the
    pixel shows is the point's own surface: neither a surface in front of it nor, at the edge of a
    surface, one behind it), on object `k`, in the region. The depth tolerance grows with the pixel
    footprint and the surface's slope (`tan`)."""
    K = view.camera.K
    z = points[:, 2]
    front = z > 1e-9
    zs = np.where(front, z, 1.0)
    x = (K[0, 0] * points[:, 0] + K[0, 1] * points[:, 1]) / zs + K[0, 2]
    y = K[1, 1] * points[:, 1] / zs + K[1, 2]
    h, w = view.ids.shape
    col = np.floor(x / view.scale).astype(np.int64)
    row = np.floor(y / view.scale).astype(np.int64)
    inside = front & (x >= 0) & (y >= 0) & (x < view.camera.width) & (y < view.camera.height) & \
        (col >= 0) & (row >= 0) & (col < w) & (row < h)
    pix = np.where(inside, row * w + col, 0)
    # the point lies within 0.71 pixel of its pixel's centre, where the z-buffer holds the depth
    slope = 0.0 if tan is None else tan
    tol = zs * ((0.75 * slope + 0.25) / view.focal + DEPTH_EPS)
    ok = inside & (view.ids.reshape(-1)[pix] == k) & region.reshape(-1)[pix] & \
        (np.abs(z - view.depth.reshape(-1)[pix]) <= tol)
    return ok, x, y, pix


def project_photo(view: PhotoView, k: int, texels: TexelMap, vertices_cam: np.ndarray, faces: np.ndarray,
                  mask: np.ndarray, *, feather_px: float = FEATHER_PX, blur_sigma: float = 0.0) -> SeenPhoto:
    """The photo's colours and weights for the texels of object `k` (camera-frame vertices, its mask
    in the photo at full size). `blur_sigma` (photo pixels) pre-filters the photo for a texture
    coarser than it (see `prefilter_sigma`)."""
    v = np.asarray(vertices_cam, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    n = len(texels)
    weight = np.zeros(n, np.float32)
    empty = SeenPhoto(weight, np.zeros(0, np.int64), np.zeros((0, 3), np.float32))
    if n == 0:
        return empty
    fn, vn = vertex_normals(v, f)
    centroid = v[f].mean(axis=1)
    front_face = np.einsum("ij,ij->i", fn, -centroid) > 0
    rows = np.flatnonzero(front_face[texels.face])
    if rows.size == 0:
        return empty
    p = texels.interpolate(v, f, rows)                     # float32: depth tests need 1e-3, not 1e-7
    nrm = texels.interpolate(vn, f, rows)
    nrm /= np.maximum(np.sqrt(np.einsum("ij,ij->i", nrm, nrm)), 1e-30)[:, None]
    cos = -np.einsum("ij,ij->i", nrm, p) / np.maximum(np.sqrt(np.einsum("ij,ij->i", p, p)), 1e-30)
    tan = np.sqrt(np.maximum(1.0 - cos ** 2, 0.0)) / np.maximum(cos, 1e-3)
    region = view.region(k, mask)
    ok, x, y, pix = _visible(view, k, p, region, tan)
    ok &= cos > GRAZING_COS[0]
    rows, x, y, cos, pix, p, nrm = rows[ok], x[ok], y[ok], cos[ok], pix[ok], p[ok], nrm[ok]
    if rows.size == 0:
        return empty
    dist = sample_image(view.edge_distance(region), x / view.scale, y / view.scale)
    feather = max(float(feather_px), 1.5 * view.scale)
    wt = _smoothstep((cos - GRAZING_COS[0]) / (GRAZING_COS[1] - GRAZING_COS[0])) \
        * _smoothstep((dist - SAMPLE_REACH) / feather)
    keep = wt > 0
    rows, x, y, wt, pix, p, nrm = rows[keep], x[keep], y[keep], wt[keep], pix[keep], p[keep], nrm[keep]
    weight[rows] = wt
    photo = view.photo
    if blur_sigma > 0.3:
        import cv2
        photo = cv2.GaussianBlur(np.ascontiguousarray(photo), (0, 0), float(blur_sigma))
    colour = sample_bicubic(photo, x, y)
    near = view.contour_risk().reshape(-1)[pix]     # only there can a neighbour be another surface
    edge = np.zeros(len(pix), dtype=bool)
    edge[near] = ~_same_surface(view, pix[near], p[near].astype(np.float64), nrm[near].astype(np.float64))
    if np.any(edge):   # next to an occluding contour: the photo's own pixel, not a mix of both surfaces
        H, W = photo.shape[:2]
        colour[edge] = photo[np.clip(y[edge].astype(np.int64), 0, H - 1), np.clip(x[edge].astype(np.int64), 0, W - 1)]
    return SeenPhoto(weight, rows, np.clip(colour / np.float32(255.0), 0.0, 1.0).astype(np.float32))


def _same_surface(view: PhotoView, pix: np.ndarray, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """bool [N]: whether the z-buffer pixels around each point's pixel (3×3, what an interpolated
    photo sample reads) all show the point's own surface: each holds the depth at which that pixel's
    ray meets the point's tangent plane, give or take OCCLUSION_STEP (relative). Next to an occluding
    contour of the object over itself one of them does not, and an interpolated sample would mix the
    two surfaces. A plane seen too nearly edge-on to predict a depth from constrains nothing."""
    h, w = view.depth.shape
    row, col = np.divmod(pix, w)
    depth = view.depth.reshape(-1)
    K_inv = np.linalg.inv(view.camera.K)
    n_dot_p = np.einsum("ij,ij->i", normals, points)
    ok = np.ones(len(pix), dtype=bool)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            r, c = np.clip(row + dr, 0, h - 1), np.clip(col + dc, 0, w - 1)
            zn = depth[r * w + c]
            u, v = (c + 0.5) * view.scale, (r + 0.5) * view.scale            # the pixel's centre in the photo
            d = np.stack([u, v, np.ones_like(u)], axis=1) @ K_inv.T          # its ray, z = 1
            n_dot_d = np.einsum("ij,ij->i", normals, d)
            steep = np.abs(n_dot_d) < 0.05 * np.linalg.norm(d, axis=1)
            z_plane = n_dot_p / np.where(steep, 1.0, n_dot_d)
            off = np.isfinite(zn) & ~steep & (np.abs(zn - z_plane) > OCCLUSION_STEP * points[:, 2])
            ok &= ~off
    return ok


def texture_size(seen_px: float, seen_uv: float, base: int, largest: int) -> tuple[int, float]:
    """(size, texels per photo pixel): the smallest multiple of SIZE_STEP (at least `base`, at most
    `largest`) giving `seen_uv` (the uv area, in [0, 1]² units, of the surface the photo sees)
    TEXELS_PER_PIXEL texels per photo pixel of the `seen_px` pixels that surface covers."""
    base, largest = int(base), int(largest)
    if seen_px <= 0 or seen_uv <= 0:
        size = min(base, largest)
        return size, 0.0
    need = math.sqrt(TEXELS_PER_PIXEL * seen_px / seen_uv)
    size = max(base, int(math.ceil(need / SIZE_STEP)) * SIZE_STEP)
    size = min(size, largest)
    return size, size * size * seen_uv / seen_px


def prefilter_sigma(texels_per_pixel: float) -> float:
    """Gaussian sigma (photo pixels) that keeps a texture coarser than the photo (fewer than one texel
    per photo pixel) from aliasing when it point-samples the photo; 0 when it is fine enough."""
    if texels_per_pixel <= 0 or texels_per_pixel >= 1.0:
        return 0.0
    spacing = 1.0 / math.sqrt(texels_per_pixel)   # photo pixels between neighbouring texels
    return 0.5 * math.sqrt(spacing * spacing - 1.0)


def sample_bicubic(image: np.ndarray, x: np.ndarray, y: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Bicubic lookup (OpenCV's, a = -0.75) of an [H, W, C] image at continuous pixel coordinates
    (corner convention), clamped at the border -> float32 [N, C]. Sharper than bilinear: the texture
    is resampled again when it is rendered, and two bilinear steps blur a photo's detail visibly."""
    import cv2

    n = int(np.asarray(x).shape[0])
    if n == 0:
        return np.zeros((0,) + np.asarray(image).shape[2:], np.float32)
    rows = -(-n // chunk)
    mx = np.zeros(rows * chunk, np.float32)
    my = np.zeros(rows * chunk, np.float32)
    mx[:n] = np.asarray(x, np.float64) - 0.5   # OpenCV puts pixel centres at whole numbers
    my[:n] = np.asarray(y, np.float64) - 0.5
    out = cv2.remap(np.ascontiguousarray(image), mx.reshape(rows, chunk), my.reshape(rows, chunk), cv2.INTER_CUBIC,
                    borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(rows * chunk, -1)[:n].astype(np.float32)
